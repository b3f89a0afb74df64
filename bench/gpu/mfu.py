"""Training MFU and sampler throughput of a ~0.5B Qwen2 on one GPU, random init, nothing downloaded.

    python bench/gpu/mfu.py            (on an H100 / H200; run through bench/gpu/run.sh)
    python bench/gpu/mfu.py --tiny     (the same code path on the CPU with a tiny config, in seconds)

Model: Qwen2 from a config with Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 kv heads,
intermediate 4864, vocab 151936, tied embeddings), random init in bf16, flash-attention-2 when the
`flash_attn` package is installed, else sdpa. Inputs are random token ids (our char tokenizer cannot cover
151936 ids); a word-level tokenizer with one token per id stands in for decoding.

1. Training, `--warmup` untimed steps then `--steps` timed ones between `torch.cuda.synchronize()` calls, AdamW:
   the plain HF step and coldstart's `sft.train_step` on `--batch` × `--seq` tokens, then coldstart on
   `--batch` sequences of random lengths in [seq/8, seq] (its own layout choice, and padded / packed forced),
   then the same after `coldstart.models.compile_blocks` (what `run.compile` does). FLOPs = 3 × forward of
   each sequence alone, forward = 2 × (every Linear weight, the tied LM head included) per token + causal
   attention 4 × layers × d × (s + 1) / 2 per token at position s (QKᵀ and AV); MFU = FLOPs / s / the card's
   dense bf16 peak (from its name: H100 SXM / H200 989 TFLOP/s, H100 PCIe 756, A100 312), and against a
   measured bf16 matmul peak. Also the RL loss pass (`sequence_logprobs`), full and shared-prefix.
2. Sampling: coldstart's TorchSampler (dynamic cache) and `model.generate`, `--sample-batch` random prompts
   of `--prompt-len` tokens, `--new` new tokens, no eos, temperature 1; generated tokens per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coldstart.rollout import SamplingParams, TorchSampler  # noqa: E402

FULL = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 1000}
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock time covers them (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: dict, device: torch.device, dtype: torch.dtype, max_len: int):
    """A randomly initialised Qwen2ForCausalLM of `shape` on `device` in `dtype`; returns (model, attention)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    attn = "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    config = Qwen2Config(**shape, max_position_embeddings=max_len, tie_word_embeddings=True, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, use_cache=True, attn_implementation=attn)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model, attn


