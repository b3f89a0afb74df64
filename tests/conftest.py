import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

# A recipe small enough that a whole stage runs in seconds on one CPU core.
TINY = [
    "run.threads=1", "run.quiet=true", "model.init=tiny", "model.hidden_size=32", "model.layers=1", "model.heads=2",
    "model.max_len=96", "task.name=arithmetic", "task.options={digits: 2, ops: '+'}", "task.train_size=200",
    "task.val_size=16", "task.test_size=16", "prompt.system=false", "sft.traces=32", "sft.batch_size=8",
    "sft.max_steps=8", "sft.eval_every=0", "sft.save_every=4", "sft.max_new_tokens=40", "rl.steps=3",
    "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=40", "rl.save_every=2", "eval.samples=2",
    "eval.max_new_tokens=40",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


def kill_when_saved(args: list[str], checkpoint) -> None:
    """Run `coldstart <args>` in a subprocess and SIGKILL its process group as soon as `checkpoint` exists;
    fails if the run finished before the kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = args[args.index("--out") + 1]
    proc = subprocess.Popen([sys.executable, "-m", "coldstart.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stage = checkpoint.parent.parent
    assert not (stage / "complete.json").exists(), f"the run in {out} finished before it could be killed"
