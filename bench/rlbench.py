"""Shared pieces of the coldstart-vs-TRL benchmarks (bench/grpo_vs_trl.py, bench/time_to_target.py).

Both arms start from one saved Hugging Face folder, see the same arithmetic prompts (the chat template of
our character tokenizer, `think` strategy, no system prompt), the same reward function, group size, batch,
lengths, learning rate, AdamW betas, clipping and no KL:

    coldstart   `coldstart.rl.rl_step` (the per-step machinery of `coldstart rl`) with its TorchSampler
    TRL         `trl.GRPOTrainer.train()` as users run it: use_vllm=False, beta=0, loss_type="dapo", μ=1,
                fp32 (bf16=False), logging/saving/eval off

The two are interleaved in one process, A B A B: a TRL callback runs one coldstart step after every TRL
optimizer step (`Interleave`), so both see the same machine load. A TRL step is timed from the end of the
previous coldstart step to TRL's `on_step_end` (its data loading, generation, reward, loss, backward,
clipping, optimizer and scheduler, and its logging bookkeeping), a coldstart step around `rl_step`.
TRL's generation is timed by wrapping the trainer's `_generate_single_turn` (padding, `model.generate`,
eos masking); coldstart's by its own `time/generate_s`. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from coldstart.config import load_recipe  # noqa: E402
from coldstart.evaluate import evaluate_greedy  # noqa: E402
from coldstart.infra.runtime import build_optimizer  # noqa: E402
from coldstart.models import (  # noqa: E402
    build_char_tokenizer,
    build_tiny_model,
    load_model,
    load_tokenizer,
)
from coldstart.prompts import build_messages  # noqa: E402
from coldstart.rewards import CombinedReward, RewardPart  # noqa: E402
from coldstart.rl import TrainerState, build_run, rl_step  # noqa: E402
from coldstart.rollout import build_sampler  # noqa: E402
from coldstart.tasks import build_task  # noqa: E402
from coldstart.types import Example  # noqa: E402

# name → build_tiny_model keyword arguments
SIZES: dict[str, dict[str, int]] = {
    "0.5M": {"hidden_size": 128, "intermediate_size": 512, "layers": 2, "heads": 4},
    "20M": {"hidden_size": 512, "intermediate_size": 2048, "layers": 6, "heads": 8},
}
TASK_OPTIONS = {"digits": 3, "min_digits": 3, "ops": "+"}  # the demo task


def make_model_folder(folder: Path, size: str, seed: int = 0) -> tuple[Path, int]:
    """Build a tiny Qwen2 of `size` (a SIZES key) with our char tokenizer into `folder`; returns the folder
    and the parameter count. An existing folder is reused."""
    tokenizer = build_char_tokenizer()
    if not (folder / "config.json").is_file():
        model = build_tiny_model(len(tokenizer), max_len=512, pad_id=tokenizer.pad_token_id,
                                 bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=seed,
                                 **SIZES[size])
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder, sum(p.numel() for p in load_model(folder).parameters())


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes conversational completions as [{"role", "content"}] lists."""
    if isinstance(completion, list):
        return "".join(m["content"] for m in completion)
    return completion


_TASK = build_task("arithmetic", TASK_OPTIONS)


def task_reward(prompts: list, completions: list, answer: list[str], **_: Any) -> list[float]:
    """1.0 where the completion's answer is the gold sum (the task's own verifier), else 0.0."""
    return [_TASK.verify(Example("", a), completion_text(c)) for c, a in zip(completions, answer)]


def dense_reward(prompts: list, completions: list, answer: list[str], **_: Any) -> list[float]:
    """The task reward plus 0.5 × the fraction of digit characters: varies inside every group even for an
    untrained model, so every row of a throughput step carries a gradient in both libraries (coldstart
    would otherwise skip the zero-advantage rows that TRL still trains on)."""
    texts = [completion_text(c) for c in completions]
    return [t + 0.5 * sum(ch.isdigit() for ch in s) / max(1, len(s))
            for t, s in zip(task_reward(prompts, texts, answer), texts)]


REWARDS: dict[str, Callable[..., list[float]]] = {"task": task_reward, "dense": dense_reward}


@dataclass
class Setup:
    """What both arms share: model folder, batch shape, lengths, optimiser settings, reward, data."""

    folder: Path
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 32
    lr: float = 3e-4
    reward: str = "dense"
    filter: str = "none"  # coldstart only: TRL has no group filter
    seed: int = 0
    train_size: int = 4000
    val_size: int = 200
    micro_batch_size: int | None = None  # coldstart's rows per forward/backward; None: the whole batch, as TRL
    overrides: tuple[str, ...] = ()  # coldstart only: more recipe overrides (e.g. rl.max_resample=1)

    def recipe(self):
        """The coldstart recipe of this setup."""
        return load_recipe(None, [
            f"run.seed={self.seed}", "run.threads=2", "prompt.system=false", "prompt.strategy=think",
            f"rl.prompts_per_step={self.prompts_per_step}", f"rl.group_size={self.group_size}",
            f"rl.max_new_tokens={self.max_new_tokens}", f"rl.lr={self.lr}", "rl.kl_coef=0", "rl.epochs=1",
            "rl.loss_agg=token_mean", "rl.advantage=grpo", f"rl.filter={self.filter}", "rl.eps_low=0.2",
            "rl.eps_high=0.28", "rl.grad_clip=1.0",
            # default: one forward/backward over the whole batch, as TRL's per_device_train_batch_size = B×G
            f"rl.micro_batch_size={self.micro_batch_size or self.prompts_per_step * self.group_size}",
            *self.overrides])

    def pool(self) -> list[Example]:
        """The training prompts (the arithmetic task's train split)."""
        return _TASK.examples("train", self.train_size, self.seed)

    def val(self) -> list[Example]:
        """The held-out prompts for greedy accuracy."""
        return _TASK.examples("val", self.val_size, self.seed)


