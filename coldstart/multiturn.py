"""Multi-turn rollouts: the model and a text environment (coldstart.envs) take turns, up to `rl.max_turns`.

For N = B×G trajectories (each example repeated G times, one fresh environment each):

    obs_0 = env.reset(example)                         rendered as the chat prompt (prompts.render_prompt)
    repeat: model turn  = the sampler (coldstart.rollout), batched over the trajectories still running,
                          on prompt + everything so far; ends at eos, `rl.stop` or the env's stop strings
            obs, r, done = env.step(turn text)         every turn's reward is kept
            observation = the chat template's next user turn and assistant header, e.g.
                          `<|user|>{obs}<|assistant|>` (an eos is inserted first when the turn ended on a
                          stop string), appended as tokens the model did not generate

The result is one `Rollouts` whose completion is model turn 1, observation 1, model turn 2, … (the last turn
is a model turn), with `completion_mask` True on model tokens only and sampler log-probs 0 on observation
tokens, so `rl.update` and `policy_loss` train on model tokens only, unchanged. The trainer re-reads the
whole sequence (observations included) with every position attended, as the sampler saw it. `Turns` keeps the
per-turn rewards and the turn index of each token for the UserRL credits (algorithms/turn_credit.py).

A trajectory also ends when its context would pass the model's position limit (`truncated`). The score of a
trajectory is `trajectory_scores(turn rewards, rl.trajectory_score, rl.turn_gamma)`; `turns/mean` (model turns
per trajectory) and `turns/solved` (share ending with a positive final reward) are logged with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .algorithms.turn_credit import trajectory_scores
from .config import PromptConfig
from .envs import EnvFactory
from .prompts import chat_format
from .rollout import SamplingParams
from .rollout.base import left_pad, max_positions, pad_id_of
from .types import Example, Rollouts


@dataclass
class Turns:
    """Per-turn data of N trajectories with at most K model turns.

    rewards:    (N, K) float, the reward of each model turn (0 past the trajectory's end)
    mask:       (N, K) bool, True on the turns that happened
    token_turn: (N, T) long, the turn index of each completion token; −1 on observation and padding tokens
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    token_turn: torch.Tensor

    def select(self, rows: torch.Tensor) -> Turns:
        """The trajectories at `rows` ((K,) long)."""
        return Turns(self.rewards[rows], self.mask[rows], self.token_turn[rows])

    def fit(self, width: int) -> torch.Tensor:
        """token_turn cut or padded (with −1) to `width` columns, to match a re-trimmed Rollouts."""
        t = self.token_turn[:, :width]
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1)

    @staticmethod
    def cat(parts: list[Turns]) -> Turns:
        """Stack row-wise, padding K and T."""
        K = max(p.rewards.shape[1] for p in parts)
        T = max(p.token_turn.shape[1] for p in parts)
        pad = torch.nn.functional.pad
        return Turns(torch.cat([pad(p.rewards, (0, K - p.rewards.shape[1])) for p in parts]),
                     torch.cat([pad(p.mask, (0, K - p.mask.shape[1])) for p in parts]),
                     torch.cat([pad(p.token_turn, (0, T - p.token_turn.shape[1]), value=-1) for p in parts]))


@dataclass
class EnvResult:
    """Scores of N trajectories, shaped like coldstart.rewards.RewardResult for the RL loop's metrics.

    total: (N,) trajectory scores; turns: (N,) model turns; solved: (N,) final turn reward > 0."""

    total: list[float]
    turns: list[int]
    solved: list[bool]
    errors: int = 0

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means for metrics.jsonl: reward/total, turns/mean, turns/max, turns/solved."""
        n = max(1, len(self.total))
        return {f"{prefix}total": sum(self.total) / n, "turns/mean": sum(self.turns) / n,
                "turns/max": float(max(self.turns, default=0)), "turns/solved": sum(self.solved) / n}


def observation_template(tokenizer) -> tuple[str, str]:
    """(before, after): the text around an observation that continues a chat after an assistant turn, read off
    the tokenizer's chat template (e.g. `<|user|>`, `<|assistant|>`); without a template ("\\n", "\\n")."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n", "\n"
    head = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    a = tokenizer.apply_chat_template(head, tokenize=False)
    b = tokenizer.apply_chat_template([*head, {"role": "user", "content": "\x00"}], tokenize=False,
                                      add_generation_prompt=True)
    if not b.startswith(a) or "\x00" not in b:
        raise ValueError("multiturn: the tokenizer's chat template does not extend a conversation by appending "
                         "a user turn; observations cannot be inserted")
    before, after = b[len(a):].split("\x00")
    return before, after


