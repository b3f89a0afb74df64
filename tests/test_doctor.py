"""coldstart doctor: versions, device, and known bad combinations."""

from coldstart.cli import main
from coldstart.tools.doctor import environment, find_issues

HEALTHY = {"python": "3.11.9", "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2",
                                            "accelerate": "1.15.0", "vllm": None},
           "cuda_available": False, "nvidia_smi": False, "torch_cuda": None, "requires": {}}


def test_environment_reports_versions_and_device():
    env = environment()
    assert env["versions"]["torch"] and env["versions"]["transformers"]
    assert "vllm" in env["versions"]  # listed, installed or not
    assert env["device"] in ("cuda", "mps", "cpu") and env["threads"] >= 1
    assert set(env["requires"]) >= {"torch", "transformers", "accelerate", "peft"} - {
        k for k, v in env["versions"].items() if v is None}


def test_known_bad_combinations_are_found():
    assert find_issues(HEALTHY) == []
    old_tf = find_issues({**HEALTHY, "versions": {**HEALTHY["versions"], "transformers": "4.45.2"}})
    assert len(old_tf) == 1 and "transformers < 4.56" in old_tf[0]
    gpu_hidden = find_issues({**HEALTHY, "nvidia_smi": True})
    assert len(gpu_hidden) == 1 and "CPU-only torch build" in gpu_hidden[0] and "None" in gpu_hidden[0]
    assert "peft < 0.18" in find_issues({**HEALTHY, "versions": {**HEALTHY["versions"], "peft": "0.17.1"}})[0]
    pinned = find_issues({**HEALTHY, "requires": {"vllm": ["torch==2.9.0"]},
                          "versions": {**HEALTHY["versions"], "vllm": "0.12.0"}})
    assert "vllm 0.12.0 requires torch==2.9.0, but torch 2.13.0+cpu is installed" in pinned
    assert any("no CUDA device" in m for m in pinned)
    broken = find_issues({**HEALTHY, "torch_error": "ImportError: libcudnn.so.9: cannot open shared object file"})
    assert broken == ["torch does not import (ImportError: libcudnn.so.9: cannot open shared object file): "
                      "reinstall torch"]


def test_doctor_command_exit_code_matches_the_findings(capsys):
    code = main(["doctor"])
    err = capsys.readouterr().err
    assert "transformers" in err and "device" in err
    assert code == (1 if find_issues(environment()) else 0)
    assert ("no known bad combination found" in err) == (code == 0)