def id_tokenizer(vocab: int):
    """A word-level fast tokenizer with one token `t<i>` per id: decodes any id the model can emit."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="t0", eos_token="t2", unk_token="t0")


def linear_weights(model) -> int:
    """Elements of every Linear weight (the LM head included): forward matmul FLOPs per token / 2."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def hf_step(model, opt, batch: list) -> None:
    """The plain Hugging Face step on equal-length rows: model(labels=...).loss, backward, AdamW."""
    ids = torch.tensor([e.ids for e in batch], device=next(model.parameters()).device)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def coldstart_step(model, opt, batch: list, layout: str) -> None:
    """coldstart's SFT step, then AdamW. layout `auto` is `sft.train_step` as training runs it (packed or padded,
    whichever `pack_is_cheaper` picks; fp32 loss on label positions; gradient clipping); `pad` and `pack` force
    that layout through the same collate / loss / clipping."""
    from coldstart.infra.distributed import current
    from coldstart.sft import collate, masked_lm_loss, train_step

    device = next(model.parameters()).device
    if layout == "auto":
        loss, _, norm = train_step(model, opt, batch, True, 0, device, 1.0, current())
        if loss is None or norm is None:
            raise RuntimeError("coldstart_step: non-finite loss or gradient")
    else:
        inputs = {k: v.to(device) for k, v in collate(batch, layout == "pack", 0).items()}
        masked_lm_loss(model, inputs)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def make_batch(vocab: int, batch: int, seq: int, varied: bool, seed: int = 0) -> list:
    """`batch` Encoded sequences of random ids: all `seq` long with a 1-token prompt (every other token is a
    label, as in `hf_step`), or (varied) lengths uniform in [seq / 8, seq] with prompts of 1/8 of each."""
    from coldstart.sft import Encoded

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 8, seq + 1, (batch,), generator=gen).tolist() if varied else [seq] * batch
    return [Encoded(torch.randint(3, vocab, (n,), generator=gen).tolist(), max(1, n // 8) if varied else 1)
            for n in lengths]


def batch_flops(model, batch: list) -> float:
    """Counted FLOPs of one training step on `batch` (3 × forward of each sequence alone; causal attention)."""
    cfg, w = model.config, linear_weights(model)
    per_pair = 4 * cfg.num_hidden_layers * cfg.hidden_size
    return 3 * sum(2 * w * len(e.ids) + per_pair * len(e.ids) * (len(e.ids) + 1) / 2 for e in batch)


def time_training(model, device, batch: list, warmup: int, steps: int, variant: str) -> list[float]:
    """Seconds of each timed training step of `variant` (hf | auto | pad | pack) on `batch`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        if variant == "hf":
            hf_step(model, opt, batch)
        else:
            coldstart_step(model, opt, batch, variant)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del opt
    return times


def rl_pass_flops(model, rows: int, groups: int, prompt: int, new: int, shared: bool) -> float:
    """FLOPs of one forward + backward of the RL log-prob pass: every row's prompt and completion, or (shared)
    each distinct prompt once plus every completion attending to its prompt."""
    cfg, w = model.config, linear_weights(model)
    per_tok = 4 * cfg.num_hidden_layers * cfg.hidden_size  # attention FLOPs per (query, key) pair, forward

    def seqs(n: int, length: int) -> float:
        return n * (2 * w * length + per_tok * length * (length + 1) / 2)

    if not shared:
        return 3 * seqs(rows, prompt + new)
    tail = rows * (2 * w * new + per_tok * (new * prompt + new * (new + 1) / 2))
    return 3 * (seqs(groups, prompt) + tail)


def time_rl_pass(model, device, groups: int, size: int, prompt: int, new: int, warmup: int, steps: int,
                 shared: bool) -> list[float]:
    """Seconds of forward + backward of coldstart's `sequence_logprobs` on groups × size rows sharing
    `groups` distinct prompts (the RL loss pass), shared-prefix pass on or off."""
    from coldstart.rl.logprobs import sequence_logprobs
    from coldstart.types import Rollouts

    rows = groups * size
    prompts = torch.randint(3, model.config.vocab_size, (groups, prompt), device=device).repeat_interleave(size, 0)
    ro = Rollouts(prompt_ids=prompts, prompt_mask=torch.ones_like(prompts, dtype=torch.bool),
                  completion_ids=torch.randint(3, model.config.vocab_size, (rows, new), device=device),
                  completion_mask=torch.ones(rows, new, dtype=torch.bool, device=device),
                  logprobs=torch.zeros(rows, new, device=device),
                  truncated=torch.zeros(rows, dtype=torch.bool, device=device), texts=[""] * rows)
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        logp, _, _ = sequence_logprobs(model, ro, 1.0, shared=shared)
        (-logp.mean()).backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def matmul_peak(device, dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of n × n matmuls in `dtype` on `device`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - start))
    return best


def time_sampling(model, device, batch: int, prompt_len: int, new: int, repeats: int) -> dict[str, list[float]]:
    """Generated tokens/s per call of TorchSampler and model.generate (one warm-up call each, interleaved)."""
    tokenizer = id_tokenizer(model.config.vocab_size)
    prompts = torch.randint(3, model.config.vocab_size, (batch, prompt_len)).tolist()
    params = SamplingParams(n=1, max_new_tokens=new, temperature=1.0, eos_ids=[])  # seed None: device RNG
    sampler = TorchSampler(tokenizer)
    ids = torch.tensor(prompts, device=device)

    def ours() -> int:
        return int(sampler.sample(model, prompts, params).lengths.sum())

    def generate() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 eos_token_id=None, pad_token_id=0)
        return out[:, prompt_len:].numel()

    rates: dict[str, list[float]] = {"TorchSampler": [], "generate": []}
    for i in range(repeats + 1):
        for name, fn in (("TorchSampler", ours), ("generate", generate)):
            sync(device)
            start = time.perf_counter()
            tokens = fn()
            sync(device)
            if i:
                rates[name].append(tokens / (time.perf_counter() - start))
    return rates


def card_peak(device) -> tuple[str, float | None]:
    """The accelerator's name and its dense bf16 peak FLOP/s from the name (None when unknown)."""
    if device.type != "cuda":
        import platform

        return f"CPU {platform.processor() or platform.machine()}", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def row(name: str, value: str) -> None:
    """One table row, printed at once (a run cut short keeps what it measured)."""
    print(f"| {name} | {value} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Build the model, measure training MFU (several variants) and sampling throughput, print one table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU: a seconds-long check of this path")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--sample-batch", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rl-groups", type=int, default=4, help="distinct prompts of the RL pass (x 8 completions)")
    p.add_argument("--rl-prompt", type=int, default=512)
    p.add_argument("--rl-new", type=int, default=512)
    p.add_argument("--compile-budget", type=float, default=200.0,
                   help="skip the compiled variants when this many seconds have already passed")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.seq, args.warmup, args.steps = 2, 64, 1, 2
        args.sample_batch, args.prompt_len, args.new, args.repeats = 4, 8, 8, 1
        args.rl_groups, args.rl_prompt, args.rl_new = 2, 8, 8
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and not args.tiny:
        p.error("no CUDA device: the 0.5B measurement needs a GPU (use --tiny to check the code path on the CPU)")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16
    shape = TINY if args.tiny else FULL
    name, spec = card_peak(device)
    t0 = time.perf_counter()
    model, attn = build_model(shape, device, dtype, max(args.seq, args.prompt_len + args.new,
                                                        args.rl_prompt + args.rl_new))
    params = sum(q.numel() for q in model.parameters())
    print(f"\n{name}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}"
          f"{', CUDA ' + torch.version.cuda if device.type == 'cuda' else ''}, attention {attn}, bf16 weights"
          f"{' (--tiny: CPU code-path check, not a measurement)' if args.tiny else ''}")
    print(f"model: Qwen2 {params / 1e6:.1f}M parameters ({shape}), random init")
    print("| measurement | value |\n|---|---|", flush=True)
    row("dense bf16 peak (spec)", f"{spec / 1e12:.0f} TFLOP/s" if spec else "unknown")
    measured = matmul_peak(device, dtype, 256 if args.tiny else 8192)
    row("measured bf16 matmul peak (8192^3)", f"{measured / 1e12:.1f} TFLOP/s")

    def memory() -> str:
        if device.type != "cuda":
            return "n/a"
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"{peak:.1f} GiB"

    equal = make_batch(model.config.vocab_size, args.batch, args.seq, varied=False)
    varied = make_batch(model.config.vocab_size, args.batch, args.seq, varied=True)
    labels = {"hf": "HF model(labels=...) loss", "auto": "coldstart sft.train_step (layout by cost)",
              "pad": "coldstart, padded rows forced", "pack": "coldstart, one packed row forced"}

    def train(variant: str, batch: list, suffix: str = "") -> None:
        step = statistics.median(time_training(model.train(), device, batch, args.warmup, args.steps, variant))
        flops, tokens = batch_flops(model, batch), sum(len(e.ids) for e in batch)
        mfu = f"{flops / step / spec:.1%} of spec, " if spec else ""
        shape = f"{args.batch}x{args.seq}" if batch is equal else f"{len(batch)} seqs of {tokens} tokens"
        row(f"train {shape}: {labels[variant]}{suffix}",
            f"{step * 1e3:.1f} ms/step, {tokens / step:,.0f} tok/s, {flops / step / 1e12:.1f} "
            f"TFLOP/s, MFU {mfu}{flops / step / measured:.1%} of measured; peak mem {memory()}")

    for variant, batch in (("hf", equal), ("auto", equal), ("auto", varied), ("pad", varied), ("pack", varied)):
        try:
            train(variant, batch)
        except Exception as exc:  # report and go on: one failed variant must not cost the others
            row(f"train: {labels[variant]}", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
    def rl_pass(shared: bool, suffix: str = "") -> None:
        size = 8
        try:
            times = time_rl_pass(model.train(), device, args.rl_groups, size, args.rl_prompt, args.rl_new,
                                 args.warmup, args.steps, shared)
            step = statistics.median(times)
            fl = rl_pass_flops(model, args.rl_groups * size, args.rl_groups, args.rl_prompt, args.rl_new, shared)
            row(f"RL log-prob pass fwd+bwd ({args.rl_groups}x{size} rows, prompt {args.rl_prompt}, "
                f"{args.rl_new} new), {'shared-prefix' if shared else 'full'}{suffix}",
                f"{step * 1e3:.1f} ms, {args.rl_groups * size * args.rl_new / step:,.0f} completion tok/s, "
                f"{fl / step / 1e12:.1f} TFLOP/s executed; peak mem {memory()}")
        except Exception as exc:
            row(f"RL log-prob pass, shared={shared}{suffix}", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")

    rl_pass(False)
    rl_pass(True)
    try:
        rates = time_sampling(model.eval(), device, args.sample_batch, args.prompt_len, args.new, args.repeats)
        for k, v in rates.items():
            row(f"{k} tokens/s ({args.sample_batch} x {args.new} new, prompt {args.prompt_len}), median",
                f"{statistics.median(v):,.0f}")
        ratio = statistics.median(rates["TorchSampler"]) / statistics.median(rates["generate"])
        row("TorchSampler / generate", f"{ratio:.2f}x; peak mem {memory()}")
    except Exception as exc:
        row("sampling", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
    if time.perf_counter() - t0 > args.compile_budget:
        row("compiled variants", f"skipped: {time.perf_counter() - t0:.0f} s had passed")
    else:
        try:
            from coldstart.models import compile_blocks

            start = time.perf_counter()
            compile_blocks(model)  # what run.compile does
            train("auto", equal, ", run.compile")
            row("compile + measure time", f"{time.perf_counter() - start:.0f} s")
            train("auto", varied, ", run.compile")
            rl_pass(False, ", run.compile")
            train("auto", make_batch(model.config.vocab_size, 2 * args.batch, args.seq, varied=False),
                  ", run.compile, twice the batch")
        except Exception as exc:
            row("compiled variants", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
    row("wall time of this script", f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
