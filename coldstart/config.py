"""The recipe: one YAML file, validated by pydantic, with dotted overrides from the command line.

A recipe has sections `run`, `model`, `task`, `prompt`, `sft`, `rl`, `eval` (and `dpo`, ...). Every section is strict:
an unknown key or a value of the wrong type is an error that names the key, what was expected and the file.
An unknown key that is a TRL config name says which recipe key it is (`TRL_NAMES`); another one gets the
closest key of its section, if any. The resolved recipe is written as `config.yaml` into the run folder and every
stage folder.

    recipe = load_recipe("recipes/demo.yaml", ["rl.steps=20", "sft.traces=0.5"])
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class StageEntry:
    """A training stage: where its `train(recipe, out, resume=False) -> stage folder` lives, and what it can do."""

    train: str  # module:function
    fsdp: bool  # runs with FSDP-sharded weights (recipes/accelerate/fsdp.yaml); every stage runs under DDP


# The stage registry: every stage that trains a model, in pipeline order (`eval` evaluates them). The CLI, the
# stage start, the FSDP refusals and the report read it; a new stage is one entry here and its module.
TRAINING_STAGES: dict[str, StageEntry] = {
    "sft": StageEntry("coldstart.sft:train", fsdp=True),
    "rsft": StageEntry("coldstart.rsft:train", fsdp=False),
    "dpo": StageEntry("coldstart.dpo:train", fsdp=False),
    "rl": StageEntry("coldstart.rl:train", fsdp=True),
}


class RunConfig(Section):
    seed: int = 0  # seed of python, torch, the data order and the sampler
    # what `coldstart run` does, in order; each training stage starts from the last finished one before it
    stages: list[Literal["sft", "rsft", "dpo", "rl", "eval"]] = Field(default_factory=lambda: ["sft", "rl", "eval"])
    out: str = "runs/default"  # overridden by --out
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # torch.compile each decoder block and the SFT loss for the training passes (sampling stays eager); for
    # GPUs: the first steps and new shapes pay a compile (seconds); SFT step 1.5x faster on an H200 (0.5B)
    compile: bool = False
    quiet: bool = False  # no progress bars
    max_nonfinite_steps: int = 5  # a NaN/inf loss or gradient skips the step; this many in a row stop the run
    log_to: list[Literal["tensorboard", "wandb"]] = []  # metric sinks besides metrics.jsonl: DIR/<stage>/tb/, W&B


class LoraConfig(Section):
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: list[str] | str = "all-linear"  # peft's shorthand, or module names like [q_proj, v_proj]


class ModelConfig(Section):
    path: str | None = None  # a local Hugging Face folder or a hub id; None with init: tiny
    # pretrained: load model.path; tiny: build a small model from a transformers config
    init: Literal["pretrained", "tiny"] = "pretrained"
    arch: Literal["qwen2", "llama"] = "qwen2"  # tiny models only
    hidden_size: int = 128  # tiny models: hidden width
    layers: int = 3  # tiny models: number of decoder layers
    heads: int = 4  # tiny models: attention heads
    kv_heads: int | None = None  # tiny models: key/value heads (GQA); None: as many as heads
    intermediate_size: int | None = None  # tiny models: MLP width; None: 4 × hidden_size
    max_len: int = 512  # longest prompt + completion, in tokens
    lora: LoraConfig | None = None  # train LoRA adapters (peft) instead of full weights, in sft and rl
    chat_template: str | None = None  # a Jinja chat template (a file, or the template text) instead of the tokenizer's


class TaskConfig(Section):
    name: str = "arithmetic"  # arithmetic | countdown | file | gym:<reasoning-gym dataset>
    # task-specific options (see coldstart/tasks/); unknown ones are an error naming them
    options: dict[str, Any] = Field(default_factory=dict)
    train_size: int | None = 5000  # size of the training pool drawn from the task (None: all of a file)
    val_size: int = 100  # size of the validation split (early stopping, eval during RL)
    test_size: int = 200  # size of the held-out test split that `coldstart eval` scores


class PromptConfig(Section):
    # what the model writes before <answer>: think | plan | code | knowledge | examples
    strategy: Literal["think", "plan", "code", "knowledge", "examples"] = "think"
    system: bool = True  # include the strategy's system prompt (tiny character models usually go without)
    system_prompt: str | None = None  # a system prompt of your own instead of the strategy's
    chat_template_kwargs: dict[str, Any] = {}  # passed to apply_chat_template, e.g. {enable_thinking: false}


class SFTConfig(Section):
    init: str = "base"  # base: the recipe's model; sft: DIR/sft (continue training it); or a model folder
    traces: int | float = 1.0  # how many traces: a count, or a fraction (0, 1] of the training pool
    epochs: float = 3.0  # passes over the traces (ignored when max_steps is set)
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # sequences per optimizer step
    pack: bool = True  # pack a batch into one row (positions reset per sequence) when that costs less than padding
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.05  # fraction of steps
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # learning-rate decay after warmup
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr
    grad_clip: float = 1.0  # clip the global gradient norm to this
    eval_every: int = 50  # validation loss + greedy accuracy on the val split; 0 disables
    patience: int = 0  # early stop after this many evaluations without a better val accuracy; 0 disables
    keep_best: bool = True  # export the checkpoint with the best val accuracy (else the last step)
    save_every: int = 100  # checkpoint for --resume; 0: only at the end
    max_new_tokens: int = 128  # completion budget of the greedy val accuracy
    max_seconds: float | None = None  # wall-clock cap (used by the demo's equal-compute arm)


class RewardSpec(Section):
    name: str  # accuracy | exact | format | task | overlong | package.module:function
    weight: float = 1.0  # weight of this part in the sum
    # keyword options of the reward factory (e.g. {tag: plan} for format)
    options: dict[str, Any] = Field(default_factory=dict)


class PadConfig(Section):
    """PAD (docs/algorithms.md §20); the paper gives no thresholds or ρ: these defaults are our reading."""

    t_low: float = 1e-6  # keep sequences with t_low ≤ |advantage| ≤ t_high (t_low > 0 drops zero-advantage rows)
    t_high: float = 1e9  # upper bound of the |advantage| band (see t_low)
    rho: float = 0.5  # keep k' = min(ρ·N, |E|) sequences
    tau_start: float = 1.0  # softmax temperature of the priority, annealed linearly over the run
    tau_end: float = 0.3  # priority temperature at the end of the run (annealed from tau_start)


class PrefilterConfig(Section):
    """Pass-rate prompt filter before RL (DUPO's drop-all-correct §1, RIF-RFT §7, Fleming-R1 hard mining §13)."""

    k: int = 8  # rollouts per prompt to estimate its pass rate with the starting policy
    min_pass: float = 0.0  # keep prompts with min_pass ≤ pass rate ≤ max_pass
    max_pass: float = 1.0  # e.g. 0.99 drops the all-correct prompts (DUPO)
    max_prompts: int | None = None  # probe only the first N prompts of the pool (None: all)
    temperature: float = 1.0  # sampling temperature of the pass-rate probe


class PrefixRFTConfig(Section):
    """Prefix-RFT (docs/algorithms.md §11, coldstart.algorithms.prefix): hybrid rollouts from demonstration prefixes."""

    per_group: int = Field(1, ge=1)  # hybrid rollouts per group (they replace the group's last on-policy ones)
    start: float = Field(0.95, ge=0.0, le=1.0)  # prefix share of the demonstration's tokens at the first step
    end: float = Field(0.05, ge=0.0, le=1.0)  # prefix share at the last step
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # how the share moves from start to end
    eps_low: float = Field(0.2, ge=0.0)  # off-policy clip range of the prefix tokens (paper's value unconfirmed)
    eps_high: float = Field(0.2, ge=0.0)  # upper off-policy clip range of the prefix tokens
    entropy_top: float = Field(0.2, ge=0.0, le=1.0)  # share of the batch's prefix tokens (highest entropy) trained


class CurriculumConfig(Section):
    """Phased curriculum + retrospective sampling (QwenLong-L1, docs/algorithms.md §18; coldstart.curriculum)."""

    by: Literal["length", "difficulty"] = "length"  # sort key: prompt + solution characters, or float(meta[key])
    key: str = "difficulty"  # the meta field read by `by: difficulty` (e.g. difficulty, or a task's digits)
    phases: list[float | None] | int = 2  # upper bounds of the key per phase (null: none), or a count of equal phases
    steps: list[float] | None = None  # each phase's share of rl.steps (None: equal shares)
    retrospective: float = Field(0.25, ge=0.0)  # hard examples carried into a phase, as a share of its own pool
    hard_below: float = 1.0  # carry only examples whose mean reward in earlier phases is below this


class RSFTConfig(Section):
    """Rejection-sampling fine-tuning / expert iteration (coldstart.rsft; WebSailor §1, START Hint-RFT §9)."""

    init: str = "auto"  # auto: the last finished stage before rsft in run.stages, else the base; or sft | a folder
    rounds: int = 2  # expert-iteration rounds: round r samples from the model after round r-1
    prompts_per_round: int = 64  # training prompts sampled per round (a seeded stream over the pool)
    samples_per_prompt: int = 8  # k completions per prompt
    temperature: float = 1.0  # sampling temperature of the k completions
    max_new_tokens: int = 128  # per completion (a hinted one in total: prefix, hint and continuation)
    keep_per_prompt: int = 4  # at most this many distinct correct completions kept per prompt
    min_reward: float = 1.0  # keep a completion whose total reward is >= this
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="task")])  # what "correct" means
    lr: float = 3e-4  # AdamW, constant, one optimizer across all rounds
    weight_decay: float = 0.0  # AdamW weight decay
    epochs: float = 2.0  # SFT passes over each round's kept completions
    batch_size: int = 16  # sequences per optimizer step
    grad_clip: float = 1.0  # max gradient norm
    pack: bool = True  # pack batches when that costs less than padding, as in sft
    hints: bool = False  # Hint-RFT (START §9): continue each sample after a library hint; keep hinted ones
    hint_library: list[str] | None = None  # None: coldstart.hints.DEFAULT_HINTS
    keep_best: bool = True  # export the round with the best val accuracy (the rounds are always evaluated)