class MultiTurnRollout:
    """Samples multi-turn trajectories with `sampler` against fresh environments from `make_env`.

    Call: `(policy, examples (B), params, generator) -> (Rollouts (N = B×G rows), scores (N,), EnvResult,
    Turns)` with G = params.n (the group size); each model turn is sampled with n=1 and params' other settings.
    """

    def __init__(self, make_env: EnvFactory, sampler, tokenizer, max_turns: int, prompt: Any = None,
                 score: str = "sum", gamma: float = 0.8):
        if max_turns < 1:
            raise ValueError(f"rl.max_turns must be >= 1, got {max_turns}")
        self.make_env, self.sampler, self.tokenizer = make_env, sampler, tokenizer
        self.max_turns, self.score, self.gamma = max_turns, score, gamma
        self.fmt = chat_format(tokenizer, prompt if prompt is not None else PromptConfig(system=False))
        self.before, self.after = observation_template(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = pad_id_of(tokenizer)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def __call__(self, policy, examples: list[Example], params: SamplingParams, generator=None):
        G = params.n
        rows = [ex for ex in examples for _ in range(G)]
        envs = [self.make_env() for _ in rows]
        prompts = [self.fmt.prompt_ids(env.reset(ex)) for env, ex in zip(envs, rows)]
        stops = sorted({*params.stop, *(s for env in envs[:1] for s in env.stop)})
        turn_params = dataclasses.replace(params, n=1, stop=stops)
        limit = max_positions(policy) or 1 << 30
        N = len(rows)
        ids: list[list[int]] = [[] for _ in range(N)]
        model: list[list[bool]] = [[] for _ in range(N)]
        logp: list[list[float]] = [[] for _ in range(N)]
        turn_of: list[list[int]] = [[] for _ in range(N)]
        rewards: list[list[float]] = [[] for _ in range(N)]
        texts, done, truncated = [""] * N, [False] * N, [False] * N
        for k in range(self.max_turns):
            room = {i: limit - len(prompts[i]) - len(ids[i]) for i in range(N) if not done[i]}
            for i, r in room.items():
                if r < 2 and k == 0:
                    raise ValueError(f"multiturn: a prompt of {len(prompts[i])} tokens leaves no room for a turn "
                                     f"in the model's {limit} positions (raise model.max_len)")
                if r < 2:  # no room left for another turn
                    done[i] = truncated[i] = True
            active = [i for i in room if not done[i]]
            if not active:
                break
            budget = min(params.max_new_tokens, min(room[i] for i in active))
            ro = self.sampler.sample(policy, [prompts[i] + ids[i] for i in active],
                                     dataclasses.replace(turn_params, max_new_tokens=budget), generator)
            for j, i in enumerate(active):
                n = int(ro.lengths[j])
                ids[i] += ro.completion_ids[j, :n].tolist()
                logp[i] += ro.logprobs[j, :n].tolist()
                model[i] += [True] * n
                turn_of[i] += [k] * n
                texts[i] += ro.texts[j]
                obs, reward, finished = envs[i].step(ro.texts[j])
                rewards[i].append(float(reward))
                truncated[i] = bool(ro.truncated[j])
                if finished or k == self.max_turns - 1:
                    done[i] = True
                    continue
                extra = ([self.eos] if n == 0 or ids[i][-1] != self.eos else []) + self._encode(
                    self.before + obs + self.after)
                if len(prompts[i]) + len(ids[i]) + len(extra) + 2 > limit:  # no room for the next turn
                    done[i] = truncated[i] = True
                    continue
                ids[i] += extra
                logp[i] += [0.0] * len(extra)
                model[i] += [False] * len(extra)
                turn_of[i] += [-1] * len(extra)
                texts[i] += self.before + obs + self.after
        return self._assemble(prompts, ids, model, logp, turn_of, rewards, texts, truncated, policy)

    def _assemble(self, prompts, ids, model, logp, turn_of, rewards, texts, truncated, policy):
        """Pad the per-trajectory lists into Rollouts, scores, EnvResult and Turns."""
        device = next(policy.parameters()).device
        T, K = max(1, max(map(len, ids))), max(1, max(map(len, rewards)))

        def right(rows, fill, dtype):
            return torch.tensor([r + [fill] * (T - len(r)) for r in rows], dtype=dtype, device=device)

        prompt_ids, prompt_mask = left_pad(prompts, self.pad, device)
        turn_rewards = torch.tensor([r + [0.0] * (K - len(r)) for r in rewards])
        turn_mask = torch.tensor([[k < len(r) for k in range(K)] for r in rewards])
        scores = trajectory_scores(turn_rewards, turn_mask, self.score, self.gamma)
        ro = Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=right(ids, self.pad, torch.long),
                      completion_mask=right(model, False, torch.bool), logprobs=right(logp, 0.0, torch.float32),
                      truncated=torch.tensor(truncated, device=device), texts=texts)
        result = EnvResult(scores.tolist(), [len(r) for r in rewards], [bool(r) and r[-1] > 0 for r in rewards])
        return ro, scores, result, Turns(turn_rewards, turn_mask, right(turn_of, -1, torch.long).cpu())


def evaluate_env(rollout: MultiTurnRollout, policy, examples: list[Example], max_new_tokens: int,
                 eos: list[int], batch_size: int = 64) -> dict[str, float]:
    """Greedy games on `examples`: `turns/mean` (model turns per game), `turns/solved` and `reward/total`."""
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=eos)
    totals, turns, solved = [], [], []
    for i in range(0, len(examples), batch_size):
        _, _, res, _ = rollout(policy, examples[i : i + batch_size], params)
        totals += res.total
        turns += res.turns
        solved += res.solved
    return EnvResult(totals, turns, solved).metrics()


def build_multiturn(recipe, task, sampler, tokenizer) -> MultiTurnRollout | None:
    """The recipe's multi-turn rollout (`rl.env`, `rl.env_options`, `rl.max_turns`, score), or None without env."""
    from .envs import build_env

    cfg = recipe.rl
    if cfg.env is None:
        return None
    return MultiTurnRollout(build_env(cfg.env, cfg.env_options, task), sampler, tokenizer, cfg.max_turns,
                            recipe.prompt, cfg.trajectory_score, cfg.turn_gamma)


def credit_advantages(adv: torch.Tensor, turns: Turns, kind: str, gamma: float) -> tuple[torch.Tensor, dict]:
    """Token advantages (N, T) reweighted by the UserRL turn credits `kind` of `turns` (see turn_credit.py)."""
    from .algorithms.turn_credit import spread_advantage, turn_credits

    credits = turn_credits(turns.rewards, turns.mask, kind, gamma).to(adv.device)
    return spread_advantage(adv, credits, turns.fit(adv.shape[1]).to(adv.device))
