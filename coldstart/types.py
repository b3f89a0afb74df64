"""The records that pass between stages: the contracts of coldstart.

Shapes use B = prompts in a batch, G = samples per prompt, N = B×G rollouts, P = prompt length,
T = completion length (right-padded), L = P + T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

Messages = list[dict[str, Any]]  # chat messages: {"role": "system" | "user" | "assistant" | "tool", "content": ...}

# Keys TRL's GRPOTrainer never passes to a reward function as columns (they arrive as prompts / completions).
NOT_COLUMNS = ("prompt", "completion", "completion_ids")


@dataclass
class Example:
    """One task item.

    prompt:   the question as the user would ask it (no chat markup): a string, or a list of chat messages
              (TRL's conversational format; its own system message and earlier turns are kept as given).
    answer:   the gold final answer, as a string.
    solution: an optional worked chain-of-thought trace ending in the answer (the SFT target body,
              without the `<answer>` tags: prompts.py wraps it).
    meta:     anything the verifier needs besides the answer (e.g. the reasoning-gym entry).
    target:   an SFT target used verbatim (TRL's `completion` / last assistant message of `messages`), or None
              to build it from solution and answer.
    record:   the data record as read (file tasks): its columns reach reward functions under their own names.
    """

    prompt: str | Messages
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    record: dict[str, Any] | None = None

    @property
    def conversational(self) -> bool:
        """True when the prompt is a list of chat messages."""
        return isinstance(self.prompt, list)

    @property
    def key(self) -> str:
        """The prompt as one string (messages as canonical JSON): what splits, dedup and curricula key on."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt, sort_keys=True,
                                                                            ensure_ascii=False, default=str)

    def columns(self) -> dict[str, Any]:
        """The fields handed to a reward function as keyword columns (TRL's convention): `answer`,
        `solution` and meta, then every column of the record under its own name (a record's column wins)."""
        raw = {k: v for k, v in (self.record or {}).items() if k not in NOT_COLUMNS}
        return {"answer": self.answer, "solution": self.solution, **self.meta, **raw}


@runtime_checkable
class Task(Protocol):
    """A source of examples and their verifier.

    `examples(split, n, seed)` returns n examples of a split ("train", "val" or "test"); the splits are
    disjoint. `verify(example, completion)` scores a model completion in [0, 1] (1 = correct).
    """

    name: str

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]: ...

    def verify(self, example: Example, completion: str) -> float: ...


@dataclass
class Rollouts:
    """Completions sampled for a batch of prompts: N = B×G rows, row i belongs to prompt i // G.

    prompt_ids:     (N, P) long, left-padded with pad_id
    prompt_mask:    (N, P) bool, True on real prompt tokens
    completion_ids: (N, T) long, right-padded with pad_id after eos (eos itself is kept and is masked in)
    completion_mask:(N, T) bool, True on generated tokens up to and including eos
    logprobs:       (N, T) float, log-prob of each sampled token under the distribution sampled from
                    (after temperature / top-k / top-p); 0 where completion_mask is False
    truncated:      (N,) bool, True where no eos/stop was produced within max_new_tokens
    texts:          N decoded completions (special tokens removed, cut at a stop string)
    prefix_mask:    (N, T) bool or None, True on completion tokens copied from a demonstration (Prefix-RFT
                    hybrid rows, coldstart.algorithms.prefix): off-policy, their `logprobs` are the policy's
                    own at sampling time, not the sampler's
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]
    prefix_mask: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) long: completion length in tokens."""
        return self.completion_mask.sum(-1)
