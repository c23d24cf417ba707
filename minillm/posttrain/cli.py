"""``minillm sft`` and ``minillm dpo``: post-training from the command line.

    minillm sft --checkpoint runs/shakespeare/last.safetensors --out-dir runs/sft
    minillm dpo --checkpoint runs/sft/model.safetensors --out-dir runs/dpo --beta 0.1

Without ``--data`` both generate the seeded task files into ``OUT_DIR/data`` (the SFT set noisy
on purpose, see ``minillm.posttrain.sft``). Each prints the held-out metrics before and after
and writes ``model.safetensors`` (what ``load_model`` and ``--checkpoint`` read),
``summary.json``, ``metrics.jsonl`` and the resumable ``last.safetensors``.
"""
from __future__ import annotations

from minillm import commandline
from minillm.backend import check_device
from minillm.distributed import current_world
from minillm.posttrain.dpo import run_dpo
from minillm.posttrain.sft import run_sft
from minillm.posttrain.stage import DPOConfig, SFTConfig
from minillm.posttrain.tasks import DEFAULT_NOISE, format_rate, pooled_count


def register(subparsers) -> None:
    commandline.register(subparsers, "sft", SFTConfig, run_sft_command,
                         help="supervised fine-tuning of a pretrained checkpoint on chat data")
    commandline.register(subparsers, "dpo", DPOConfig, run_dpo_command,
                         help="direct preference optimisation of an SFT model on preference pairs")


def run_sft_command(cfg: SFTConfig) -> int:
    check_device(cfg.loop.device)       # now, not after the data is generated and the checkpoint read
    summary = run_sft(cfg)
    if current_world().is_main:         # data-parallel: rank 0 reports
        print(report_lines(summary))
    return 0


def run_dpo_command(cfg: DPOConfig) -> int:
    check_device(cfg.loop.device)
    summary = run_dpo(cfg)
    if current_world().is_main:
        print(report_lines(summary))
    return 0


def report_lines(summary: dict) -> str:
    """The before/after table of an SFT or DPO summary: per-task exact match and mistake rate,
    overall exact match, end-marker rate (and, for DPO, held-out preference accuracy); then the
    headline rates with their 95% Wilson intervals (:func:`headline_rates`)."""
    before, after = summary.get("before"), summary.get("after")
    counts = summary["parameters"]
    lines = [f"{summary['stage']}: {summary['steps']} steps in {summary['train_seconds']:.0f} s; trained "
             f"{counts['trainable']:,} of {counts['total']:,} parameters ({100 * counts['fraction']:.1f}%)"]
    b_tasks = (before or {}).get("tasks", before) or {}
    a_tasks = (after or {}).get("tasks", after) or {}
    if a_tasks and "mistake_rate" in a_tasks:
        lines.append(f"{'task':<12} {'exact before':>12} {'after':>6} {'mistake before':>15} {'after':>6}")
        for name in a_tasks["mistake_rate"]:
            lines.append(f"{name:<12} {_fmt(b_tasks.get(name)):>12} {_fmt(a_tasks[name]):>6} "
                         f"{_fmt((b_tasks.get('mistake_rate') or {}).get(name)):>15} "
                         f"{_fmt(a_tasks['mistake_rate'][name]):>6}")
        lines.append(f"{'overall':<12} {_fmt(b_tasks.get('overall')):>12} {_fmt(a_tasks['overall']):>6}")
        b_end = (before or {}).get("end_rate")
        lines.append(f"end-marker rate: {_fmt(b_end)} -> {_fmt(after.get('end_rate'))}")
    if after and "heldout_reward_accuracy" in after:
        lines.append(f"held-out preference accuracy (reward margin > 0): "
                     f"{_fmt((before or {}).get('heldout_reward_accuracy'))} -> {_fmt(after['heldout_reward_accuracy'])}; "
                     f"policy prefers chosen outright: {_fmt((before or {}).get('heldout_prefers_chosen'))} -> "
                     f"{_fmt(after['heldout_prefers_chosen'])}")
    for label, when in (("before", before), ("after", after)):
        rates = headline_rates(when, summary.get("heldout_pairs"))
        if rates:
            lines.append(f"{label}, rate [95% interval]: " + "; ".join(f"{name} {format_rate(*count)}"
                                                                          for name, count in rates.items()))
    lines.append(f"model: {summary['model']}" + (f"  adapters: {summary['adapters']}" if summary.get("adapters") else ""))
    return "\n".join(lines)


def headline_rates(result: dict | None, heldout_pairs: int | None = None) -> dict:
    """``{name: (successes, trials)}`` of one evaluation (an SFT summary's ``before``/``after``, or
    DPO's, whose task scores sit under ``"tasks"``): ``exact match`` over all prompts, ``end
    marker``, ``taught mistake`` (the mistakes of the ``DEFAULT_NOISE`` tasks, pooled) and, given
    the number of ``heldout_pairs``, ``preference accuracy``. Empty when there are no counts."""
    if not result:
        return {}
    tasks = result.get("tasks", result)
    rates = {}
    counts = tasks.get("counts") if isinstance(tasks, dict) else None
    if counts:
        prompts = sum(c["prompts"] for c in counts.values())
        rates["exact match"] = (sum(c["correct"] for c in counts.values()), prompts)
        if "ended" in tasks:
            rates["end marker"] = (tasks["ended"], prompts)
        if all(name in counts for name in DEFAULT_NOISE):
            rates["taught mistake"] = pooled_count(tasks, DEFAULT_NOISE, "mistakes")
    if heldout_pairs and result.get("heldout_reward_accuracy") is not None:
        rates["preference accuracy"] = (round(result["heldout_reward_accuracy"] * heldout_pairs), heldout_pairs)
    return rates


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
