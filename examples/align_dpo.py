"""DPO on a CPU in minutes: remove a mistake that imperfect demonstrations taught.

    python examples/align_dpo.py                                   # pretrain + SFT first if needed
    python examples/align_dpo.py --checkpoint runs/posttrain/sft/model.safetensors
    python examples/align_dpo.py --nll-alpha 0                     # plain DPO, for comparison

The SFT data of ``examples/finetune_sft.py`` is noisy on purpose: 30% of the ``larger``,
``word_count`` and ``last_word`` answers carry that task's systematic mistake (the smaller
number, the count plus one, the second-to-last word), so the SFT model makes those mistakes.
DPO then trains on (correct answer, that mistake) pairs of every task, against a frozen copy
of the SFT model (beta 0.1), with an NLL term on the chosen answers (alpha 1.0: plain DPO also
lowers the chosen answers' likelihood, which at this scale costs greedy accuracy).

Printed on held-out data (words and number pairs never seen in training): the preference
accuracy (implicit reward of the correct answer above the mistake's), the rate of each task's
mistake, exact match per task and the end-marker rate, before and after DPO, on
``--eval-per-task`` (300) held-out prompts per task and 400 held-out pairs, the headline rates
with 95% Wilson intervals; then the three claims of the demonstration, each printed [ok] or
[NO] with its figures (:func:`dpo_checks`): held-out preference accuracy >= 0.80; the taught
mistakes' rate at least halved with the 95% intervals before and after disjoint; exact match not
lower. The exit status is 1 when a claim fails, so a regression is visible to a script.
"""
from __future__ import annotations

import argparse
import os
import sys

from minillm.commandline import int_at_least
from minillm.fileio import ExistingOutputError
from minillm.posttrain.cli import headline_rates, report_lines
from minillm.posttrain.dpo import run_dpo
from minillm.posttrain.stage import DPOConfig
from minillm.posttrain.tasks import DEFAULT_EVAL_PER_TASK, format_rate, wilson_interval

MIN_PREFERENCE_ACCURACY = 0.80


def sft_checkpoint(args) -> str:
    """``--checkpoint``, or the SFT model of examples/finetune_sft.py (made now if missing)."""
    if args.checkpoint:
        return args.checkpoint
    path = os.path.join(args.out_dir, "sft", "model.safetensors")
    if os.path.exists(path):
        print(f"using the SFT model {path}")
        return path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import finetune_sft  # noqa: PLC0415  (the sibling example)

    finetune_sft.main(["--out-dir", args.out_dir, "--seed", str(args.seed), "--device", args.device,
                       "--eval-per-task", str(args.eval_per_task)])
    return path


def dpo_checks(summary: dict) -> list[tuple[str, bool]]:
    """The demonstration's claims about a DPO summary, as ``(claim with its figures, passed)``:

    1. held-out preference accuracy >= ``MIN_PREFERENCE_ACCURACY``;
    2. the taught-mistake rate (the ``DEFAULT_NOISE`` tasks' mistakes, pooled) at least halved,
       and its 95% Wilson intervals before and after disjoint (after's upper bound below
       before's lower bound), so the fall is not sampling noise of the held-out prompts;
    3. exact match over all held-out prompts not lower after than before.

    Figures are printed as ``rate [95% interval]``.
    """
    pairs = summary.get("heldout_pairs")
    before, after = headline_rates(summary["before"], pairs), headline_rates(summary["after"], pairs)
    for name in ("exact match", "taught mistake", "preference accuracy"):
        if name not in after or (name != "preference accuracy" and name not in before):
            raise ValueError(f"the DPO summary has no {name!r} counts; expected a run with task evaluation "
                             "(eval_per_task > 0) and held-out pairs (eval_pairs > 0)")
    accuracy = after["preference accuracy"]
    mistakes_before, mistakes_after = before["taught mistake"], after["taught mistake"]
    rate_before, rate_after = (s / n for s, n in (mistakes_before, mistakes_after))
    disjoint = wilson_interval(*mistakes_after)[1] < wilson_interval(*mistakes_before)[0]
    exact_before, exact_after = before["exact match"], after["exact match"]
    return [
        (f"held-out preference accuracy {format_rate(*accuracy)} >= {MIN_PREFERENCE_ACCURACY:.2f}",
         accuracy[0] / accuracy[1] >= MIN_PREFERENCE_ACCURACY),
        (f"taught-mistake rate {format_rate(*mistakes_before)} -> {format_rate(*mistakes_after)}: at most half, "
         "95% intervals disjoint", rate_after <= rate_before / 2 and disjoint),
        (f"exact match {format_rate(*exact_before)} -> {format_rate(*exact_after)}: not lower",
         exact_after[0] / exact_after[1] >= exact_before[0] / exact_before[1]),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="an SFT model; default: run examples/finetune_sft.py first")
    parser.add_argument("--out-dir", default="runs/posttrain")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--nll-alpha", type=float, default=1.0)
    parser.add_argument("--steps", type=int_at_least(1), default=150)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--lora-rank", type=int_at_least(0), default=0, help="0 = full fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-per-task", type=int_at_least(1), default=DEFAULT_EVAL_PER_TASK,
                        help="held-out prompts per task (each rate is printed with its 95%% interval)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--overwrite", action="store_true", help="replace this example's earlier output")
    args = parser.parse_args(argv)

    checkpoint = sft_checkpoint(args)
    name = f"dpo_alpha{args.nll_alpha:g}" + (f"_lora{args.lora_rank}" if args.lora_rank else "")
    cfg = DPOConfig.create({"checkpoint": checkpoint, "out_dir": os.path.join(args.out_dir, name), "beta": args.beta,
                            "nll_alpha": args.nll_alpha, "max_steps": args.steps, "lr": args.lr,
                            "min_lr": args.lr / 10, "batch_size": args.batch_size, "lora_rank": args.lora_rank,
                            "seed": args.seed, "device": args.device, "eval_interval": max(1, args.steps // 3),
                            "eval_per_task": args.eval_per_task, "overwrite": args.overwrite})
    try:
        summary = run_dpo(cfg)
    except ExistingOutputError as error:       # an earlier run of this example: kept unless --overwrite
        print(f"align_dpo.py: error: {error}", file=sys.stderr)
        return 2
    print()
    print(report_lines(summary))
    checks = dpo_checks(summary)
    print("\nclaims (rate [95% Wilson interval]):")
    for text, passed in checks:
        print(f"  [{'ok' if passed else 'NO'}] {text}")
    print(f"DPO took {summary['train_seconds']:.0f} s of training ({summary['minutes']:.1f} min with evaluation)")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
