"""``minillm health RUN_DIR``: read a run's health records, flag the usual failures, draw a dashboard.

The records are the ``"kind": "health"`` lines that ``minillm train --health_interval N`` writes
to ``RUN_DIR/metrics.jsonl`` (see :mod:`minillm.health.observer` for what each number is). The
command prints a table of the last health step and every flag raised, and writes a one-page,
self-contained HTML dashboard (inline SVG: no scripts, no external files, nothing fetched)::

    minillm health runs/shakespeare                 # writes runs/shakespeare/health.html
    minillm health runs/shakespeare --out report.html

Exit status: 0 when no flag is raised, 5 (:data:`minillm.errors.EXIT_UNHEALTHY`) when one is, 2
for a folder without a metrics log or without health records.

The flags, each checked at every health step (a flag names the steps at which it held). A
*layer* is ``blocks.i`` (the embeddings and the head are shown but not compared: their norms
differ by design); a *matrix* is a parameter of two or more dimensions (biases and norm gains
start at 0 and 1 and move on another scale, so they are shown but not compared):

    exploding layer    a block's gradient norm > GRAD_FACTOR (10) x the median block's
    vanishing layer    a block's gradient norm < 1 / GRAD_FACTOR x the median block's
    update ratio       a matrix's update ratio > UPDATE_FACTOR (100) x the median matrix's
    update too large   the median matrix's update ratio > UPDATE_HIGH (0.1): the learning rate is
                       far above the ~1e-3 rule of thumb
    dead head          a head's attention entropy < DEAD_ENTROPY (2%) of the uniform ceiling (it
                       looks at one key), or its output RMS < DEAD_OUTPUT (1%) of the median
                       head's in its layer (it contributes nothing)
    collapsing entropy a head whose entropy fell below COLLAPSE_FRACTION (10%) of the ceiling by the
                       last health step and to less than a quarter of its first recorded value
    dead units         more than DEAD_UNITS (10%) of an activation's units dead (|h| < 1% of the
                       layer's RMS everywhere in the batch), at a block's output or its MLP hidden
                       layer
    logit scale        max |logit| > LOGIT_MAX (100): the head is saturating the softmax
    non-finite         a gradient norm, weight norm or statistic that is NaN/Inf (null in the log)
"""
from __future__ import annotations

import html
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from minillm import commandline
from minillm.config import Config, Section, option
from minillm.errors import EXIT_UNHEALTHY, MinillmError
from minillm.fileio import atomic_write_text, refuse_to_overwrite
from minillm.train.metrics import read_metrics

GRAD_FACTOR = 10.0
UPDATE_FACTOR = 100.0
UPDATE_HIGH = 0.1
DEAD_ENTROPY = 0.02
DEAD_OUTPUT = 0.01
COLLAPSE_FRACTION = 0.10
DEAD_UNITS = 0.10
LOGIT_MAX = 100.0
RULE_OF_THUMB = 1e-3          # the update ratio of a healthy learning rate (Karpathy)

_BLOCK = re.compile(r"^(.*?blocks\.\d+)\.")


