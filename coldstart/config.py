"""The recipe: one YAML file, validated by pydantic, with dotted overrides from the command line.

A recipe has sections `run`, `model`, `task`, `prompt`, `sft`, `rl`, `eval`. Every section is strict:
an unknown key or a value of the wrong type is an error that names the key, what was expected and the file.
The resolved recipe is written as `config.yaml` into the run folder and every stage folder.

    recipe = load_recipe("recipes/demo.yaml", ["rl.steps=20", "sft.traces=0.5"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


TRAINING_STAGES = ("sft", "rsft", "dpo", "rl")  # every stage that trains a model; `eval` evaluates them


class RunConfig(Section):
    seed: int = 0
    # what `coldstart run` does, in order; each training stage starts from the last finished one before it
    stages: list[Literal["sft", "rsft", "dpo", "rl", "eval"]] = Field(default_factory=lambda: ["sft", "rl", "eval"])
    out: str = "runs/default"  # overridden by --out
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    quiet: bool = False  # no progress bars


class LoraConfig(Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"  # peft's shorthand, or module names like [q_proj, v_proj]


class ModelConfig(Section):
    path: str | None = None  # a local Hugging Face folder or a hub id; None with init: tiny
    init: Literal["pretrained", "tiny"] = "pretrained"
    arch: Literal["qwen2", "llama"] = "qwen2"  # tiny models only
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int | None = None
    intermediate_size: int | None = None
    max_len: int = 512  # longest prompt + completion, in tokens
    lora: LoraConfig | None = None  # train LoRA adapters (peft) instead of full weights, in sft and rl


class TaskConfig(Section):
    name: str = "arithmetic"  # arithmetic | countdown | file | gym:<reasoning-gym dataset>
    options: dict[str, Any] = Field(default_factory=dict)
    train_size: int | None = 5000  # size of the training pool drawn from the task (None: all of a file)
    val_size: int = 100
    test_size: int = 200


class PromptConfig(Section):
    strategy: Literal["think", "plan", "code", "knowledge", "examples"] = "think"
    system: bool = True  # include the strategy's system prompt (tiny character models usually go without)


class SFTConfig(Section):
    init: str = "base"  # base: the recipe's model; sft: DIR/sft (continue training it); or a model folder
    traces: int | float = 1.0  # how many traces: a count, or a fraction (0, 1] of the training pool
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # sequences per optimizer step
    pack: bool = True  # padding-free: concatenate a batch into one row with position ids reset per sequence
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.05  # fraction of steps
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50  # validation loss + greedy accuracy on the val split; 0 disables
    patience: int = 0  # early stop after this many evaluations without a better val accuracy; 0 disables
    save_every: int = 100  # checkpoint for --resume; 0: only at the end
    max_new_tokens: int = 128
    max_seconds: float | None = None  # wall-clock cap (used by the demo's equal-compute arm)


class RewardSpec(Section):
    name: str  # accuracy | exact | format | task | overlong | package.module:function
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)


class PadConfig(Section):
    """PAD (ALGORITHMS.md §20); the paper gives no thresholds or ρ: these defaults are our reading."""

    t_low: float = 1e-6  # keep sequences with t_low ≤ |advantage| ≤ t_high (t_low > 0 drops zero-advantage rows)
    t_high: float = 1e9
    rho: float = 0.5  # keep k' = min(ρ·N, |E|) sequences
    tau_start: float = 1.0  # softmax temperature of the priority, annealed linearly over the run
    tau_end: float = 0.3


class PrefilterConfig(Section):
    """Pass-rate prompt filter before RL (DUPO's drop-all-correct §1, RIF-RFT §7, Fleming-R1 hard mining §13)."""

    k: int = 8  # rollouts per prompt to estimate its pass rate with the starting policy
    min_pass: float = 0.0  # keep prompts with min_pass ≤ pass rate ≤ max_pass
    max_pass: float = 1.0  # e.g. 0.99 drops the all-correct prompts (DUPO)
    max_prompts: int | None = None  # probe only the first N prompts of the pool (None: all)
    temperature: float = 1.0


class RLConfig(Section):
    init: str = "auto"  # auto: DIR/sft when it exists, else model; "model": the base model; or a folder
    steps: int = 50
    prompts_per_step: int = 32
    group_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: float = 0.0
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    temperature: float = 1.0
    target_entropy: float | None = None  # AceReason: pick the temperature whose sampled entropy is nearest (0.3)
    temperature_candidates: list[float] = Field(default_factory=lambda: [0.6, 0.7, 0.85, 1.0, 1.2])
    temperature_retune_every: int = 0  # re-tune every N steps (0: once, at the start)
    probe_prompts: int = 32  # prompts sampled at each candidate temperature
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: list[str] = Field(default_factory=list)
    sampler: str = "torch"  # torch | hf
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="task")])
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"] = "grpo"
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "constant"] = "token_mean"
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_type: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False  # ReFT / REINFORCE++ style: −β·KL per token in the reward instead of the loss
    entropy_coef: float = 0.0
    epochs: int = 1  # μ: update passes over each rollout batch
    minibatch_size: int | None = None  # rollouts per optimizer step; None: the whole batch
    micro_batch_size: int = 64  # rollouts per forward/backward (gradient accumulation)
    # none | dynamic (DAPO: resample new prompts for flat groups) | dupo (WebSailor: duplicate informative
    # groups of the batch instead) | pad (ReVisual-R1: |advantage| band + prioritised subsampling, see rl.pad)
    filter: Literal["none", "dynamic", "dupo", "pad"] = "none"
    max_resample: int = 3  # dynamic filter: extra sampling rounds to refill the batch
    pad: PadConfig = Field(default_factory=lambda: PadConfig())
    prefilter: PrefilterConfig | None = None  # drop training prompts outside a pass-rate window before RL
    overlong_filter: bool = False  # mask truncated completions out of the loss (DAPO)
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5  # gae only: value-head loss weight
    eval_every: int = 0  # evaluate on the val split every N steps (eval/... metrics); 0: never during RL
    eval_samples: int = 0  # k samples per val prompt for eval/pass@k, maj@k, mean@k (0: greedy metrics only)
    keep_best: bool = True  # export the checkpoint with the best val accuracy (when eval_every > 0)
    save_every: int = 10
    max_seconds: float | None = None


class EvalConfig(Section):
    samples: int = 4  # k samples per prompt for pass@k / maj@k / mean@k (0: greedy only)
    temperature: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 128  # rollouts per sampling call


class Recipe(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A recipe that does not validate; the message names the file, the key and what was expected."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_override(data: dict, dotted: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 0.5, true, [1,2] work)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r}: expected key=value, e.g. rl.steps=20")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (None: all defaults), apply dotted overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{source}: recipe file not found")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a recipe is a mapping of sections, got {type(data).__name__}")
    for o in overrides:
        apply_override(data, o)
    if overrides:
        source += " (with overrides " + " ".join(overrides) + ")"
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (every default spelled out)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
