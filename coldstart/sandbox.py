"""Run untrusted Python (a model's program) in a subprocess with limits, for the `code` reward.

`run_code(code, stdin)` writes the program into a fresh temporary folder, runs it with `python -I -S`
(isolated: no user site, no PYTHON* variables, no current folder on sys.path) and returns a
`SandboxResult`; the folder is deleted afterwards. Layers, outermost first; `SandboxResult.isolation`
names the ones that applied to a run:

- "uid" (when the parent runs as root): the child runs as a fresh random unprivileged uid/gid with no
  supplementary groups, so it cannot write the repository, read other users' files or signal the
  trainer, and RLIMIT_NPROC (which root ignores) bounds its processes. At the end every process of that
  uid is killed with `kill(-1, SIGKILL)` sent *as* that uid, which also catches processes that left the
  process group (a fork bomb that calls setsid).
- "netns": the child gets new network and mount namespaces (`unshare(2)` through ctypes; as root
  directly, else inside a new user namespace when the kernel allows it; probed once): only a downed loopback exists,
  so every connect fails, and /tmp, /var/tmp and /dev/shm are fresh read-only tmpfs mounts, so nothing
  is left in the host's shared temp folders. The working folder stays reachable as the current folder.
- "rlimits" (always): RLIMIT_CPU (cpu_seconds), RLIMIT_AS (memory_mb), RLIMIT_NPROC (max_processes),
  RLIMIT_FSIZE (max_output_bytes, per file, stdout included), RLIMIT_NOFILE (64), no core files; plus
  the wall-clock bound, after which the process group (and the uid, above) is killed.
- "audit" (always, best effort): a `sys.addaudithook` hook installed before the program runs refuses
  sockets, running other programs (os.system, exec*, spawn*, subprocess, _posixsubprocess), ctypes,
  signals, opening files for writing or renaming/removing paths outside the working folder, and reading
  /proc/<pid>/ of other processes. Code can subvert a Python-level hook; it is the only layer without
  root or user namespaces, and a second line behind the kernel layers with them.
- the environment holds only PATH, LANG and HOME (the working folder); stdin, stdout and stderr are files.

The kernel layers are set up by a small launcher process (`_LAUNCHER`, started with plain fork/exec, no
`preexec_fn`, which can deadlock a parent with threads) that unshares, mounts, drops to the uid, sets the
limits and then execs the interpreter, so the program's pid is the one `run_code` waits on and kills.
Each run costs two interpreter start-ups, about 50-100 ms.

Without root, the interpreter is `sys.executable`; as root it is the first of `sys.executable`,
`python3` on PATH that the sandbox uid can run (a probe, cached), since e.g. /root may be closed to it.
If none can, the uid layer is dropped (and logged once).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("coldstart.sandbox")

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"

# The launcher: a fresh single-threaded process (started without preexec_fn, which is unsafe in a trainer
# with threads) that enters the namespaces, mounts, drops to the uid, sets the limits, then execs the
# sandbox interpreter. argv[1] is its JSON config; it exits 125 with a message if a step fails.
_LAUNCHER = r'''
import ctypes, json, os, resource, sys

cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_tmp(work):
    """Hide the shared temp folders behind read-only tmpfs; bind the working folder back at its path."""
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for path in (b"/tmp", b"/var/tmp", b"/dev/shm"):
        if not os.path.isdir(path) or os.path.realpath(path) != path:
            continue
        check(libc.mount(b"tmpfs", path, b"tmpfs", 0, b"size=64k,mode=0755"), f"mount tmpfs {path!r}")
        if work.startswith(path + b"/"):
            os.makedirs(work)
            check(libc.mount(b".", work, None, MS_BIND, None), "bind the working folder")  # "." is the hidden one
        check(libc.mount(None, path, None, MS_REMOUNT | MS_RDONLY, b"size=64k,mode=0755"), f"remount {path!r}")
    os.chdir(work)


try:
    if cfg["ns"] is not None:
        check(libc.unshare(cfg["ns"]), "unshare")
        private_tmp(os.fsencode(cfg["work"]))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    for name, (soft, hard) in cfg["limits"].items():  # RLIMIT_CPU: SIGXCPU at soft, SIGKILL at hard
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
except OSError as e:
    print(f"sandbox launcher: {e}", file=sys.stderr)
    sys.exit(125)
'''

# Installed in the child before the candidate program runs; see the module docstring ("audit").
_BOOT = r'''
import sys


def _install(work):
    import posix
    from posixpath import isabs, join, realpath
    getcwd = posix.getcwd
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_APPEND | posix.O_TRUNC
    deny = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill", "os.killpg",
            "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.forkpty", "pty.spawn",
            "os.startfile", "webbrowser.open"}
    no_import = {"ctypes", "_ctypes", "_posixsubprocess"}
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                   "os.chown", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "shutil.rmtree",
                   "shutil.move", "os.mkfifo", "os.mknod"}

    def resolve(p):
        if isinstance(p, bytes):
            p = p.decode("utf-8", "surrogateescape")
        return realpath(p if isabs(p) else join(getcwd(), p))

    def inside(p):
        if isinstance(p, int) or p is None:
            return True
        q = resolve(p)
        return q == work or q.startswith(work + "/")

    def other_proc(p):
        if not isinstance(p, (str, bytes)):
            return False
        q = resolve(p)
        own = f"/proc/{posix.getpid()}"
        return q.startswith("/proc/") and q[6:7].isdigit() and q != own and not q.startswith(own + "/")

    def hook(event, args):
        if event in deny or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in no_import:
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working folder is not allowed")
            if other_proc(path):
                raise PermissionError(f"sandbox: reading {path!r} is not allowed")
        elif event in path_events:
            for a in args:
                if isinstance(a, (str, bytes)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} on {a!r} outside the working folder is not allowed")

    sys.addaudithook(hook)


with open("main.py", encoding="utf-8", errors="replace") as _f:
    _src = _f.read()
_code = compile(_src, "main.py", "exec")
if sys.argv[1:] != ["--no-audit"]:
    _install(__import__("posix").getcwd())
del _install, _f, _src
sys.argv = ["main.py"]
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class SandboxResult:
    """What a sandboxed program did.

    stdout, stderr: decoded (UTF-8, errors replaced), cut at max_output_bytes
    returncode:     the exit status; negative -N when a signal N ended it (SIGKILL from us or RLIMIT_AS...)
    timed_out:      the wall-clock or CPU bound was hit
    killed:         a signal ended it (a timeout, RLIMIT_CPU's SIGXCPU/SIGKILL, RLIMIT_FSIZE's SIGXFSZ)
    wall_s:         seconds from start to exit
    isolation:      the layers that applied (see the module docstring)
    uid:            the uid it ran as under the "uid" layer, else None
    """

    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    killed: bool
    wall_s: float
    isolation: tuple[str, ...] = ()
    uid: int | None = None

    @property
    def ok(self) -> bool:
        """True when the program exited by itself with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.killed


