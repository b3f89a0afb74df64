"""Reinforcement fine-tuning with verifiable rewards: GRPO and its variants (docs/algorithms.md §0, §23).

The package's modules are the phases of one step (`loop.rl_step` calls them in this order):

    sample.py     B prompts × G completions from a rollout source (plain sampler | Prefix-RFT hybrids |
                  multi-turn episodes), scored by the weighted reward parts (a raising part scores 0 and is
                  counted), groups filtered (rl.filter) and, with a refilling filter (DAPO dynamic), refilled
    loop.py       the advantage (rl.advantage: grpo | dr_grpo | rloo | reinforce_pp | gae | module:function),
                  post-advantage transforms (turn credit, prefix advantage, PAD selection), and the stage loop
    update.py     μ = rl.epochs passes of PPO-clip over minibatches against the sampling log-probs
    logprobs.py   the trainer's log-probs of the sampled tokens (each distinct prompt run once)
    prefix_rft.py Prefix-RFT's hybrid sampling and prefix advantage
    schedule.py   what changes over the run: prefiltered pool, curriculum phase, tuned temperature
    records.py    the typed records between the phases (StepBatch, Advantaged, TrainerState) and the
                  settings built once from `RLConfig` (Algorithms, UpdateSettings)

The algorithms themselves are pure functions in coldstart.algorithms, in registries whose entries say what
they need (values, whole-batch normalisation, refill, ...): the loop asks the entry, never the name.

Deviations from the papers, on purpose:
- The old log-probs are the sampler's (the distribution actually sampled from). With top-p/top-k they differ
  from the trainer's temperature-scaled softmax; the mean gap is logged as `logprob_gap`.
- Rows whose advantage is exactly 0 on every token skip the forward/backward pass when no KL, entropy or
  value term needs them; the loss is normalised over the whole batch so the gradient is unchanged
  (`rows/skipped`).
- `gae` (PPO) puts a linear value head on the policy's last hidden state (a shared trunk, as ReFT does)
  instead of a separate critic model; it is saved as `value_head` in the trainer state.

    coldstart rl recipes/demo.yaml --out runs/demo          (starts from runs/demo/sft when it exists)
"""

from .logprobs import sequence_logprobs
from .loop import RLRun, build_run, rl_step, train
from .records import Advantaged, Algorithms, StepBatch, TrainerState, UpdateSettings
from .sample import prompt_batch, prompt_seed, score

__all__ = ["Advantaged", "Algorithms", "RLRun", "StepBatch", "TrainerState", "UpdateSettings", "build_run",
           "prompt_batch", "prompt_seed", "rl_step", "score", "sequence_logprobs", "train"]
