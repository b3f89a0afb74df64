"""The sandbox and the `code` reward against hostile programs: each attack is contained within its time
bound, leaves nothing behind, and scores 0; a correct program scores 1.

Every attack program prints "pwned" only if the attack worked, and its test expects "pwned", so an
attack that got through would score 1.
"""

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from coldstart.rewards import build_reward
from coldstart.sandbox import run_code

LIMITS = {"cpu_seconds": 1, "wall_seconds": 2.0, "memory_mb": 256, "max_processes": 8}
PWNED = [{"input": "", "output": "pwned"}]
REPO = Path(__file__).resolve().parent.parent


def score(program: str, tests=None, **options) -> float:
    """The `code` reward of one completion holding `program` (tight limits, so attacks end fast)."""
    reward = build_reward([{"name": "code", "options": {"timeout_s": 2, "cpu_s": 1, "memory_mb": 256,
                                                        "max_processes": 8, **options}}])
    result = reward(["q"], [f"```python\n{program}\n```"], tests=[tests or PWNED])
    assert result.errors == 0, result.error_messages
    return result.total[0]


def processes_of(uid: int) -> list[int]:
    """Live processes of `uid` (zombies, dead and waiting for an init that may never reap them, excluded)."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.stat(f"/proc/{d}").st_uid == uid:
                state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    pids.append(int(d))
        except OSError:
            continue
    return pids


def test_correct_program_scores_one_and_wrong_scores_zero():
    program = "n = int(input())\nprint(n * (n + 1) // 2)"
    tests = [{"input": "3", "output": "6"}, {"input": "10", "output": "55\n"}]
    assert score(program, tests) == 1.0
    assert score("print(6)", tests) == 0.5
    assert score("print(6)", tests, mode="all") == 0.0
    assert score("def f(x):\n    return x * 2", ["assert f(2) == 4", "assert f(3) == 7"]) == 0.5


def test_completion_without_program_scores_zero_and_missing_tests_is_an_error():
    reward = build_reward([{"name": "code"}])
    assert reward(["q"], ["no code here"], tests=[PWNED]).total == [0.0]
    result = reward(["q"], ["```python\nprint(1)\n```"], tests=[[]])
    assert result.total == [0.0] and result.errors == 1


@pytest.mark.parametrize("program", ["while True:\n    pass", "import time\ntime.sleep(60)\nprint('pwned')"])
def test_infinite_loop_and_sleep_are_cut_at_the_time_bound(program):
    start = time.monotonic()
    result = run_code(program, **LIMITS)
    assert result.timed_out and result.killed and not result.ok
    assert time.monotonic() - start < LIMITS["wall_seconds"] + 2
    assert score(program) == 0.0


def test_fork_bomb_is_contained_and_every_process_is_killed():
    bomb = ("import os, time\nn = 0\nfor _ in range(10000):\n    try:\n        os.fork()\n        n += 1\n"
            "    except OSError:\n        pass\nif n > 100:\n    print('pwned')\ntime.sleep(60)")
    start = time.monotonic()
    result = run_code(bomb, **LIMITS)
    assert result.timed_out and time.monotonic() - start < LIMITS["wall_seconds"] + 2
    assert "pwned" not in result.stdout  # RLIMIT_NPROC: no process forked more than 100 times
    if result.uid is not None:
        assert processes_of(result.uid) == []
    assert score(bomb) == 0.0


def test_a_child_that_leaves_the_process_group_is_killed_too():
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nelse:\n    print('pwned')")
    result = run_code(program, **LIMITS)
    assert "uid" in result.isolation or pytest.skip("the uid layer needs root")
    assert processes_of(result.uid) == []


@pytest.mark.parametrize("program", ["x = bytearray(10 ** 10)\nprint('pwned')",
                                     "xs = []\nwhile True:\n    xs.append(bytearray(10 ** 7))"])
def test_memory_bomb_is_refused(program):
    start = time.monotonic()
    result = run_code(program, **LIMITS)
    assert not result.ok and "MemoryError" in result.stderr
    assert time.monotonic() - start < LIMITS["wall_seconds"] + 2
    assert score(program) == 0.0


@pytest.mark.parametrize("how", ["open({path!r}, 'w').write('x')",
                                 "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
                                 "import os\nos.system('touch {path}')",
                                 "import subprocess\nsubprocess.run(['touch', {path!r}])",
                                 "import ctypes"])
@pytest.mark.parametrize("where", ["/tmp", "/var/tmp", "/dev/shm", str(REPO)])
def test_writing_outside_the_working_folder_is_refused(how, where):
    path = f"{where}/sandbox-escape-{uuid.uuid4().hex}"
    program = how.format(path=path) + "\nprint('pwned')"
    try:
        assert score(program) == 0.0
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.remove(path)


def test_writing_inside_the_working_folder_works_and_is_deleted_after():
    program = ("import os\nopen('out.txt', 'w').write('hi')\nos.mkdir('d')\nopen('d/x', 'w').write('y')\n"
               "print(open('out.txt').read(), os.getcwd())")
    result = run_code(program, **LIMITS)
    assert result.ok and result.stdout.startswith("hi ")
    assert not os.path.exists(result.stdout.split()[1])


def test_files_are_given_to_the_program():
    result = run_code("print(open('data/in.txt').read())", files={"data/in.txt": "abc"}, **LIMITS)
    assert result.stdout == "abc\n"
    with pytest.raises(ValueError, match="inside the working folder"):
        run_code("pass", files={"../x": "no"})


def test_sockets_are_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        for attack in ["import socket\nsocket.socket()",
                       f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
                       "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
                       "import _socket\n_socket.socket()",
                       "import urllib.request\nurllib.request.urlopen('http://1.1.1.1', timeout=1)"]:
            result = run_code(attack + "\nprint('pwned')", **LIMITS)
            assert "pwned" not in result.stdout and not result.ok, attack
            assert score(attack + "\nprint('pwned')") == 0.0
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_the_parent_environment_is_invisible(monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("COLDSTART_TEST_SECRET", secret)
    program = ("import os\nprint(os.environ.get('COLDSTART_TEST_SECRET'))\nprint(sorted(os.environ))\n"
               "try:\n    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\nexcept OSError as e:\n"
               "    print('refused', e)")
    result = run_code(program, **LIMITS)
    assert result.ok, result.stderr
    assert secret not in result.stdout and "refused" in result.stdout
    assert result.stdout.splitlines()[1] == "['HOME', 'LANG', 'PATH']"
    leak = "import os\nprint('pwned' if os.environ.get('COLDSTART_TEST_SECRET') else 'no')"
    assert score(leak) == 0.0


def test_output_is_bounded():
    result = run_code("import sys\nwhile True:\n    sys.stdout.write('x' * 100000)", max_output_bytes=1 << 16,
                      **{k: v for k, v in LIMITS.items()})
    assert not result.ok and len(result.stdout) <= 1 << 16


def test_kernel_layers_alone_contain_the_attacks(tmp_path, monkeypatch):
    """Without the audit hook: the uid, namespaces and mounts still refuse writes, sockets and /proc snooping."""
    probe = run_code("pass", audit=False, **LIMITS)
    if not {"uid", "netns"} <= set(probe.isolation):
        pytest.skip(f"kernel layers need root here; this run has {probe.isolation}")
    monkeypatch.setenv("COLDSTART_TEST_SECRET", "s3cr3t")
    marker = f"sandbox-escape-{uuid.uuid4().hex}"
    attacks = [f"open('/tmp/{marker}', 'w')", f"open('/dev/shm/{marker}', 'w')", f"open({str(REPO / marker)!r}, 'w')",
               f"import os\nos.system('touch /tmp/{marker}')\nassert os.path.exists('/tmp/{marker}')",
               "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
               "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
               "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
               "import os\nos.kill(os.getppid(), 0)"]
    for attack in attacks:
        result = run_code(attack + "\nprint('pwned')", audit=False, **LIMITS)
        assert "pwned" not in result.stdout and "s3cr3t" not in result.stdout, (attack, result)
        assert result.returncode != 0
    assert not list(Path("/tmp").glob(marker)) and not (REPO / marker).exists()