def _launch(argv: list[str], *, ns: int | None, uid: int | None, work: str, limits: dict[str, tuple[int, int]],
            env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """Start `argv` through the launcher (namespaces `ns`, uid, rlimits), in its own session."""
    cfg = json.dumps({"ns": ns, "uid": uid, "work": work, "limits": limits, "argv": argv, "env": env})
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, cfg], cwd=work, env={},
                            start_new_session=True, **popen)


def _quiet_run(argv: list[str], **kwargs: Any) -> bool:
    """True if `argv` (through the launcher) exits 0 within 20 s."""
    work = tempfile.mkdtemp(prefix="coldstart-sandbox-probe-")
    try:
        proc = _launch(argv, work=work, env={"PATH": _ENV_PATH}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        try:
            return proc.wait(timeout=20) == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _namespace_flags() -> int | None:
    """The unshare flags that work here (probed once), or None."""
    options = [_CLONE_NEWNS | _CLONE_NEWNET] if os.geteuid() == 0 else []
    options.append(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET)
    for flags in options:
        if _quiet_run(["/bin/sh", "-c", "exit 0"], ns=flags, uid=None, limits={}):
            return flags
    log.warning("sandbox: no network/mount namespaces here; network is blocked by the audit hook only")
    return None


@functools.lru_cache(maxsize=1)
def _interpreter_for_uid() -> str | None:
    """An interpreter that an unprivileged uid can run with its standard library, or None."""
    candidates = [sys.executable, shutil.which("python3", path=_ENV_PATH)]
    for exe in dict.fromkeys(c for c in candidates if c):
        if _quiet_run([exe, "-I", "-S", "-c", "import json, math, collections, re"], ns=None, uid=_fresh_uid(),
                      limits={}):
            return exe
    log.warning("sandbox: no Python interpreter usable by an unprivileged uid; running without the uid layer")
    return None


def _fresh_uid() -> int:
    """A random uid no account uses (collisions between concurrent sandboxes are ~1e-9 likely)."""
    return 1_000_000 + secrets.randbelow(1_000_000_000)


def _count_processes(uid: int) -> int:
    """How many processes `uid` has now (RLIMIT_NPROC counts them all)."""
    n = 0
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.stat(f"/proc/{d}").st_uid == uid:
                n += 1
        except OSError:
            continue
    return n


def _kill_uid(uid: int, exe: str) -> None:
    """SIGKILL every process of `uid`: kill(-1) sent by a helper that runs as that uid."""
    subprocess.run([exe, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"], user=uid, group=uid,
                   extra_groups=[], cwd="/", env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=20, check=False)


def _write_files(work: Path, files: dict[str, str | bytes]) -> None:
    """Write extra input files into the working folder; names must stay inside it."""
    for name, content in files.items():
        target = (work / name).resolve()
        if name in ("main.py", "_boot.py") or not str(target).startswith(str(work) + os.sep):
            raise ValueError(f"sandbox: file name {name!r} must be a relative path inside the working folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)


def _read(f, limit: int) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")


def run_code(code: str, stdin: str = "", *, cpu_seconds: int = 2, wall_seconds: float = 5.0, memory_mb: int = 256,
             max_processes: int = 4, max_output_bytes: int = 1 << 20, files: dict[str, str | bytes] | None = None,
             audit: bool = True) -> SandboxResult:
    """Run the Python program `code` with `stdin` in the sandbox described in the module docstring.

    max_processes counts the program itself (and its threads) under the uid layer; without it the user's
    processes that already exist are added. `audit=False` leaves out the audit hook (tests use it to check
    the kernel layers alone). Never raises for anything the program does; ValueError for a bad `files` name.

    >>> r = run_code("print(int(input()) * 2)", "21")
    >>> r.stdout, r.returncode, r.timed_out
    ('42\\n', 0, False)
    """
    root = os.geteuid() == 0
    exe = (_interpreter_for_uid() if root else None) or sys.executable
    uid = _fresh_uid() if root and _interpreter_for_uid() else None
    ns_flags = _namespace_flags()
    nproc = max_processes if uid is not None else _count_processes(os.getuid()) + max_processes
    isolation = tuple(name for name, on in (("uid", uid is not None), ("netns", ns_flags is not None),
                                             ("rlimits", True), ("audit", audit)) if on)
    work = Path(tempfile.mkdtemp(prefix="coldstart-sandbox-")).resolve()
    try:
        (work / "main.py").write_text(code, encoding="utf-8", errors="replace")
        (work / "_boot.py").write_text(_BOOT)
        _write_files(work, files or {})
        if uid is not None:
            for p in [work, *work.rglob("*")]:
                os.chown(p, uid, uid)
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
            fin.write(stdin.encode("utf-8", "replace"))
            fin.seek(0)
            start = time.monotonic()
            argv = [exe, "-I", "-S", "-B", "_boot.py", *([] if audit else ["--no-audit"])]
            limits = {"RLIMIT_CPU": (cpu_seconds, cpu_seconds + 1), "RLIMIT_AS": (memory_mb << 20,) * 2,
                      "RLIMIT_NPROC": (nproc, nproc), "RLIMIT_FSIZE": (max_output_bytes,) * 2,
                      "RLIMIT_NOFILE": (64, 64), "RLIMIT_CORE": (0, 0)}
            proc = _launch(argv, ns=ns_flags, uid=uid, work=str(work), limits=limits, stdin=fin, stdout=fout,
                           stderr=ferr, env={"PATH": _ENV_PATH, "LANG": "C.UTF-8", "HOME": str(work)})
            timed_out = False
            try:
                proc.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_all(proc.pid, uid, exe)
            returncode = proc.wait()
            wall = time.monotonic() - start
            out, err = _read(fout, max_output_bytes), _read(ferr, max_output_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SandboxResult(out, err, returncode, timed_out or returncode == -signal.SIGXCPU, returncode < 0, wall,
                         isolation, uid)


def _kill_all(pid: int, uid: int | None, exe: str) -> None:
    """Kill the program's process group and, under the uid layer, every process of its uid."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid, exe)