class RLConfig(Section):
    init: str = "auto"  # auto: DIR/sft when it exists, else model; "model": the base model; or a folder
    steps: int = 50  # RL steps (one batch of prompts_per_step × group_size rollouts each)
    prompts_per_step: int = 32  # B: prompts per step
    group_size: int = 8  # G: completions sampled per prompt (the group the advantage is normalised over)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.0  # fraction of steps of linear warmup
    schedule: Literal["cosine", "linear", "constant"] = "constant"  # learning-rate decay after warmup
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr
    grad_clip: float = 1.0  # clip the global gradient norm to this
    temperature: float = 1.0  # sampling temperature (the trainer scales logits by it too)
    target_entropy: float | None = None  # AceReason: pick the temperature whose sampled entropy is nearest (0.3)
    # temperatures tried by target_entropy
    temperature_candidates: list[float] = Field(default_factory=lambda: [0.6, 0.7, 0.85, 1.0, 1.2])
    temperature_retune_every: int = 0  # re-tune every N steps (0: once, at the start)
    probe_prompts: int = 32  # prompts sampled at each candidate temperature
    top_p: float = 1.0  # nucleus sampling; 1 disables
    top_k: int = 0  # top-k sampling; 0 disables
    max_new_tokens: int = 128  # completion budget per rollout; longer ones are truncated
    stop: list[str] = Field(default_factory=list)  # strings that end a completion
    sampler: str = "torch"  # torch | hf
    # weighted reward functions summed into one score per completion
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="task")])
    # advantage estimator: grpo | dr_grpo | rloo | reinforce_pp | gae (coldstart/algorithms/advantages.py), or
    # your own as package.module:name (a function of that signature, or a registry.Estimator)
    advantage: str = "grpo"
    # how token losses are averaged (DAPO token_mean, GRPO seq_mean_token_mean, Dr. GRPO constant)
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "constant"] = "token_mean"
    eps_low: float = 0.2  # PPO clip range below 1 (ratio ≥ 1 − eps_low)
    eps_high: float = 0.28  # PPO clip range above 1 (DAPO clip-higher: ratio ≤ 1 + eps_high)
    dual_clip: float | None = None  # dual-clip constant c for negative advantages (None: off)
    kl_coef: float = 0.0  # β of the KL penalty to the starting model (0: no reference model is loaded)
    # KL estimator: k1 (log ratio), k2, k3 (Schulman's unbiased, non-negative)
    kl_type: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False  # ReFT / REINFORCE++ style: −β·KL per token in the reward instead of the loss
    entropy_coef: float = 0.0  # entropy bonus weight
    epochs: int = 1  # μ: update passes over each rollout batch
    minibatch_size: int | None = None  # rollouts per optimizer step; None: the whole batch
    micro_batch_size: int = 64  # rollouts per forward/backward (gradient accumulation)
    # none | dynamic (DAPO: resample new prompts for flat groups) | dupo (WebSailor: duplicate informative
    # groups of the batch instead) | pad (ReVisual-R1: |advantage| band + prioritised subsampling, see rl.pad),
    # or your own as package.module:name (a group filter function, or a registry.Filter)
    filter: str = "none"
    max_resample: int = 3  # dynamic filter: extra sampling rounds to refill the batch
    pad: PadConfig = Field(default_factory=lambda: PadConfig())  # settings of rl.filter: pad
    prefilter: PrefilterConfig | None = None  # drop training prompts outside a pass-rate window before RL
    overlong_filter: bool = False  # mask truncated completions out of the loss (DAPO)
    prefix_rft: PrefixRFTConfig | None = None  # Prefix-RFT hybrid rollouts (set: on; e.g. rl.prefix_rft={})
    curriculum: CurriculumConfig | None = None  # phased curriculum + retrospective sampling (QwenLong-L1)
    gamma: float = 1.0  # discount (gae, reinforce_pp)
    lam: float = 0.95  # GAE λ
    vf_coef: float = 0.5  # gae only: value-head loss weight
    eval_every: int = 0  # evaluate on the val split every N steps (val/... metrics); 0: never during RL
    eval_samples: int = 0  # k samples per val prompt for val/pass@k, maj@k, mean@k (0: greedy metrics only)
    keep_best: bool = True  # export the checkpoint with the best val accuracy (when eval_every > 0)
    save_every: int = 10  # checkpoint for --resume every N steps
    max_seconds: float | None = None  # wall-clock cap
    # multi-turn RL (coldstart.multiturn): an environment answers each model turn; None = single-turn
    env: str | None = None  # guess (number guessing, rule-based user) | tool (calculator in <tool>..</tool>)
    env_options: dict[str, Any] = Field(default_factory=dict)  # passed to the environment's builder
    max_turns: int = 8  # model turns per trajectory (the environment may end it sooner)
    turn_credit: Literal["equalized", "r2g", "em"] = "equalized"  # UserRL: how the advantage spreads over turns
    trajectory_score: Literal["sum", "r2g"] = "sum"  # UserRL: per-turn rewards → the score the group compares
    turn_gamma: float = 0.8  # γ of the r2g score and r2g credit

    @field_validator("advantage", "filter")
    @classmethod
    def _registry_name(cls, name: str, info) -> str:
        """rl.advantage and rl.filter name a registry entry (the registries are the one list of names) or user
        code as package.module:name (imported when the stage starts)."""
        from .algorithms import ADVANTAGES, FILTERS, check_name

        return check_name(ADVANTAGES if info.field_name == "advantage" else FILTERS, name, "")


