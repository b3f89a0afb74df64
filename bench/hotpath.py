"""Candidate speed-ups of coldstart's RL training hot path, measured and checked here before they are proposed.

    python bench/hotpath.py [--sizes 0.5M 20M] [--repeats 7] [--threads 2]

On one RL-shaped rollout batch (16 prompts × 8 completions × up to 32 new tokens, sampled by TorchSampler
from a tiny Qwen2) it times the trainer side of one micro-step, `coldstart.rl.logprobs.sequence_logprobs` →
`policy_loss` → `backward()`, with coldstart's current functions and with each variant below, interleaved
(A B A B), and checks that the variant gives the same log-probs and the same gradients (max abs difference).
Nothing in coldstart is edited: the variants live in this file.

    current      coldstart.rl.logprobs.sequence_logprobs as it is (each distinct prompt run once, shared prefix)
    full         the same with the full pass (every row's prompt + completion through the model)
    batched      the full pass with token_logprobs as one gather − logsumexp over the whole (N, T, V) block
    batched+keep also asks the model for the logits of the completion positions only (`logits_to_keep`),
                 skipping the LM head on prompt positions, and skips the divide when temperature is 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlbench import SIZES, ColdstartArm, Setup, make_model_folder  # noqa: E402

from coldstart.algorithms import policy_loss  # noqa: E402
from coldstart.rl import logprobs  # noqa: E402


def batched_token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log π(ids | ·) for (N, T, V) logits and (N, T) ids in one pass: z[id] − logsumexp(z), float32."""
    z = logits.float()
    return z.gather(-1, ids[..., None]).squeeze(-1) - torch.logsumexp(z, -1)


def logprobs_current(model, ro, temperature: float) -> torch.Tensor:
    """coldstart's sequence_logprobs as it is."""
    return logprobs.sequence_logprobs(model, ro, temperature)[0]


def logprobs_full(model, ro, temperature: float) -> torch.Tensor:
    """sequence_logprobs with the full pass (no shared prefix)."""
    return logprobs.sequence_logprobs(model, ro, temperature, shared=False)[0]


def logprobs_batched(model, ro, temperature: float) -> torch.Tensor:
    """The full pass with batched_token_logprobs in place of losses.token_logprobs."""
    saved = logprobs.token_logprobs
    logprobs.token_logprobs = batched_token_logprobs
    try:
        return logprobs.sequence_logprobs(model, ro, temperature, shared=False)[0]
    finally:
        logprobs.token_logprobs = saved


def logprobs_keep(model, ro, temperature: float) -> torch.Tensor:
    """A copy of the full pass of sequence_logprobs (same inputs, same mask) that asks the model for the logits of the
    completion positions only and uses batched_token_logprobs; the Δ columns check it against the original."""
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, torch.ones_like(ro.completion_mask)], 1).long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    T = ro.completion_ids.shape[1]
    # the last T + 1 positions are P - 1 .. P + T - 1; the very last one predicts nothing we score
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                   logits_to_keep=T + 1).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-5)
    return batched_token_logprobs(logits, ro.completion_ids)


VARIANTS = {"current": logprobs_current, "full": logprobs_full, "batched": logprobs_batched,
            "batched+keep": logprobs_keep}


def rollout_batch(size: str, out: Path):
    """A policy, one sampled rollout batch and (N, T) advantages (dense reward, GRPO normalised)."""
    folder, params = make_model_folder(out / f"model-{size}", size)
    arm = ColdstartArm(Setup(folder=folder))
    examples = arm.pool[:16]
    ro = arm.sampler.sample(arm.policy, arm.sampling["prompt_ids"](examples), arm.sampling["sampling"],
                            torch.Generator().manual_seed(0))
    scores = torch.tensor(arm.reward_fn([e.prompt for e in examples for _ in range(8)], ro.texts,
                                        answer=[e.answer for e in examples for _ in range(8)]).total)
    g = scores.view(-1, 8)
    adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).view(-1, 1) * ro.completion_mask
    return arm.policy, ro, adv, params


def micro_step(model, ro, adv, fn) -> tuple[torch.Tensor, float]:
    """Forward (log-probs), loss, backward; returns the detached log-probs and the seconds taken."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logp = fn(model, ro, 1.0)
    loss, _ = policy_loss(logp, ro.logprobs, adv, ro.completion_mask, eps_low=0.2, eps_high=0.28)
    loss.backward()
    return logp.detach(), time.perf_counter() - start


def compare(size: str, repeats: int, out: Path) -> list[str]:
    """Timings and correctness of every variant on one model size, as table lines."""
    model, ro, adv, params = rollout_batch(size, out)
    ref_logp, _ = micro_step(model, ro, adv, VARIANTS["current"])
    ref_grad = [p.grad.clone() for p in model.parameters()]
    diffs = {}
    for name, fn in VARIANTS.items():
        logp, _ = micro_step(model, ro, adv, fn)
        grad_diff = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), ref_grad))
        diffs[name] = (float((logp - ref_logp).abs().max()), grad_diff)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, fn in VARIANTS.items():
            times[name].append(micro_step(model, ro, adv, fn)[1])
    base = statistics.median(times["current"])
    lines = [f"\n{size} model ({params / 1e6:.2f}M), {ro.completion_ids.shape[0]} rows x "
             f"{ro.prompt_ids.shape[1]} + {ro.completion_ids.shape[1]} tokens, median of {repeats}",
             f"{'variant':<14} {'s':>8} {'speed-up':>9} {'max |Δ logp|':>13} {'max |Δ grad|':>13}"]
    for name in VARIANTS:
        t = statistics.median(times[name])
        lines.append(f"{name:<14} {t:>8.4f} {base / t:>8.2f}x {diffs[name][0]:>13.2e} {diffs[name][1]:>13.2e}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, compare the variants on every size, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-grpo", help="where the model folders are saved")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    for size in args.sizes:
        print("\n".join(compare(size, args.repeats, Path(args.out))))


if __name__ == "__main__":
    main()
