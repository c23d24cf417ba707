"""``minillm train`` and ``minillm eval``."""
from __future__ import annotations

import argparse
import json

from minillm.train.config import TrainConfig


def parse_overrides(tokens: list[str]) -> dict:
    """``["--max_steps", "10", "--lr=1e-3"]`` -> ``{"max_steps": "10", "lr": "1e-3"}``.

    Values stay strings; TrainConfig converts and checks them against each key's type."""
    overrides, index = {}, 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}; overrides look like --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            index += 1
        else:
            if index + 1 >= len(tokens):
                raise ValueError(f"override {token!r} has no value")
            value = tokens[index + 1]
            index += 2
        overrides[key.replace("-", "_")] = value
    return overrides


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="pretrain a GPT (no arguments: the main job on the embedded Shakespeare corpus)",
        description="Pretrain a GPT. Any config key can be overridden: --key value "
                    f"(keys: {', '.join(TrainConfig.keys())}).")
    train.add_argument("--config", help="a TOML config file (see examples/configs/)")
    train.set_defaults(handler=run_train, accepts_overrides=True)

    evaluate = subparsers.add_parser("eval", help="loss, perplexity and bits per byte of a checkpoint on a text")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint (.safetensors) written by training")
    evaluate.add_argument("--input", help="a text file or folder; default: the embedded corpus's validation part")
    evaluate.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    evaluate.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                          help="run the model under minillm.amp.autocast (mixed precision)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--stride", type=int, default=None,
                          help="window stride (default: the block size; smaller gives more context)")
    evaluate.set_defaults(handler=run_eval)


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from minillm.train.pretrain import run_pretraining  # noqa: PLC0415  (heavy imports on demand)

    values = parse_overrides(overrides)
    cfg = TrainConfig.from_toml(args.config, values) if args.config else TrainConfig.from_dict(values, "command line")
    summary = run_pretraining(cfg)
    final = summary["final"]
    print(f"\nfinal validation: loss {final['val_loss']:.4f} nats/token, perplexity {final['val_ppl']:.2f}, "
          f"{final.get('val_bpb', float('nan')):.4f} bits/byte after {summary['steps']} steps "
          f"({summary['minutes']:.1f} min)")
    for sample in summary["samples"]:
        print("-" * 60)
        print(sample)
    print("-" * 60)
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from minillm.data import clean_documents, default_corpus_path, read_corpus, split_train_val  # noqa: PLC0415
    from minillm.train.checkpoint import load_model  # noqa: PLC0415
    from minillm.amp import autocast  # noqa: PLC0415
    from minillm.train.evaluate import evaluate_language_model  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    model, tokenizer, checkpoint = load_model(args.checkpoint, device=args.device)
    if tokenizer is None:
        raise ValueError(f"checkpoint {args.checkpoint!r} holds no tokenizer; cannot encode text")
    if args.input:
        text = "".join(read_corpus(args.input))
        source = args.input
    else:
        val_fraction = (checkpoint.train_config or {}).get("val_fraction", 0.1)
        docs, _ = clean_documents(read_corpus(default_corpus_path()))
        text = "".join(split_train_val(docs, val_fraction)[1])
        source = f"the embedded corpus's last {val_fraction:.0%} (validation split)"
    ids = np.array(tokenizer.encode_ordinary(text), dtype=np.int64)  # host: token ids
    if ids.size < 2:
        raise ValueError(f"--input {source!r} encodes to {ids.size} tokens; need at least 2")
    with autocast(args.precision):
        result = evaluate_language_model(model, ids, model.config.block_size, args.batch_size,
                                         num_bytes=len(text.encode("utf-8")), device=args.device,
                                         stride=args.stride, prefix="")
    result.update(checkpoint=args.checkpoint, text=source, step=checkpoint.step, precision=args.precision)
    print(json.dumps(result, indent=2))
    return 0
