"""RLT's dense teacher reward (Reinforcement-Learned Teachers, Sakana, arXiv 2506.08388; docs/algorithms.md §12).

The policy is a teacher that writes an explanation t_o; a frozen student π_s scores it by how well it can
then reproduce the known solution s, minus how implausible the explanation looks to a student who cannot see s:

    r_SS  = mean_tok log π_s(s | t_o, q) + α · min_tok log π_s(s | t_o, q)
    r_KL  = mean_tok KL_tok + α · max_tok KL_tok          over the explanation tokens
    r_RLT = r_SS − λ · r_KL,                               α = 0.01, λ = 3 (the paper's)

Our reading (where we simplify):
- t_o is the completion's `<think>…</think>` content (empty when there is none); s is the gold `answer`
  column (`target: solution` uses the example's worked solution, falling back to the answer). In the paper
  the teacher's prompt also shows s; here the prompt is the recipe's, so pair it with a task whose prompt
  carries the solution if you want the paper's setting.
- The student reads the recipe-style rendering: `render_prompt(q) + "<think>" + t_o + "</think><answer>"`,
  then s is scored; for r_KL it reads `render_prompt(q) + "<think>"`, then t_o is scored.
- KL_tok: a reward function does not see the teacher's log-probs, so KL(π_θ(t_o|s,q) ‖ π_s(t_o|q)) at each
  sampled token is replaced by the student's surprisal −log π_s(t_i | q, t_<i): the k1 estimate
  log π_θ − log π_s without the teacher's own log π_θ term (≤ 0), i.e. a cross-entropy that is ≥ the k1
  estimate. An empty explanation has r_KL = 0.
- The student is a model folder (e.g. the run's `base` or `sft` folder) given as the `student` option,
  loaded once on first use. It need not share the policy's tokenizer: the reward re-tokenises the text.

    rl.rewards: [{name: rlt, options: {student: runs/demo/sft}}]
"""

from __future__ import annotations

import re
from typing import Any

import torch

from coldstart.rewards.basic import RewardFn

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def rlt_score(solution_logp: torch.Tensor, kl_tok: torch.Tensor, alpha: float = 0.01, lam: float = 3.0) -> float:
    """r_RLT from the student's log-probs of the solution tokens (S,) and the per-token KL terms of the
    explanation (T,); T may be 0 (then r_KL = 0).

    >>> rlt_score(torch.tensor([-1.0, -3.0]), torch.tensor([0.5, 1.5]))  # -2.03 - 3 * 1.015
    -5.075
    """
    solution_logp, kl_tok = solution_logp.double(), kl_tok.double()
    r_ss = solution_logp.mean() + alpha * solution_logp.min()
    r_kl = kl_tok.mean() + alpha * kl_tok.max() if kl_tok.numel() else 0.0
    return round(float(r_ss - lam * r_kl), 9)


def explanation(completion: str) -> str:
    """The teacher's explanation t_o: the first think block's content, or "" without one.

    >>> explanation("<think> 2+2=4 </think><answer>4</answer>"), explanation("4")
    (' 2+2=4 ', '')
    """
    m = _THINK.search(completion)
    return m.group(1) if m else ""


def continuation_logprobs(model, tokenizer, context: str, target: str) -> torch.Tensor:
    """(len(target tokens),) log π(target token i | context, target tokens < i) under `model`."""
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    tgt = tokenizer(target, add_special_tokens=False).input_ids
    if not tgt:
        return torch.zeros(0)
    device = next(model.parameters()).device
    ids = torch.tensor([ctx + tgt], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(ctx) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(ctx) :, None]).squeeze(-1).cpu()


def make_rlt(student: str, alpha: float = 0.01, lam: float = 3.0, target: str = "answer",
             strategy: str = "think", system: bool = False, device: str = "cpu", task: Any = None) -> RewardFn:
    """Build the RLT reward with a frozen student model loaded (once, lazily) from the folder `student`."""
    if target not in ("answer", "solution"):
        raise ValueError(f"rlt: target must be 'answer' or 'solution'; got {target!r}")
    loaded: dict[str, Any] = {}

    def rlt(prompts: list[str], completions: list[str], answer: list[str], solution: list | None = None,
            **columns) -> list[float]:
        from coldstart.models import load_model, load_tokenizer
        from coldstart.prompts import render_prompt

        if not loaded:
            loaded["model"] = load_model(student, "float32", device).eval().requires_grad_(False)
            loaded["tokenizer"] = load_tokenizer(student)
        model, tok = loaded["model"], loaded["tokenizer"]
        sols = solution if target == "solution" and solution is not None else [None] * len(answer)
        scores = []
        for q, c, a, s in zip(prompts, completions, answer, sols, strict=True):
            head = render_prompt(tok, q, strategy, system) + "<think>"
            t_o = explanation(c)
            ss = continuation_logprobs(model, tok, f"{head}{t_o}</think><answer>", s or a)
            kl = -continuation_logprobs(model, tok, head, t_o)
            scores.append(rlt_score(ss, kl, alpha, lam))
        return scores

    return rlt
