"""`coldstart doctor`: the versions and the device coldstart will run with, and known bad combinations.

Prints the versions of python and the libraries coldstart uses (absent optional ones are fine), the device
(cuda / mps / cpu, GPU name and memory, bf16 support, threads), then checks `KNOWN_ISSUES`, each a rule we
can justify from the libraries' own history or from coldstart's code, plus the version pins that the
installed packages themselves declare on torch / transformers / accelerate / peft (a small `pip check`).
Exit code 0 when nothing is wrong, 1 when a bad combination is found.

    coldstart doctor
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from collections.abc import Callable
from typing import Any

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

PACKAGES = ("torch", "transformers", "peft", "accelerate", "vllm", "trl", "datasets", "tokenizers", "math-verify",
            "reasoning-gym", "tensorboard", "wandb")
PINNED = ("torch", "transformers", "accelerate", "peft")  # the pins between these we check


def _v(env: dict[str, Any], name: str) -> Version | None:
    """The installed version of `name` in `env["versions"]`, None when absent or unparsable."""
    raw = env["versions"].get(name)
    try:
        return Version(raw.split("+")[0]) if raw else None
    except InvalidVersion:
        return None


# (rule, message): the rule reads the environment dict that `environment()` returns.
KNOWN_ISSUES: list[tuple[Callable[[dict[str, Any]], bool], str]] = [
    (lambda e: bool(e.get("torch_error")), "torch does not import ({torch_error}): reinstall torch"),
    (lambda e: Version(e["python"]) < Version("3.10"),
     "python < 3.10: pydantic evaluates the recipe schema's `int | None` annotations, which need python 3.10+"),
    (lambda e: (v := _v(e, "torch")) is not None and v < Version("2.4"),
     "torch < 2.4: coldstart's minimum (pyproject); older torch lacks the foreach AdamW / SDPA paths used here"),
    (lambda e: (v := _v(e, "transformers")) is not None and v < Version("4.56"),
     "transformers < 4.56: coldstart.models passes `dtype=` to from_pretrained, which was called `torch_dtype` "
     "before 4.56, so the recipe's run.dtype would be ignored; upgrade transformers"),
    (lambda e: (t := _v(e, "transformers")) is not None and t >= Version("5") and (p := _v(e, "peft")) is not None
     and p < Version("0.18"),
     "peft < 0.18 with transformers 5: older peft imports transformers internals that v5 removed, so "
     "model.lora fails to load; pip install -U 'peft>=0.18'"),
    (lambda e: e["nvidia_smi"] and not e["cuda_available"],
     "an NVIDIA GPU is visible (nvidia-smi) but torch cannot use it: a CPU-only torch build or a driver / CUDA "
     "mismatch (torch.version.cuda = {torch_cuda}); reinstall torch for your CUDA version"),
    (lambda e: e["versions"].get("vllm") is not None and not e["cuda_available"],
     "vllm is installed but there is no CUDA device: rl.sampler=vllm will not start; use the torch sampler"),
]


def environment() -> dict[str, Any]:
    """Versions, device facts and the pins the installed packages declare, as one plain dict."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {"python": platform.python_version(), "versions": versions, "torch_error": None,
                           "cuda_available": False, "torch_cuda": None, "mps_available": False, "threads": 0,
                           "nvidia_smi": shutil.which("nvidia-smi") is not None, "cpus": os.cpu_count(), "gpus": []}
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch install is exactly what doctor must report
        env.update(torch_error=f"{type(e).__name__}: {e}", device="none", bf16=False, requires={})
        return env
    env.update(cuda_available=torch.cuda.is_available(), torch_cuda=torch.version.cuda,
               threads=torch.get_num_threads())
    mps = getattr(torch.backends, "mps", None)
    env["mps_available"] = bool(mps and mps.is_available())
    if env["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
        env["bf16"] = torch.cuda.is_bf16_supported()
    env["device"] = "cuda" if env["cuda_available"] else "mps" if env["mps_available"] else "cpu"
    if env["device"] != "cuda":
        env["bf16"] = env["device"] == "cpu"  # torch has bf16 CPU kernels (fast only with AVX512-BF16 / AMX)
    env["requires"] = {name: _declared_pins(name) for name in PINNED if versions.get(name)}
    if versions.get("vllm"):
        env["requires"]["vllm"] = _declared_pins("vllm")
    return env


def _declared_pins(name: str) -> list[str]:
    """The unconditional requirements of package `name` on the PINNED packages, e.g. ['torch>=2.0.0']."""
    out = []
    for raw in importlib.metadata.requires(name) or []:
        req = Requirement(raw)
        if req.name in PINNED and (req.marker is None or req.marker.evaluate({"extra": ""})):
            out.append(str(req))
    return out


def find_issues(env: dict[str, Any]) -> list[str]:
    """The known bad combinations present in `env` (see KNOWN_ISSUES), then unmet declared pins.

    >>> ok = {"python": "3.11.9", "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"},
    ...       "cuda_available": False, "nvidia_smi": False, "torch_cuda": None, "requires": {}}
    >>> find_issues(ok)
    []
    >>> find_issues({**ok, "versions": {**ok["versions"], "peft": "0.17.1"}})[0][:40]
    'peft < 0.18 with transformers 5: older p'
    """
    found = [msg.format(**env) for rule, msg in KNOWN_ISSUES if rule(env)]
    for name, pins in env.get("requires", {}).items():
        for pin in pins:
            req = Requirement(pin)
            have = _v(env, req.name)
            if have is not None and not req.specifier.contains(have, prereleases=True):
                found.append(f"{name} {env['versions'][name]} requires {pin}, but {req.name} "
                             f"{env['versions'][req.name]} is installed")
    return found


def run_doctor() -> int:
    """Print the environment report; 0 when fine, 1 when a bad combination is found."""
    from rich.console import Console
    from rich.table import Table

    # not runtime's console: importing runtime imports torch, which may be what is broken
    console = Console(stderr=True, markup=False, highlight=False)
    env = environment()
    t = Table(title="coldstart doctor")
    t.add_column("")
    t.add_column("")
    t.add_row("python", f"{env['python']} ({sys.executable})")
    for name, v in env["versions"].items():
        t.add_row(name, v or "not installed")
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env["gpus"]) or "-"
    t.add_row("device", f"{env['device']}  (torch CUDA build: {env['torch_cuda'] or 'none'}, "
                        f"nvidia-smi: {'yes' if env['nvidia_smi'] else 'no'})")
    t.add_row("GPUs", gpus)
    t.add_row("bf16", "yes" if env["bf16"] else "no")
    t.add_row("threads", f"{env['threads']} torch threads, {env['cpus']} CPUs")
    console.print(t)
    issues = find_issues(env)
    for msg in issues:
        console.print(f"problem: {msg}", style="red")
    if not issues:
        console.print("ok: no known bad combination found", style="green")
    return 1 if issues else 0
