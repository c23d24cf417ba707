"""Supervised fine-tuning on a CPU in minutes: from a model that never answers to one that does.

    python examples/finetune_sft.py                       # pretrain a small model first, then SFT
    python examples/finetune_sft.py --checkpoint runs/posttrain/pretrain/last.safetensors
    python examples/finetune_sft.py --lora-rank 8          # the same with LoRA adapters

1. Without ``--checkpoint``, pretrain a ~0.85M-parameter GPT (4 layers x 128 wide, context 128)
   on the embedded Shakespeare corpus. Its tokenizer is byte-level BPE with no merges
   (``vocab_size=257``: one token per character, plus ``<|endoftext|>``): the instruction tasks
   ask the model to copy words out of the prompt, and with merges ``" thou"`` in the prompt and
   ``"thou"`` at the start of a reply are different tokens, which a model this small does not
   learn to map in a few hundred steps; with one token per character, copying is copying tokens.
2. SFT (``minillm.posttrain.sft.run_sft``): the chat markers are added to the tokenizer and the
   embedding grows from 257 to 261 rows; the model trains on 20,000 seeded task conversations
   (first/last word, word count, addition, larger number, capitalise, repeat, reverse) whose
   answers are checked by a program. The SFT data is *noisy on purpose*: 30% of the
   ``larger``, ``word_count`` and ``last_word`` answers carry that task's systematic mistake
   (``tasks.DEFAULT_NOISE``), the flaw that ``examples/align_dpo.py`` then removes with DPO.
3. Print held-out exact match per task, how often each task's mistake is made, and the rate
   of replies that end with ``<|end|>``, before and after, on ``--eval-per-task`` (300) held-out
   prompts per task; the headline rates with their 95% Wilson intervals.

Everything is seeded; the printed figures are those of the final model (out_dir/sft/model.safetensors).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from minillm.commandline import int_at_least
from minillm.fileio import ExistingOutputError
from minillm.posttrain.cli import report_lines
from minillm.posttrain.sft import run_sft
from minillm.posttrain.stage import SFTConfig
from minillm.posttrain.tasks import DEFAULT_EVAL_PER_TASK
from minillm.train.config import TrainConfig
from minillm.train.pretrain import run_pretraining

PRETRAIN_STEPS = 800


def pretrain_config(out_dir: str, steps: int) -> TrainConfig:
    """The small byte-level GPT the post-training examples start from (TrainConfig's default seed)."""
    return TrainConfig.create({"out_dir": out_dir, "max_steps": steps, "tokenizer": "bpe", "vocab_size": 257,
                               "preset": "gpt2", "n_kv_head": 4,
                               "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0,
                               "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.1, "lr": 3e-3,
                               "min_lr": 3e-4, "warmup_steps": min(30, steps),
                               "eval_interval": steps, "eval_batches": 8, "sample_tokens": 0})


def pretrained_checkpoint(args) -> str:
    """``--checkpoint``, or a checkpoint pretrained now (reused when it is already there)."""
    if args.checkpoint:
        return args.checkpoint
    out_dir = os.path.join(args.out_dir, "pretrain")
    path = os.path.join(out_dir, "last.safetensors")
    if os.path.exists(path):
        print(f"using the pretrained checkpoint {path}")
        return path
    started = time.perf_counter()
    summary = run_pretraining(pretrain_config(out_dir, args.pretrain_steps))
    print(f"pretrained {summary['parameters']:,} parameters for {summary['steps']} steps in "
          f"{time.perf_counter() - started:.0f} s: validation {summary['final']['val_bpb']:.3f} bits/byte")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="a pretrained checkpoint; default: pretrain one first")
    parser.add_argument("--out-dir", default="runs/posttrain")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--steps", type=int_at_least(1), default=600, help="SFT optimizer steps")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to lr / 10)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--lora-rank", type=int_at_least(0), default=0, help="0 = full fine-tuning")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--clean-data", action="store_true", help="SFT data without the deliberate noise")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task data, initialisation and batch order")
    parser.add_argument("--eval-per-task", type=int_at_least(1), default=DEFAULT_EVAL_PER_TASK,
                        help="held-out prompts per task (each rate is printed with its 95%% interval)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--overwrite", action="store_true", help="replace this example's earlier output")
    args = parser.parse_args(argv)

    checkpoint = pretrained_checkpoint(args)
    name = "sft_lora" if args.lora_rank else "sft"
    cfg = SFTConfig.create({"checkpoint": checkpoint, "out_dir": os.path.join(args.out_dir, name),
                            "max_steps": args.steps, "lr": args.lr, "min_lr": args.lr / 10, "batch_size": args.batch_size,
                            "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "clean_data": args.clean_data,
                            "seed": args.seed, "device": args.device, "eval_interval": max(1, args.steps // 3),
                            "eval_per_task": args.eval_per_task, "overwrite": args.overwrite})
    try:
        summary = run_sft(cfg)
    except ExistingOutputError as error:       # an earlier run of this example: kept unless --overwrite
        print(f"finetune_sft.py: error: {error}", file=sys.stderr)
        return 2
    print()
    print(report_lines(summary))
    print(f"SFT took {summary['train_seconds']:.0f} s of training ({summary['minutes']:.1f} min with evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