class NoHealthRecords(MinillmError, ValueError):
    """The run folder has no metrics log, or the log has no health records (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def load_health(run_dir: str) -> tuple[list[dict], list[str]]:
    """The health records of the run in ``run_dir`` (by step) and the reader's notes."""
    if not os.path.isdir(run_dir):
        raise NoHealthRecords(f"RUN_DIR {run_dir!r} is not a folder; expected the out_dir of a training run")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise NoHealthRecords(f"RUN_DIR {run_dir!r} holds no metrics.jsonl; expected the out_dir of a training run")
    records, notes, _ = read_metrics(path)
    health = sorted((r for r in records if r.get("kind") == "health" and isinstance(r.get("step"), int)),
                    key=lambda r: r["step"])
    if not health:
        raise NoHealthRecords(f"{path!r} holds no health records; train with --health_interval N (e.g. 50) to "
                              "record them")
    return health, notes


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: ``blocks.i`` for the blocks, else its module's path."""
    match = _BLOCK.match(name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_norms(record: dict, key: str) -> dict[str, float | None]:
    """{layer: sqrt(Σ norm²)} over the layer's parameters of the norm ``key`` (None if any is null)."""
    squares: dict[str, float | None] = {}
    for name, stats in record.get("params", {}).items():
        layer = layer_of(name)
        value = stats.get(key)
        if value is None or squares.get(layer, 0.0) is None:
            squares[layer] = None
        else:
            squares[layer] = squares.get(layer, 0.0) + value * value
    return {layer: None if total is None else math.sqrt(total) for layer, total in squares.items()}


def _blocks(names) -> list[str]:
    return [n for n in names if _BLOCK.match(n + ".")]


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------
@dataclass
class Flag:
    """One failure sign: ``kind`` (the table in the module docstring), ``subject`` (a layer,
    parameter or head), and per step where it held the sentence that says it."""

    kind: str
    subject: str
    steps: list
    detail: str

    def line(self) -> str:
        steps = ", ".join(str(s) for s in self.steps[:8]) + (f" and {len(self.steps) - 8} more" if len(self.steps) > 8
                                                            else "")
        return f"{self.kind}: {self.subject}: {self.detail} (at step{'s' if len(self.steps) > 1 else ''} {steps})"


def _check_record(record: dict, first: dict) -> list[tuple[str, str, str]]:
    """(kind, subject, detail) for every flag that holds at ``record`` (``first``: the first record)."""
    found = []
    params = record.get("params", {})
    for name, stats in params.items():
        if any(stats.get(k) is None for k in ("grad_norm", "param_norm")):
            found.append(("non-finite", name, "gradient or weight norm is NaN/Inf"))
    grads = {layer: value for layer, value in layer_norms(record, "grad_norm").items() if layer in _blocks([layer])}
    median = _median(grads.values())
    if median and len(grads) >= 2:
        for layer, value in grads.items():
            if value is not None and value > GRAD_FACTOR * median:
                found.append(("exploding layer", layer, f"gradient norm {value:.3g} is {value / median:.0f}x the "
                                                        f"median block's {median:.3g}"))
            elif value is not None and value < median / GRAD_FACTOR:
                found.append(("vanishing layer", layer, f"gradient norm {value:.3g} is 1/{median / max(value, 1e-300):.0f}"
                                                        f" of the median block's {median:.3g}"))
    ratios = {name: s.get("update_ratio") for name, s in params.items()
              if len(s.get("shape", [0, 0])) >= 2 and s.get("update_ratio") is not None}
    median = _median(ratios.values())
    if median:
        for name, value in ratios.items():
            if value > UPDATE_FACTOR * median:
                found.append(("update ratio", name, f"update/weight ratio {value:.2g} is {value / median:.0f}x the "
                                                    f"median matrix's {median:.2g}"))
        if median > UPDATE_HIGH:
            found.append(("update too large", "all matrices", f"the median update/weight ratio is {median:.2g}, "
                                                              f"far above the ~{RULE_OF_THUMB:g} rule of thumb"))
    ceiling = record.get("max_entropy")
    first_attention = first.get("attention", {})
    for layer, stats in record.get("attention", {}).items():
        entropy, rms = stats.get("entropy") or [], stats.get("output_rms") or []
        head_median = _median(rms)
        for head, value in enumerate(entropy):
            subject = f"{layer} head {head}"
            if value is None:
                found.append(("non-finite", subject, "attention entropy is NaN/Inf"))
                continue
            if ceiling and value < DEAD_ENTROPY * ceiling:
                found.append(("dead head", subject, f"attention entropy {value:.3g} nats is below "
                                                    f"{DEAD_ENTROPY:.0%} of the uniform {ceiling:.3g}: it looks at one key"))
            start = (first_attention.get(layer, {}).get("entropy") or [None] * len(entropy))[head]
            if ceiling and start and record is not first and value < COLLAPSE_FRACTION * ceiling and value < start / 4:
                found.append(("collapsing entropy", subject, f"attention entropy fell from {start:.3g} to {value:.3g} "
                                                             f"nats (uniform: {ceiling:.3g})"))
        for head, value in enumerate(rms):
            if value is not None and head_median and value < DEAD_OUTPUT * head_median:
                found.append(("dead head", f"{layer} head {head}", f"output RMS {value:.2g} is below {DEAD_OUTPUT:.0%} "
                                                                   f"of its layer's median head ({head_median:.2g})"))
    for name, stats in record.get("activations", {}).items():
        dead = stats.get("dead")
        if dead is not None and dead > DEAD_UNITS:
            where = "MLP hidden units" if name.endswith(".mlp") else "output channels"
            found.append(("dead units", name, f"{dead:.0%} of its {where} stay below 1% of the layer's RMS everywhere in the batch"))
        if any(stats.get(k) is None for k in ("mean", "std")):
            found.append(("non-finite", name, "activation statistics are NaN/Inf"))
    logits = record.get("logits")
    if logits:
        if logits.get("max_abs") is None:
            found.append(("non-finite", "logits", "the logits hold NaN/Inf"))
        elif logits["max_abs"] > LOGIT_MAX:
            found.append(("logit scale", "logits", f"max |logit| {logits['max_abs']:.3g} > {LOGIT_MAX:g}"))
    return found


def find_flags(records: list[dict]) -> list[Flag]:
    """Every flag that holds at some health step, one per (kind, subject), with the last detail."""
    flags: dict[tuple[str, str], Flag] = {}
    for record in records:
        for kind, subject, detail in _check_record(record, records[0]):
            flag = flags.setdefault((kind, subject), Flag(kind, subject, [], detail))
            if record["step"] not in flag.steps:
                flag.steps.append(record["step"])
            flag.detail = detail
    return list(flags.values())


# ---------------------------------------------------------------------------------------------
# The printed summary
# ---------------------------------------------------------------------------------------------
def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(record: dict) -> str:
    """A row per layer of ``record``: gradient and weight norms, the median update ratio of its
    matrices, its output's std and dead share, its MLP's dead share, its heads' entropy."""
    grads, weights = layer_norms(record, "grad_norm"), layer_norms(record, "param_norm")
    ratios: dict[str, list] = {}
    for name, stats in record.get("params", {}).items():
        if len(stats.get("shape", [0, 0])) >= 2:
            ratios.setdefault(layer_of(name), []).append(stats.get("update_ratio"))
    activations, attention = record.get("activations", {}), record.get("attention", {})
    header = ["layer", "grad norm", "weight norm", "median update", "out std", "out dead", "mlp dead",
              "entropy min/mean"]
    rows = []
    for layer in grads:
        out, mlp = activations.get(layer, {}), activations.get(f"{layer}.mlp", {})
        entropy = [v for v in attention.get(f"{layer}.attn", {}).get("entropy") or [] if v is not None]
        rows.append([layer, _fmt(grads[layer]), _fmt(weights.get(layer)), _fmt(_median(ratios.get(layer, [])), ".2g"),
                     _fmt(out.get("std")), _fmt(out.get("dead"), ".1%") if out else "-",
                     _fmt(mlp.get("dead"), ".1%") if mlp else "-",
                     f"{min(entropy):.2f}/{statistics.mean(entropy):.2f}" if entropy else "-"])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    logits = record.get("logits")
    if logits:
        lines.append(f"logits: std {_fmt(logits.get('std'))}, max |logit| {_fmt(logits.get('max_abs'))}; "
                     f"uniform attention entropy {_fmt(record.get('max_entropy'))} nats")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# SVG charts (no dependencies: text and arithmetic)
# ---------------------------------------------------------------------------------------------
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
# viridis at 0, 0.25, 0.5, 0.75, 1
_COLORMAP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _color(fraction: float) -> str:
    fraction = min(max(fraction, 0.0), 1.0) * (len(_COLORMAP) - 1)
    low = min(int(fraction), len(_COLORMAP) - 2)
    t = fraction - low
    rgb = [round(a + (b - a) * t) for a, b in zip(_COLORMAP[low], _COLORMAP[low + 1])]
    return "#%02x%02x%02x" % tuple(rgb)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def line_chart(title: str, series: list[tuple[str, list, list]], log_y: bool = False, y_label: str = "",
               reference: tuple[float, str] | None = None, include: tuple = (), width: int = 470,
               height: int = 230) -> str:
    """An inline SVG line chart: ``series`` of (label, xs, ys) (None ys leave gaps); ``log_y`` a
    log10 axis (non-positive values are left out); ``reference`` a dashed level with its label;
    ``include`` y values the axis spans whatever the data (a fraction's 0 and a visible top)."""
    left, right, top, bottom = 58, 10, 24, 34
    legend_rows = (len(series) + 3) // 4
    height += 14 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom - 14 * legend_rows

    def usable(y):
        return y is not None and math.isfinite(y) and (y > 0 or not log_y)
    xs = [x for _, sx, sy in series for x, y in zip(sx, sy) if usable(y)]
    ys = [math.log10(y) if log_y else y for _, sx, sy in series for y in sy if usable(y)]
    if reference and (reference[0] > 0 or not log_y):
        ys.append(math.log10(reference[0]) if log_y else reference[0])
    if ys and not log_y:
        ys += list(include)
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="15" class="title">{html.escape(title)}</text>']
    if not xs or not ys:
        parts.append(f'<text x="{left}" y="{top + 20}">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        half = 0.5 if log_y else (abs(y0) * 0.1 or 0.5)
        y0, y1 = y0 - half, y1 + half
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    for tick in _ticks(y0, y1, 4):
        label = f"1e{tick:g}" if log_y else f"{tick:.3g}"
        if log_y and tick != int(tick):
            continue
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" class="tick" text-anchor="end">{label}</text>')
    for tick in _ticks(x0, x1, 5):
        parts.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 14}" class="tick" text-anchor="middle">'
                     f'{tick:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 27}" class="tick" text-anchor="middle">'
                 f'step</text>')
    if y_label:
        parts.append(f'<text x="12" y="{top + plot_h / 2:.0f}" class="tick" text-anchor="middle" '
                     f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{html.escape(y_label)}</text>')
    if reference and (reference[0] > 0 or not log_y):
        level = py(math.log10(reference[0]) if log_y else reference[0])
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{level:.1f}" y2="{level:.1f}" class="ref"/>'
                     f'<text x="{left + plot_w - 4}" y="{level - 4:.1f}" class="tick" text-anchor="end">'
                     f'{html.escape(reference[1])}</text>')
    for index, (label, sx, sy) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        runs, current = [], []
        for x, y in zip(sx, sy):
            if usable(y):
                current.append(f"{px(x):.1f},{py(math.log10(y) if log_y else y):.1f}")
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            else:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="1.5">'
                             f'<title>{html.escape(label)}</title></polyline>')
        lx = left + (index % 4) * (plot_w / 4)
        ly = top + plot_h + 42 + 14 * (index // 4)
        parts.append(f'<rect x="{lx:.0f}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
                     f'<text x="{lx + 14:.0f}" y="{ly - 3}" class="tick">{html.escape(label[-22:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap(title: str, rows: list[str], steps: list[int], values: list[list], low: float, high: float,
            legend: tuple[str, str], log: bool = False, cell_h: int = 12, width: int = 950) -> str:
    """An inline SVG heat map: a row per name, a column per step, colour = value between ``low``
    and ``high`` (log10 of the value with ``log``); None is grey. Each cell's tooltip gives its value."""
    left = max(60, 7 * max((len(r) for r in rows), default=0))
    top, bottom = 24, 40
    plot_w = width - left - 20
    cell_w = plot_w / max(len(steps), 1)
    height = top + cell_h * len(rows) + bottom
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="15" class="title">{html.escape(title)}</text>']
    for r, (name, row) in enumerate(zip(rows, values)):
        y = top + r * cell_h
        parts.append(f'<text x="{left - 4}" y="{y + cell_h - 2}" class="tick" text-anchor="end">{html.escape(name)}'
                     f'</text>')
        for c, value in enumerate(row):
            usable = value is not None and math.isfinite(value) and (value > 0 or not log)
            if usable:
                scaled = math.log10(value) if log else value
                fill = _color((scaled - low) / (high - low))
            else:
                fill = "#cccccc"
            shown = f"{value:.3g}" if value is not None else "null"
            parts.append(f'<rect x="{left + c * cell_w:.1f}" y="{y}" width="{cell_w + 0.3:.1f}" height="{cell_h}" '
                         f'fill="{fill}"><title>{html.escape(name)} step {steps[c]}: {shown}</title></rect>')
    base = top + cell_h * len(rows)
    for tick in _ticks(steps[0], steps[-1], 8) if steps else []:
        c = min(range(len(steps)), key=lambda i: abs(steps[i] - tick))
        parts.append(f'<text x="{left + (c + 0.5) * cell_w:.1f}" y="{base + 13}" class="tick" text-anchor="middle">'
                     f'{steps[c]}</text>')
    for i in range(11):
        parts.append(f'<rect x="{left + i * 18}" y="{base + 22}" width="18" height="9" fill="{_color(i / 10)}"/>')
    parts.append(f'<text x="{left - 4}" y="{base + 30}" class="tick" text-anchor="end">{html.escape(legend[0])}</text>'
                 f'<text x="{left + 11 * 18 + 4}" y="{base + 30}" class="tick">{html.escape(legend[1])}</text>'
                 f'<text x="{left + 11 * 18 + 90}" y="{base + 30}" class="tick">step</text></svg>')
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
_STYLE = """body{font-family:sans-serif;margin:18px;color:#222;max-width:1000px}
h1{font-size:20px}h2{font-size:16px;margin:22px 0 4px}p{margin:4px 0 8px;font-size:13px;line-height:1.4}
.title{font-size:12px;font-weight:bold}.tick{font-size:10px;fill:#444}.frame{fill:none;stroke:#999}
.grid{stroke:#eee}.ref{stroke:#d62728;stroke-dasharray:4 3}.flag{color:#b00020}.ok{color:#2a7d2a}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:8px}"""


def _series(records: list[dict], names: list[str], value) -> list[tuple[str, list, list]]:
    steps = [r["step"] for r in records]
    return [(name, steps, [value(r, name) for r in records]) for name in names]


def render_html(run_dir: str, records: list[dict], flags: list[Flag]) -> str:
    """The dashboard page (see the module docstring)."""
    steps = [r["step"] for r in records]
    last = records[-1]
    params = list(last.get("params", {}))
    layers = list(layer_norms(last, "grad_norm"))
    blocks = _blocks(layers)
    attention = list(last.get("attention", {}))
    out = ['<!DOCTYPE html><html><head><meta charset="utf-8"><title>minillm health: ',
           html.escape(run_dir), f"</title><style>{_STYLE}</style></head><body>",
           f"<h1>Training health of {html.escape(run_dir)}</h1>",
           f"<p>{len(records)} health records, steps {steps[0]}&ndash;{steps[-1]}; "
           "generated by <code>minillm health</code> from metrics.jsonl.</p>"]
    if flags:
        out.append(f'<h2 class="flag">{len(flags)} flag{"s" if len(flags) > 1 else ""}</h2><ul>')
        out += [f'<li class="flag">{html.escape(flag.line())}</li>' for flag in flags]
        out.append("</ul>")
    else:
        out.append('<h2 class="ok">No flags: healthy by every check</h2>')
    out.append(f"<h2>Last health step ({last['step']})</h2><pre>{html.escape(summary_table(last))}</pre>")

    ratio_values = [[r.get("params", {}).get(name, {}).get("update_ratio") for r in records] for name in params]
    out.append("<h2>Update/weight ratio by parameter over time</h2><p>The size of each optimizer step relative to "
               f"the weights, log10. Healthy: matrices near the ~{RULE_OF_THUMB:g} rule of thumb (green-blue), "
               "rising through warmup and falling with the learning-rate decay, rows alike; a row much brighter "
               "than the rest learns far faster than the others (its learning rate or initialisation is off), "
               "a dark one barely moves. Biases and norm gains sit on another scale.</p>")
    out.append(heatmap("log10 update ratio", params, steps, ratio_values, -5.0, -1.0, ("1e-5", "1e-1"), log=True))

    out.append("<h2>Gradient and weight norms by layer</h2><p>Per layer, the L2 norm over its parameters. "
               "Healthy: block gradients within a small factor of each other (large early, settling as the loss "
               "falls); weight norms changing slowly. One block far above the others explodes, far below "
               "vanishes.</p><div class='row'>")
    out.append(line_chart("gradient norm (before clipping)", _series(
        records, layers, lambda r, n: layer_norms(r, "grad_norm").get(n)), log_y=True))
    out.append(line_chart("weight norm", _series(
        records, layers, lambda r, n: layer_norms(r, "param_norm").get(n)), log_y=True))
    out.append(line_chart("median update ratio of the layer's matrices", _series(
        records, blocks + [n for n in layers if n not in blocks],
        lambda r, n: _median(s.get("update_ratio") for p, s in r.get("params", {}).items()
                             if layer_of(p) == n and len(s.get("shape", [0, 0])) >= 2)),
        log_y=True, reference=(RULE_OF_THUMB, "1e-3")))
    out.append("</div>")

    activations = list(last.get("activations", {}))
    outputs = [n for n in activations if not n.endswith(".mlp")]
    hidden = [n for n in activations if n.endswith(".mlp")]
    out.append("<h2>Activations</h2><p>Standard deviation of each block's output (the residual stream) and of its "
               "MLP hidden layer, and the share of dead units (|h| &lt; 1% of the layer's RMS at every position of the "
               "batch). "
               "Healthy: the residual stream's std grows gently with depth and with training; hidden layers keep "
               "their scale; dead units stay near 0%.</p><div class='row'>")
    out.append(line_chart("block output std", _series(records, outputs,
                                                      lambda r, n: r.get("activations", {}).get(n, {}).get("std"))))
    out.append(line_chart("MLP hidden std", _series(records, hidden,
                                                    lambda r, n: r.get("activations", {}).get(n, {}).get("std"))))
    out.append(line_chart("dead units (fraction)", _series(
        records, activations, lambda r, n: r.get("activations", {}).get(n, {}).get("dead")),
        reference=(DEAD_UNITS, "flag"), include=(0.0, 2 * DEAD_UNITS)))
    out.append(line_chart("outliers (|h| > 10 RMS, fraction)", _series(
        records, activations, lambda r, n: r.get("activations", {}).get(n, {}).get("outliers")), include=(0.0,)))
    out.append("</div>")

    heads = [(layer, h) for layer in attention for h in range(len(last["attention"][layer].get("entropy") or []))]
    ceiling = last.get("max_entropy") or 1.0

    def head_value(record, layer, head, key):
        values = record.get("attention", {}).get(layer, {}).get(key) or []
        return values[head] if head < len(values) else None
    entropy = [[None if head_value(r, layer, h, "entropy") is None else head_value(r, layer, h, "entropy") / ceiling
                for r in records] for layer, h in heads]
    out.append(f"<h2>Attention entropy per head over time</h2><p>Mean entropy of each head's causal attention, as a "
               f"share of the uniform distribution's ({ceiling:.2f} nats: every query spreading evenly over the "
               "keys it may see). Healthy: near 1 at initialisation, falling as heads specialise (some to a few "
               "keys, such as the previous token), then steady. A head near 0 looks at a single key (dead); a head "
               "still falling towards 0 at the end is collapsing.</p>")
    out.append(heatmap("entropy / uniform", [f"{layer} h{h}" for layer, h in heads], steps, entropy, 0.0, 1.0,
                       ("0", "1")))
    rms = [[head_value(r, layer, h, "output_rms") for r in records] for layer, h in heads]
    out.append("<p>Each head's output RMS (its share of the input to o_proj), log10. Healthy: heads of a layer alike "
               "within a small factor; a grey-dark row near 0 is a head that contributes nothing.</p>")
    finite = [v for row in rms for v in row if v is not None and v > 0]
    low = math.floor(math.log10(min(finite))) if finite else -3
    high = math.ceil(math.log10(max(finite))) if finite else 0
    out.append(heatmap("log10 head output RMS", [f"{layer} h{h}" for layer, h in heads], steps, rms, low,
                       max(high, low + 1), (f"1e{low}", f"1e{max(high, low + 1)}"), log=True))

    out.append("<h2>Logit scale at the head</h2><p>Std and max |logit| of the output logits. Healthy: the std "
               "grows from ~0 at initialisation as the model grows confident, then levels off; a max |logit| "
               f"running away (above {LOGIT_MAX:g}) saturates the softmax.</p><div class='row'>")
    out.append(line_chart("logits", [("std", steps, [r.get("logits", {}).get("std") for r in records]),
                                     ("max |logit|", steps, [r.get("logits", {}).get("max_abs") for r in records])],
                          log_y=True))
    seconds = [r.get("seconds") for r in records]
    out.append(line_chart("observer time per health step (s)", [("seconds", steps, seconds)]))
    out.append("</div></body></html>\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
@dataclass
class HealthSection(Section):
    name: ClassVar[str] = "health"
    title: ClassVar[str] = "the run to report on and where the dashboard goes"

    run_dir: list[str] = option([], "the run's out_dir (holding metrics.jsonl with health records)", positional=True,
                                metavar="RUN_DIR")
    out: str = option("", "the HTML dashboard to write; empty = RUN_DIR/health.html")
    overwrite: bool = option(False, "replace an existing dashboard file")

    def check(self) -> None:
        if len(self.run_dir) != 1:
            raise ValueError(f"health: RUN_DIR={self.run_dir!r}; expected exactly one run folder "
                             "(minillm health RUN_DIR [--out FILE.html])")


@dataclass
class HealthConfig(Config):
    description: ClassVar[str] = ("Report on a run's per-layer training health (recorded with `minillm train "
                                  "--health_interval N`): print a table and the flags raised, and write a one-page "
                                  "HTML dashboard. Exit status 5 when a flag is raised.")
    health: HealthSection = field(default_factory=HealthSection)


def run_health(cfg: HealthConfig, out=None) -> int:
    """The ``minillm health`` command: prints the summary and the flags, writes the dashboard."""
    out = out or sys.stdout
    args = cfg.health
    run_dir = args.run_dir[0]
    records, notes = load_health(run_dir)
    for note in notes:
        print(f"minillm health: {note}", file=sys.stderr)
    path = args.out or os.path.join(run_dir, "health.html")
    refuse_to_overwrite(f"--out {path!r}", "", [path] if os.path.exists(path) else [], args.overwrite,
                        "pass --overwrite to replace it, or choose another --out")
    flags = find_flags(records)
    steps = [r["step"] for r in records]
    print(f"minillm health: {run_dir}: {len(records)} health records, steps {steps[0]}-{steps[-1]}", file=out)
    print(f"\nlast health step ({steps[-1]}):\n{summary_table(records[-1])}", file=out)
    atomic_write_text(path, render_html(run_dir, records, flags))
    if flags:
        print(f"\n{len(flags)} flag{'s' if len(flags) > 1 else ''}:", file=out)
        for flag in flags:
            print(f"  {flag.line()}", file=out)
    else:
        print("\nno flags: healthy by every check (thresholds: minillm/health/report.py)", file=out)
    print(f"\ndashboard: {path}", file=out)
    return EXIT_UNHEALTHY if flags else 0


def register(subparsers) -> None:
    commandline.register(subparsers, "health", HealthConfig, run_health,
                         help="per-layer training health report and HTML dashboard (exit 5 when a flag is raised)")
