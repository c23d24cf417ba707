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
mistake, exact match per task and the end-marker rate, before and after DPO; then the three
checks of the demonstration: preference accuracy >= 80%, the taught mistakes' rate at least
halved, exact match not lower.
"""
from __future__ import annotations

import argparse
import os
import sys

from minillm.fileio import ExistingOutputError
from minillm.posttrain.cli import report_lines
from minillm.posttrain.dpo import run_dpo
from minillm.posttrain.stage import DPOConfig
from minillm.posttrain.tasks import DEFAULT_NOISE


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

    finetune_sft.main(["--out-dir", args.out_dir, "--seed", str(args.seed), "--device", args.device])
    return path


def taught_mistake_rate(result: dict) -> float:
    """The mean rate, over the tasks made noisy in the SFT data, of making that task's mistake."""
    rates = result["tasks"]["mistake_rate"]
    return sum(rates[name] for name in DEFAULT_NOISE) / len(DEFAULT_NOISE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="an SFT model; default: run examples/finetune_sft.py first")
    parser.add_argument("--out-dir", default="runs/posttrain")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--nll-alpha", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--overwrite", action="store_true", help="replace this example's earlier output")
    args = parser.parse_args(argv)

    checkpoint = sft_checkpoint(args)
    name = f"dpo_alpha{args.nll_alpha:g}" + (f"_lora{args.lora_rank}" if args.lora_rank else "")
    cfg = DPOConfig.create({"checkpoint": checkpoint, "out_dir": os.path.join(args.out_dir, name), "beta": args.beta,
                            "nll_alpha": args.nll_alpha, "max_steps": args.steps, "lr": args.lr,
                            "min_lr": args.lr / 10, "batch_size": args.batch_size, "lora_rank": args.lora_rank,
                            "seed": args.seed, "device": args.device, "eval_interval": max(1, args.steps // 3),
                            "overwrite": args.overwrite})
    try:
        summary = run_dpo(cfg)
    except ExistingOutputError as error:       # an earlier run of this example: kept unless --overwrite
        print(f"align_dpo.py: error: {error}", file=sys.stderr)
        return 2
    before, after = summary["before"], summary["after"]
    print()
    print(report_lines(summary))
    accuracy = after["heldout_reward_accuracy"]
    mistakes = taught_mistake_rate(before), taught_mistake_rate(after)
    exact = before["exact_match"], after["exact_match"]
    print(f"\nnoisy tasks {sorted(DEFAULT_NOISE)}: taught-mistake rate {mistakes[0]:.3f} -> {mistakes[1]:.3f}")
    checks = [
        (f"held-out preference accuracy {accuracy:.3f} >= 0.80", accuracy >= 0.80),
        (f"taught-mistake rate {mistakes[0]:.3f} -> {mistakes[1]:.3f}, at most half", mistakes[1] <= mistakes[0] / 2),
        (f"exact match {exact[0]:.3f} -> {exact[1]:.3f}, not lower", exact[1] >= exact[0]),
    ]
    for text, passed in checks:
        print(f"  [{'ok' if passed else 'NO'}] {text}")
    print(f"DPO took {summary['train_seconds']:.0f} s of training ({summary['minutes']:.1f} min with evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