class DPOConfig(Section):
    """Preference optimisation (coldstart.dpo): DPO or SimPO on (prompt, chosen, rejected) pairs."""

    init: str = "auto"  # auto: the last finished stage before dpo in run.stages (else the base model); or a folder
    loss: Literal["dpo", "simpo"] = "dpo"  # dpo: sigmoid loss against the frozen start model; simpo: no reference
    beta: float = 0.1  # DPO: scale of the log-ratio; SimPO: scale of the length-normalised log-prob (≈2)
    gamma: float = 0.5  # SimPO only: the target reward margin
    # where pairs come from: rollouts (a verified-correct vs a wrong sample of the start model, same prompt) |
    # task (the task's gold trace vs a wrong sample) | a JSONL file of {prompt, chosen, rejected}
    pairs: str = "rollouts"  # rollouts | task | path/to/pairs.jsonl
    max_pairs: int | None = None  # cap on the pairs used (None: all that were built / read)
    samples: int = 8  # rollouts and task pairs: samples per training prompt from the start model
    temperature: float = 1.0  # sampling temperature of those samples
    max_prompts: int | None = None  # rollouts and task pairs: prompts of the training pool to sample (None: all)
    # Balancing the Budget (docs/algorithms.md §10): a total of `budget` examples, sft_fraction of them SFT traces
    # (sets sft.traces; 0 drops sft from run.stages), the rest DPO pairs (sets max_pairs), from disjoint prompts
    budget: int | None = None  # total examples (SFT traces + pairs); None: no split
    sft_fraction: float = 0.1  # share of the budget spent on SFT traces
    epochs: float = 2.0  # passes over the pairs
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # pairs per optimizer step
    lr: float = 1e-4  # AdamW learning rate (tiny models: 5e-5 kept DPO stable, 2e-4 did not)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.05  # fraction of steps
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # learning-rate schedule after warmup
    min_lr_ratio: float = 0.1  # final lr / lr for cosine and linear
    grad_clip: float = 1.0  # max gradient norm
    max_new_tokens: int = 128  # length of the sampled completions (pairs from rollouts / task)
    eval_every: int = 0  # greedy accuracy on the val split every N steps (keeps the best); 0 disables
    keep_best: bool = True  # export the checkpoint with the best val accuracy (else the last step)
    save_every: int = 50  # checkpoint for --resume; 0: only at the end


