"""One self-contained HTML page per run: plots over steps, alarms, the eval table and sample completions.

`coldstart report DIR` reads what the stages wrote, the same per-step dicts every other sink gets:
`DIR/<stage>/metrics.jsonl` for every stage folder that has one (sft, rsft, dpo, rl, ...; the demo's
`DIR/<arm>/<stage>/` too), `DIR/eval.json`
and `DIR/inspect.json` when present, and writes `DIR/report.html` with its PNG plots embedded as base64
(one file to mail or attach). Missing stages, missing keys and None values (e.g. `kl` without a reference
model) are skipped; a plot appears when some stage has a number for one of its keys.

Alarms (thresholds are rules of thumb, printed with the numbers that tripped them):
- entropy collapse: the mean entropy of the last 10% of steps is below 20% of the first 10%'s;
- zero-std share: over 80% of groups have reward std 0 on average (no policy gradient from them);
- truncation: over 20% of completions hit max_new_tokens in the last quarter of the run;
- a growing `logprob_gap` (sampler vs trainer log-probs): last quarter above 0.01 and 2× the first quarter;
- reward errors: some reward function raised or returned garbage (scored 0).

    coldstart report runs/demo        # → runs/demo/report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ..config import TRAINING_STAGES

STAGE_ORDER = tuple(TRAINING_STAGES)

# (title, keys): one figure each; a series per (stage, key) that has numbers
PLOTS: list[tuple[str, tuple[str, ...]]] = [
    ("reward", ("reward/mean",)),
    ("val accuracy", ("val/accuracy", "eval/accuracy")),  # eval/: RL runs before the stages aligned on val/
    ("SFT loss", ("loss", "val/loss")),
    ("entropy", ("entropy",)),
    ("KL to the reference", ("kl",)),
    ("completion length (tokens)", ("length/mean", "length/max")),
    ("zero-std share of groups", ("groups/zero_std_frac",)),
    ("clip fractions", ("clip/low_frac", "clip/high_frac")),
    ("truncated share", ("length/truncated_frac",)),
    ("sampler/trainer log-prob gap", ("logprob_gap",)),
]


def load_metrics(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows of every `run_dir/<stage>/metrics.jsonl` (and `run_dir/<arm>/<stage>/` as the demo writes them),
    keyed by the folder relative to run_dir, in pipeline order; unreadable lines are skipped."""
    found = [p.parent.relative_to(run_dir).as_posix() for p in run_dir.glob("*/metrics.jsonl")]
    found += [p.parent.relative_to(run_dir).as_posix() for p in run_dir.glob("*/*/metrics.jsonl")]
    order = lambda s: (s.count("/"), s.rsplit("/", 1)[0] if "/" in s else "",
                       STAGE_ORDER.index(s.rsplit("/", 1)[-1]) if s.rsplit("/", 1)[-1] in STAGE_ORDER else 99, s)
    out = {}
    for stage in sorted(found, key=order):
        rows = []
        for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            if isinstance(row, dict):
                rows.append(row)
        out[stage] = rows
    return out


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` where it is a finite number; the step defaults to the row index + 1.

    >>> series([{"step": 1, "kl": None}, {"step": 2, "kl": 0.5}, {"kl": "x"}, {"step": 4, "kl": 1}], "kl")
    ([2.0, 4.0], [0.5, 1.0])
    """
    xs, ys = [], []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            step = row.get("step", i + 1)
            xs.append(float(step if isinstance(step, (int, float)) else i + 1))
            ys.append(float(v))
    return xs, ys


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def alarms(metrics: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Human-readable alarms over every stage's rows (see the module docstring for the rules).

    >>> alarms({"rl": [{"step": i, "entropy": 2.0 if i < 5 else 0.1} for i in range(20)]})
    ['rl: entropy collapse: entropy fell from 2.00 (first 10% of steps) to 0.10 (last 10%)']
    """
    out = []
    for stage, rows in metrics.items():
        _, ent = series(rows, "entropy")
        if len(ent) >= 4:
            n = max(1, len(ent) // 10)
            first, last = _mean(ent[:n]), _mean(ent[-n:])
            if first > 0 and last < 0.2 * first:
                out.append(f"{stage}: entropy collapse: entropy fell from {first:.2f} (first 10% of steps) to "
                           f"{last:.2f} (last 10%)")
        _, zs = series(rows, "groups/zero_std_frac")
        if zs and _mean(zs) > 0.8:
            out.append(f"{stage}: {_mean(zs):.0%} of groups had reward std 0 on average (no learning signal): "
                       "start from an SFT cold start, use rl.filter: dynamic, or easier / harder prompts")
        _, tr = series(rows, "length/truncated_frac")
        if tr:
            late = _mean(tr[-max(1, len(tr) // 4):])
            if late > 0.2:
                out.append(f"{stage}: {late:.0%} of completions truncated at max_new_tokens in the last quarter: "
                           "raise rl.max_new_tokens or use rl.overlong_filter / an overlong reward")
        _, gap = series(rows, "logprob_gap")
        if len(gap) >= 4:
            q = max(1, len(gap) // 4)
            first, last = _mean(gap[:q]), _mean(gap[-q:])
            if last > 0.01 and last > 2 * first:
                out.append(f"{stage}: the sampler/trainer log-prob gap grew from {first:.3g} to {last:.3g}: "
                           "check sampler settings (top_p / top_k, dtype) and the number of update epochs")
        _, errs = series(rows, "reward/errors")
        if sum(errs) > 0:
            out.append(f"{stage}: {sum(errs):.0f} reward scores failed and were set to 0 (see the log for why)")
        for name in sorted({k for r in rows for k in r if k.startswith("reward/failed/")}):
            _, frac = series(rows, name)
            if frac and _mean(frac) > 0.5:
                out.append(f"{stage}: reward {name[len('reward/failed/'):]!r} failed on {_mean(frac):.0%} of the "
                           "samples on average (scored 0 there): the run learned from zeros; fix it (coldstart "
                           "inspect shows how it is called)")
    return out


def plot_png(title: str, keys: tuple[str, ...], metrics: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """A PNG line plot of `keys` over steps for every stage that has them; None when nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lines = [(f"{stage}: {key}", *series(rows, key)) for stage, rows in metrics.items() for key in keys]
    lines = [ln for ln in lines if ln[1]]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; floats with 3 decimals, everything escaped."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape("" if v is None else str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _eval_section(evals: dict[str, Any]) -> str:
    """The eval table (one row per stage) and each stage's sample completions."""
    stages = {k: v for k, v in evals.items() if isinstance(v, dict)}
    if not stages:
        return "<p>eval.json holds no stage results.</p>"
    keys = list(dict.fromkeys(k for v in stages.values() for k, x in v.items() if isinstance(x, (int, float))))
    parts = [_table(["stage", *keys], [[s, *(v.get(k) for k in keys)] for s, v in stages.items()])]
    for stage, v in stages.items():
        samples = v.get("examples") or v.get("samples") or []
        if samples:
            rows = [[x.get("prompt"), x.get("answer"), x.get("completion"), x.get("reward")] for x in samples
                    if isinstance(x, dict)]
            parts.append(f"<h3>samples: {html.escape(stage)}</h3>"
                         + _table(["prompt", "answer", "completion", "reward"], rows))
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;color:#222}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots img{border:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;
text-align:left;vertical-align:top}td{white-space:pre-wrap;max-width:600px;font-family:monospace}
.alarm{background:#fee;border-left:4px solid #c00;padding:4px 8px;margin:4px 0}
.ok{background:#efe;border-left:4px solid #080;padding:4px 8px}"""

# Records how many images decoded (used by the headless-browser test, harmless elsewhere).
CHECK_JS = """window.addEventListener('load',function(){var a=Array.prototype.slice.call(document.images);
document.body.setAttribute('data-images',a.filter(function(i){return i.complete&&i.naturalWidth>0}).length+'/'+
a.length)});"""


def build_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (plots embedded as base64 PNG) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    metrics = load_metrics(run_dir)
    evals = _read_json(run_dir / "eval.json")
    inspect = _read_json(run_dir / "inspect.json")
    if not any(metrics.values()) and evals is None and inspect is None:
        raise FileNotFoundError(f"{run_dir}: nothing to report (no <stage>/metrics.jsonl, eval.json or inspect.json)")
    body = [f"<h1>coldstart run: {html.escape(str(run_dir))}</h1>",
            "<p>" + ", ".join(f"{html.escape(s)}: {len(r)} steps" for s, r in metrics.items()) + "</p>"]
    found = alarms(metrics)
    body.append("<h2>alarms</h2>" + ("".join(f'<div class="alarm">{html.escape(a)}</div>' for a in found)
                                     or '<div class="ok">none</div>'))
    imgs = []
    parts = sorted({k for rows in metrics.values() for r in rows for k in r if k.startswith("reward/")}
                   - {"reward/mean", "reward/std", "reward/total", "reward/errors"})
    for title, keys in [*PLOTS[:1], ("reward parts (unweighted)", tuple(parts)), *PLOTS[1:]]:
        png = plot_png(title, keys, metrics)
        if png is not None:
            data = base64.b64encode(png).decode()
            imgs.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
    body.append("<h2>over steps</h2>" + (f'<div class="plots">{"".join(imgs)}</div>' if imgs
                                          else "<p>no per-step metrics</p>"))
    if evals is not None:
        body.append("<h2>evaluation (test split)</h2>" + _eval_section(evals))
    if inspect is not None and isinstance(inspect.get("verdict"), list):
        body.append("<h2>inspect verdict</h2>" + "".join(
            f'<div class="{"ok" if v.get("level") == "ok" else "alarm"}">{html.escape(str(v.get("message")))}</div>'
            for v in inspect["verdict"] if isinstance(v, dict)))
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>coldstart report</title><style>{CSS}</style>'
            f"<script>{CHECK_JS}</script></head><body>{''.join(body)}</body></html>")
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None when missing; ValueError naming the file when it is not JSON."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    return data if isinstance(data, dict) else None