@dataclass
class ColdstartArm:
    """coldstart's RL step on its own copy of the model; `step()` returns rl_step's metrics row."""

    setup: Setup
    policy: Any = None
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        s = self.setup
        self.recipe = s.recipe()
        self.tokenizer = load_tokenizer(s.folder)
        self.policy = load_model(s.folder).train()
        self.opt = build_optimizer(self.policy.parameters(), s.lr, 0.0)
        self.sampler = build_sampler("torch", self.tokenizer)
        self.reward_fn = CombinedReward([RewardPart(s.reward, 1.0, REWARDS[s.reward])])
        self.pool = s.pool()
        self.state = TrainerState()
        self.run = build_run(self.recipe, self.policy, self.tokenizer, _TASK, self.opt, reward_fn=self.reward_fn,
                             sampler=self.sampler, generator=torch.Generator().manual_seed(s.seed))
        self.prompt_len = sum(map(len, self.run.prompt_ids(self.pool[:64]))) / 64

    def step(self) -> dict:
        """One RL step; the row gets `time/step_s` (the whole step) and `tokens/train` (real tokens trained)."""
        start = time.perf_counter()
        row = rl_step(self.run, self.pool, self.state)
        row["time/step_s"] = time.perf_counter() - start
        self.state.step += 1
        row["tokens/generated"] = row["tokens_per_s"] * row["time/generate_s"]
        # real (non-pad) prompt + completion tokens of the trained rows (completions of the first round)
        row["tokens/train"] = row.get("rows/trained", 0) * (self.prompt_len + row["length/mean"])
        self.rows.append(row)
        return row


def build_trl_trainer(setup: Setup, steps: int, out_dir: str, callbacks: list) -> Any:
    """TRL's GRPOTrainer on the same folder, data, reward and settings; fp32 on the CPU, nothing logged."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = load_tokenizer(setup.folder)
    model = load_model(setup.folder).train()
    data = Dataset.from_list([{"prompt": build_messages(ex, "think", False), "answer": ex.answer}
                              for ex in setup.pool()])
    args = GRPOConfig(
        output_dir=out_dir, max_steps=steps, seed=setup.seed, use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=setup.prompts_per_step * setup.group_size, gradient_accumulation_steps=1,
        num_generations=setup.group_size, max_completion_length=setup.max_new_tokens, steps_per_generation=1,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, beta=0.0, loss_type="dapo", num_iterations=1,
        epsilon=0.2, epsilon_high=0.28, scale_rewards="group", learning_rate=setup.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
        max_grad_norm=1.0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        gradient_checkpointing=False)  # TRL defaults to True; coldstart does not checkpoint, so off for both
    trainer = GRPOTrainer(model=model, reward_funcs=REWARDS[setup.reward], args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=callbacks)
    _time_generation(trainer)
    return trainer


def _time_generation(trainer) -> None:
    """Wrap the trainer's generation call so each step's generation seconds and tokens are recorded in
    `trainer.bench_gen` as (seconds, generated tokens incl. eos)."""
    inner = trainer._generate_single_turn
    trainer.bench_gen = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = inner(*args, **kwargs)
        trainer.bench_gen.append((time.perf_counter() - start, sum(len(c) for c in completion_ids)))
        return completion_ids, logprobs

    trainer._generate_single_turn = timed


def make_interleave(setup: Setup, other: Callable[[], None] | None, on_trl_step: Callable[[dict], bool]):
    """A TrainerCallback that times each TRL step, reports it to `on_trl_step(row)` (which returns True to
    stop TRL), then runs `other()` (one coldstart step) before TRL's next step begins."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        """Alternate TRL and coldstart steps; see make_interleave."""

        def __init__(self):
            self.mark = None
            self.trainer = None
            self.prompt_len = None

        def on_train_begin(self, args, state, control, **kwargs):
            """Start the clock of TRL's first step."""
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            """Record TRL's step, then run one coldstart step; TRL's next step is timed from here."""
            seconds = time.perf_counter() - self.mark
            gen_s, gen_tok = self.trainer.bench_gen[-1]
            if self.prompt_len is None:
                tok = self.trainer.processing_class
                ids = [tok.apply_chat_template(build_messages(ex, "think", False), add_generation_prompt=True,
                                               tokenize=True) for ex in setup.pool()[:64]]
                ids = [x["input_ids"] if isinstance(x, dict) else x for x in ids]
                self.prompt_len = sum(len(x) for x in ids) / len(ids)
            rows = setup.prompts_per_step * setup.group_size
            row = {"time/step_s": seconds, "time/generate_s": gen_s, "tokens/generated": gen_tok,
                   "time/train_s": seconds - gen_s, "tokens/train": rows * self.prompt_len + gen_tok,
                   "step": state.global_step}
            if on_trl_step(row):
                control.should_training_stop = True
            if other is not None:
                other()
            self.mark = time.perf_counter()
            return control

    return Interleave()


def greedy_accuracy(model, tokenizer, val: list[Example], max_new_tokens: int) -> float:
    """Held-out greedy accuracy with coldstart's evaluator (the same code and val set for both arms)."""
    from coldstart.config import PromptConfig

    prompt = PromptConfig(strategy="think", system=False)
    was_training = model.training
    acc = evaluate_greedy(model, tokenizer, _TASK, val, prompt, max_new_tokens, 256)["accuracy"]
    model.train(was_training)
    return acc


def scratch_dir() -> str:
    """A temporary output folder for TRL (it writes nothing with saving off, but requires one)."""
    return tempfile.mkdtemp(prefix="bench-trl-")
