"""``minillm sft`` and ``minillm dpo``: post-training from the command line.

    minillm sft --checkpoint runs/shakespeare/last.safetensors --out-dir runs/sft
    minillm dpo --checkpoint runs/sft/model.safetensors --out-dir runs/dpo --beta 0.1

Without ``--data`` both generate the seeded task files into ``OUT_DIR/data`` (the SFT set noisy
on purpose, see ``minillm.posttrain.sft``). Each prints the held-out metrics before and after
and writes ``model.safetensors`` (what ``load_model`` and ``--checkpoint`` read),
``summary.json``, ``metrics.jsonl`` and the resumable ``last.safetensors``.
"""
from __future__ import annotations

import argparse
import dataclasses

# name -> help text; types and defaults come from the config dataclasses
_HELP = {
    "checkpoint": "the checkpoint to start from (pretrained for sft, an sft model.safetensors for dpo)",
    "data": "a JSON-lines data file (SFT: messages or Alpaca; DPO: prompt/chosen/rejected); "
            "default: generate the seeded task files into OUT_DIR/data",
    "eval_data": "held-out task prompts (eval.jsonl: prompt, task, answer, mistake); default: eval.jsonl "
                 "beside --data, else generated held-out prompts",
    "out_dir": "folder for checkpoints, metrics, the final model and summary.json",
    "max_steps": "optimizer steps",
    "lr": "peak learning rate (cosine schedule with warmup)",
    "min_lr": "learning rate at the end of the schedule",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "AdamW decoupled weight decay (matrices / LoRA matrices only)",
    "grad_clip": "clip the global gradient norm to this; 0 = off",
    "batch_size": "conversations (sft) or preference pairs (dpo) per micro-batch",
    "grad_accum_steps": "micro-batches per optimizer step",
    "dropout": "dropout of the model during this run (replaces the checkpoint's)",
    "lora_rank": "LoRA rank; 0 = full fine-tuning",
    "lora_alpha": "LoRA alpha (the update is scaled by alpha / rank)",
    "lora_dropout": "dropout on the LoRA adapters' input",
    "lora_targets": "comma-separated Linear names to adapt (q_proj,v_proj,...); default: every Linear in the blocks",
    "seed": "seed for data generation, initialisation and batch order",
    "device": "where to train",
    "precision": "compute precision: fp32, or mixed fp16 (dynamic loss scaling) / bf16 (minillm.amp)",
    "eval_interval": "evaluate (held-out loss, exact match) every this many steps",
    "log_interval": "write a metrics line every this many steps",
    "eval_per_task": "held-out prompts per task for exact match; 0 = no task evaluation",
    "eval_pairs": "held-out preference pairs for the preference accuracy; 0 = none",
    "max_new_tokens": "greedy decoding limit per reply; 0 = the longest reference reply + 4 tokens",
    "n_sft": "SFT examples to generate when --data is not given",
    "n_dpo": "preference pairs to generate when --data is not given",
    "clean_data": "generate SFT data without the deliberate noise",
    "resume": "continue a run exactly from its last.safetensors (same --checkpoint and options)",
    "beta": "DPO beta: the strength of the implicit KL constraint to the reference",
    "nll_alpha": "weight of the NLL term on the chosen replies (0 = plain DPO)",
    "progress": "show a progress bar",
}


def _add_options(parser: argparse.ArgumentParser, config_class) -> None:
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        help_text = _HELP.get(field.name, "")
        if field.name == "checkpoint":
            parser.add_argument(flag, required=True, help=help_text)
        elif field.name == "progress":
            parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
        elif isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif field.name == "device":
            parser.add_argument(flag, default=field.default, choices=("cpu", "cuda"), help=help_text)
        elif field.name == "precision":
            parser.add_argument(flag, default=field.default, choices=("fp32", "fp16", "bf16"), help=help_text)
        else:
            shown = f" (default: {field.default!r})" if field.default != "" else ""
            parser.add_argument(flag, type=type(field.default), default=field.default, help=help_text + shown)


def register(subparsers) -> None:
    from minillm.posttrain import dpo as dpo_module  # noqa: PLC0415
    from minillm.posttrain import sft as sft_module  # noqa: PLC0415
    from minillm.posttrain.dpo import DPOConfig  # noqa: PLC0415
    from minillm.posttrain.sft import SFTConfig  # noqa: PLC0415

    sft = subparsers.add_parser("sft", help="supervised fine-tuning of a pretrained checkpoint on chat data",
                                description=sft_module.__doc__.split("\n\n")[0])
    _add_options(sft, SFTConfig)
    sft.set_defaults(handler=run_sft_command)
    dpo = subparsers.add_parser("dpo", help="direct preference optimisation of an SFT model on preference pairs",
                                description=dpo_module.__doc__.split("\n\n")[0])
    _add_options(dpo, DPOConfig)
    dpo.set_defaults(handler=run_dpo_command)


def _config(config_class, args: argparse.Namespace):
    names = [field.name for field in dataclasses.fields(config_class)]
    return config_class(**{name: getattr(args, name) for name in names})


def run_sft_command(args: argparse.Namespace) -> int:
    from minillm.posttrain.sft import SFTConfig, run_sft  # noqa: PLC0415

    summary = run_sft(_config(SFTConfig, args))
    print(report_lines(summary))
    return 0


def run_dpo_command(args: argparse.Namespace) -> int:
    from minillm.posttrain.dpo import DPOConfig, run_dpo  # noqa: PLC0415

    summary = run_dpo(_config(DPOConfig, args))
    print(report_lines(summary))
    return 0


def report_lines(summary: dict) -> str:
    """The before/after table of an SFT or DPO summary: per-task exact match and mistake rate,
    overall exact match, end-marker rate (and, for DPO, held-out preference accuracy)."""
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
    lines.append(f"model: {summary['model']}" + (f"  adapters: {summary['adapters']}" if summary.get("adapters") else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