class EvalConfig(Section):
    samples: int = 4  # k samples per prompt for pass@k / maj@k / mean@k (0: greedy only)
    temperature: float = 1.0  # sampling temperature of the k samples
    max_new_tokens: int = 128  # completion budget at evaluation
    batch_size: int = 128  # rollouts per sampling call


class Recipe(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rsft: RSFTConfig = Field(default_factory=RSFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    _folder: str | None = PrivateAttr(default=None)  # the recipe file's folder (load_recipe)

    def __eq__(self, other: object) -> bool:  # the same settings, wherever the file was read from
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    @property
    def folders(self) -> list[str]:
        """Where user code named in the recipe (`module:function` rewards) is looked up first: the recipe's
        folder; the working directory comes next (coldstart.rewards.basic.import_reward)."""
        return [self._folder] if self._folder else []

    @model_validator(mode="after")
    def _split_budget(self) -> Recipe:
        """`dpo.budget`: give round(sft_fraction × budget) examples to SFT traces, the rest to DPO pairs."""
        d = self.dpo
        if d.budget is None:
            return self
        if d.budget < 1 or not 0.0 <= d.sft_fraction <= 1.0:
            raise ValueError(f"dpo.budget must be >= 1 and dpo.sft_fraction in [0, 1], got {d.budget}, "
                             f"{d.sft_fraction}")
        n_sft = round(d.sft_fraction * d.budget)
        if n_sft:
            self.sft.traces = n_sft
        elif "sft" in self.run.stages:  # f = 0: preference data only, DPO straight on the base model
            self.run.stages = [s for s in self.run.stages if s != "sft"]
        d.max_pairs = d.budget - n_sft
        return self


# TRL 1.16 config name (GRPOConfig, SFTConfig, DPOConfig, TrainingArguments) → (the recipe keys that hold it,
# comma-separated, "" when none; how they differ). An unknown recipe key with such a name points at its key;
# tests/test_config.py checks that every key exists, README's "Coming from TRL" table is generated from it.
TRL_NAMES: dict[str, tuple[str, str]] = {
    # GRPOConfig
    "num_generations": ("rl.group_size", "G completions per prompt, 8 in both; TRL's batch sizes count "
                        "completions, rl.prompts_per_step counts prompts"),
    "beta": ("rl.kl_coef, dpo.beta", "GRPO: the KL coefficient, 0.0 in TRL and here, so no reference model "
             "is loaded; DPO: the log-ratio scale, 0.1 in both"),
    "epsilon": ("rl.eps_low", "lower PPO clip range, 0.2 in both; TRL's also sets the upper one unless "
                "epsilon_high is given, ours does not (rl.eps_high is 0.28)"),
    "epsilon_high": ("rl.eps_high", "TRL's None means epsilon (a symmetric 0.2 clip); ours defaults to 0.28 "
                     "(DAPO clip-higher): rl.eps_high=0.2 for TRL's clip"),
    "delta": ("rl.dual_clip", "both cap the ratio of negative-advantage tokens (INTELLECT-2, dual-clip PPO); "
              "None: off in both"),
    "max_completion_length": ("rl.max_new_tokens", "TRL 512, ours 128; rsft, dpo and eval have their own "
                              "max_new_tokens"),
    "num_iterations": ("rl.epochs", "μ, update passes over each rollout batch; 1 in both"),
    "steps_per_generation": ("rl.minibatch_size", "TRL counts optimizer steps per rollout batch, ours rollouts "
                             "per optimizer step (None: the whole batch, one step per epoch)"),
    "mask_truncated_completions": ("rl.overlong_filter", "masks truncated completions out of the loss (DAPO); "
                                   "off in both"),
    "temperature": ("rl.temperature", "1.0 in both; rsft, dpo and eval have their own"),
    "top_p": ("rl.top_p", "1.0 (off) in both"),
    "top_k": ("rl.top_k", "0 (off) in both"),
    "entropy_coef": ("rl.entropy_coef", "0.0 in both"),
    "scale_rewards": ("rl.advantage", "group → grpo (divides by the group std; both defaults), none → dr_grpo; "
                      "batch has no estimator here"),
    "loss_type": ("rl.loss_agg, dpo.loss", "GRPO's loss_type is the token-loss aggregation: dapo → token_mean "
                  "(both defaults), grpo → seq_mean_token_mean, dr_grpo → constant; cispo, sapo, luspo, vespo, "
                  "bnpo have none. Our rl.advantage: dr_grpo is the estimator (TRL's scale_rewards: none). DPO's "
                  "sigmoid is dpo.loss: dpo"),
    "reward_weights": ("rl.rewards[].weight", "TRL lists the weights beside reward_funcs, ours sit in each "
                       "reward of rl.rewards"),
    "num_generations_eval": ("rl.eval_samples, eval.samples", "k samples per val / test prompt for pass@k; 0: "
                             "greedy only"),
    "chat_template_kwargs": ("prompt.chat_template_kwargs", "keyword arguments of the tokenizer's "
                             "apply_chat_template, e.g. {enable_thinking: false}"),
    "use_vllm": ("", "not yet, see issue 17; rl.sampler is torch or hf"),
    "reward_funcs": ("rl.rewards", "a GRPOTrainer argument in TRL: each function as {name: my_module:my_reward}, "
                     "called exactly as TRL calls it"),
    # SFTConfig, DPOConfig
    "chat_template_path": ("model.chat_template", "a .jinja file, a tokenizer_config.json or the template text; "
                           "used by every stage, not only SFT"),
    "max_length": ("model.max_len", "longest prompt + completion in tokens, for every stage; TRL 1024, ours 512"),
    "packing": ("sft.pack, rsft.pack", "TRL False, ours True, and a batch is packed only when that costs less "
                "than padding"),
    "completion_only_loss": ("", "always: sft and rsft train on completion tokens only"),
    # TrainingArguments
    "learning_rate": ("sft.lr, rsft.lr, dpo.lr, rl.lr", "TRL: SFT 2e-5, DPO and GRPO 1e-6; ours: sft 1e-3, "
                      "rsft 3e-4, dpo 1e-4, rl 3e-4"),
    "per_device_train_batch_size": ("rl.prompts_per_step, sft.batch_size, rsft.batch_size, dpo.batch_size",
                                    "TRL counts completions per device per micro-step; rl.prompts_per_step "
                                    "counts prompts per RL step over all processes (× rl.group_size "
                                    "completions); the others sequences or pairs per optimizer step"),
    "gradient_accumulation_steps": ("rl.micro_batch_size", "no step count: a batch is split into micro-batches "
                                    "of rl.micro_batch_size rollouts per forward/backward"),
    "max_steps": ("rl.steps, sft.max_steps, dpo.max_steps", "rl.steps counts RL steps (each one batch of "
                  "prompts_per_step × group_size rollouts); sft and dpo: overrides epochs when set"),
    "num_train_epochs": ("sft.epochs, rsft.epochs, dpo.epochs", "passes over the data (rsft: each round's); "
                         "rl.epochs is TRL's num_iterations"),
    "warmup_ratio": ("sft.warmup, rl.warmup, dpo.warmup", "a fraction of the steps; rsft has no warmup"),
    "warmup_steps": ("sft.warmup, rl.warmup, dpo.warmup", "ours is always a fraction of the steps, never a "
                     "count"),
    "lr_scheduler_type": ("sft.schedule, rl.schedule, dpo.schedule", "cosine | linear | constant, decaying to "
                          "min_lr_ratio × lr (0.1), not 0; TRL linear, ours cosine (rl: constant); rsft is "
                          "constant"),
    "max_grad_norm": ("sft.grad_clip, rsft.grad_clip, dpo.grad_clip, rl.grad_clip", "1.0 in both"),
    "weight_decay": ("sft.weight_decay, rsft.weight_decay, dpo.weight_decay, rl.weight_decay", "0.0 in both"),
    "save_steps": ("sft.save_every, rl.save_every, dpo.save_every", "checkpoints for --resume; TRL 500, ours "
                   "100 / 10 / 50"),
    "eval_steps": ("sft.eval_every, rl.eval_every, dpo.eval_every", "0 disables (there is no eval_strategy); "
                   "rsft evaluates every round"),
    "per_device_eval_batch_size": ("eval.batch_size", "rollouts per sampling call of coldstart eval"),
    "logging_steps": ("", "every optimizer step is a row of metrics.jsonl and of the run.log_to sinks"),
    "seed": ("run.seed", "one seed for python, torch, the data order and the sampler; TRL 42, ours 0"),
    "output_dir": ("run.out", "overridden by --out; each stage writes a folder of its own in it"),
    "report_to": ("run.log_to", "a list of tensorboard | wandb; metrics.jsonl is always written"),
    "bf16": ("run.dtype", "run.dtype: bfloat16 holds the weights themselves in bf16 (not mixed precision); "
             "TRL's configs default to bf16, ours to float32"),
    "gradient_checkpointing": ("", "not yet; TRL's configs turn it on by default"),
}


def nested_section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model inside an annotation (`X`, `X | None`, `list[X]`), and whether it is a list item."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    for arg in args:
        model, _ = nested_section(arg)
        if model is not None:
            return model, origin is list
    return None, False


def _unknown_key_hint(loc: tuple) -> str:
    """What the unknown key at `loc` may have meant: the recipe key of a TRL name, else a close key of its section."""
    leaf, section = str(loc[-1]), ".".join(str(p) for p in loc[:-1])
    if leaf in TRL_NAMES:
        keys, note = TRL_NAMES[leaf]
        if not keys:
            return f"; TRL's {leaf} has no recipe key ({note})"
        keys = keys.split(", ")
        here = [k for k in keys if k.rsplit(".", 1)[0] == section]  # the key of the section it was written in
        return f"; TRL's {leaf} is {' or '.join(here or keys)} ({note})"
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if not isinstance(part, int):  # list items (rl.rewards.0) are the list's model
            field = model.model_fields.get(part) if model else None
            model = nested_section(field.annotation)[0] if field else None
    close = difflib.get_close_matches(leaf, list(model.model_fields), n=1) if model else []
    if close:
        return f"; did you mean {section + '.' if section else ''}{close[0]}?"
    elsewhere = [f"{name}.{leaf}" for name, f in Recipe.model_fields.items()  # the right key, another section
                 if leaf in getattr(nested_section(f.annotation)[0], "model_fields", {})]
    return f"; did you mean {' or '.join(elsewhere)}?" if elsewhere else ""


class ConfigError(ValueError):
    """A recipe that does not validate; the message names the file, the key and what was expected."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_unknown_key_hint(e['loc'])}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_override(data: dict, dotted: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 0.5, true, [1,2] work)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r}: expected key=value, e.g. rl.steps=20")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {dotted!r}: empty key part in {key.strip()!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {dotted!r}: value is not valid YAML: {e}") from None
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p} is not a section")
    node[parts[-1]] = value


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (None: all defaults), apply dotted overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{source}: recipe file not found")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a recipe is a mapping of sections, got {type(data).__name__}")
    for o in overrides:
        apply_override(data, o)
    if overrides:
        source += " (with overrides " + " ".join(overrides) + ")"
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    if path is not None:
        recipe._folder = str(Path(path).resolve().parent)
    return recipe


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (every default spelled out)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
