"""MT-R1-Zero's rule-metric mixed reward for translation (Feng et al., arXiv 2504.10160; docs/algorithms.md §19).

    format ok:  R = S_format + S_metric,  S_format = +1
    otherwise:  R = format_penalty  (the metric is skipped)

S_metric, against the reference in the `answer` column, on the text of the answer block:
- "bleu": sentence BLEU / 100 (sacrebleu, its defaults: 13a tokenisation, exp smoothing, effective order);
- "chrf": sentence chrF / 100 (sacrebleu, character 6-grams, β = 2);
- "mix":  BLEU / 100 + chrF / 100.

Deviations, on purpose:
- The paper's Mix is BLEU/100 + COMETKiwi (a neural, reference-free quality model); COMETKiwi needs a
  download and a GPU, so chrF/100 stands in for the semantic half. The paper's "Sem" reward is not offered.
- The paper's format is `<think>…</think><translate>…</translate>`; the answer block tag is an option
  (`answer_tag`, default "answer", the toolkit's tag; "translate" gives the paper's).
- The penalty for a bad format: the paper's constant is unconfirmed; −2 is the derived Reflex-RL codebase's
  (docs/algorithms.md §19). With it the reward lies in [−2, 3] for "mix".

    rl.rewards: [{name: mt, options: {metric: mix}}]
"""

from __future__ import annotations

import re
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from coldstart.rewards.basic import RewardFn

METRICS = ("bleu", "chrf", "mix")


def format_blocks(text: str, think_tag: str = "think", answer_tag: str = "answer") -> str | None:
    """The answer block's text if `text` is exactly one think block then one answer block (whitespace around
    them only), else None.

    >>> format_blocks("<think>hi</think>\\n<answer> Hallo </answer>"), format_blocks("<answer>x</answer>")
    ('Hallo', None)
    """
    tags = (f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>")
    if any(text.count(t) != 1 for t in tags):
        return None
    m = re.fullmatch(rf"\s*<{think_tag}>.*</{think_tag}>\s*<{answer_tag}>(.*)</{answer_tag}>\s*", text, re.DOTALL)
    return m.group(1).strip() if m else None


def metric_score(hypothesis: str, reference: str, metric: str = "mix") -> float:
    """S_metric of one translation: BLEU/100, chrF/100 or their sum (sacrebleu sentence scores).

    >>> round(metric_score("a b c d", "a b c d"), 6), round(metric_score("a b c d", "a b c e", "chrf"), 6)
    (2.0, 0.479167)
    """
    bleu = BLEU(effective_order=True).sentence_score(hypothesis, [reference]).score / 100
    chrf = CHRF().sentence_score(hypothesis, [reference]).score / 100
    return {"bleu": bleu, "chrf": chrf, "mix": bleu + chrf}[metric]


def make_mt(metric: str = "mix", format_penalty: float = -2.0, think_tag: str = "think",
            answer_tag: str = "answer", task: Any = None) -> RewardFn:
    """Build the MT-R1-Zero reward: 1 + S_metric when the format holds, else `format_penalty`.

    Reads the `answer` column (the reference translation).

    >>> reward = make_mt(metric="bleu")
    >>> [round(r, 6) for r in reward(["q"] * 2, ["<think>.</think><answer>das Haus</answer>", "das Haus"],
    ...                                answer=["das Haus"] * 2)]
    [2.0, -2.0]
    """
    if metric not in METRICS:
        raise ValueError(f"mt: metric must be one of {', '.join(METRICS)}; got {metric!r}")

    def mt(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
        scores = []
        for completion, reference in zip(completions, answer, strict=True):
            hyp = format_blocks(completion, think_tag, answer_tag)
            scores.append(format_penalty if hyp is None else 1.0 + metric_score(hyp, reference, metric))
        return scores

    return mt
