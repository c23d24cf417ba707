"""``minillm train``, ``minillm eval`` and ``minillm export``."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from minillm import commandline
from minillm.amp import PRECISIONS, autocast
from minillm.backend import DEVICES, check_device
from minillm.config import Config, Section, option
from minillm.data import clean_documents, default_corpus_path, read_corpus, split_train_val
from minillm.distributed import current_world
from minillm.doctor import run_doctor
from minillm.nn.pretrained import save_pretrained
from minillm.train import memory
from minillm.train.checkpoint import MODEL_HELP, check_model_choice, load_model, model_source
from minillm.train.config import TrainConfig
from minillm.train.evaluate import evaluate_language_model
from minillm.train.multiple_choice import evaluate_multiple_choice, format_report, read_tasks
from minillm.train.pretrain import run_pretraining


@dataclass
class EvalSection(Section):
    name: ClassVar[str] = "eval"
    title: ClassVar[str] = "what to evaluate on what"

    checkpoint: str = option("", "a checkpoint (.safetensors) written by training")
    model: str = option("", MODEL_HELP)
    input: str = option("", "a text file or folder; empty = the embedded corpus's validation part")
    device: str = option("cpu", "where to run", choices=DEVICES)
    precision: str = option("fp32", "run the model under minillm.amp.autocast (mixed precision)", choices=PRECISIONS)
    batch_size: int = option(16, "windows per batch (with --tasks and --kv_cache false: choices per forward)",
                             minimum=1)
    stride: int | None = option(None, "window stride; none = the block size (smaller gives more context)", minimum=1)
    tasks: str = option("", "a JSONL file of multiple-choice questions {context, choices, label}: report accuracy "
                            "and normalised accuracy instead of the loss")
    kv_cache: bool = option(True, "with --tasks: compute each context once and share it across its choices")
    json: bool = option(False, "with --tasks: print the result as JSON instead of a table")

    def check(self) -> None:
        check_model_choice(self)


@dataclass
class EvalConfig(Config):
    description: ClassVar[str] = ("Loss, perplexity and bits per byte of a checkpoint on a text, or (--tasks) its "
                                  "accuracy on multiple-choice questions.")

    eval: EvalSection = field(default_factory=EvalSection)


@dataclass
class ExportSection(Section):
    name: ClassVar[str] = "export"
    title: ClassVar[str] = "a checkpoint as a Hugging Face model directory"

    paths: list[str] = option([], "CKPT DIR: the checkpoint to export and the directory to write", positional=True,
                              metavar="PATH")
    dtype: str = option("float32", "the dtype of the weights in the files", choices=("float32", "float16", "bfloat16"))
    overwrite: bool = option(False, "replace the files of an existing non-empty directory")

    def check(self) -> None:
        if len(self.paths) != 2:
            raise ValueError(f"export: got {len(self.paths)} paths {self.paths!r:.200}; expected two: CKPT DIR (the "
                             "checkpoint to export and the directory to write)")


@dataclass
class ExportConfig(Config):
    description: ClassVar[str] = ("Write a checkpoint as a Hugging Face model directory (config.json, model.safetensors, "
                                  "generation_config.json, the tokenizer) that transformers' "
                                  "AutoModelForCausalLM.from_pretrained loads: GPT-2 preset -> GPT2LMHeadModel, "
                                  "Llama preset -> LlamaForCausalLM.")
    export: ExportSection = field(default_factory=ExportSection)


def register(subparsers) -> None:
    commandline.register(subparsers, "train", TrainConfig, run_train,
                         help="pretrain a GPT (no arguments: the main job on the embedded Shakespeare corpus)")
    commandline.register(subparsers, "eval", EvalConfig, run_eval,
                         help="loss, perplexity and bits per byte of a checkpoint on a text")
    commandline.register(subparsers, "export", ExportConfig, run_export,
                         help="write a checkpoint as a Hugging Face model directory (GPT-2 or Llama)")
    memory.register(subparsers)


def run_train(cfg: TrainConfig) -> int:
    check_device(cfg.loop.device)       # now, not after the corpus is read and the tokenizer trained
    if cfg.loop.doctor and current_world().is_main:   # under mpiexec rank 0 checks; a failure aborts the job
        run_doctor(cfg)                 # a failed check raises DoctorFailed: exit 4, nothing trained
        print()
    summary = run_pretraining(cfg)
    if "final" not in summary:          # a rank other than 0 of an mpiexec job: rank 0 reports
        return 0
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


def run_eval(cfg: EvalConfig) -> int:
    args = cfg.eval
    source, hub = model_source(args)
    model, tokenizer, checkpoint = load_model(source, device=args.device, hub=hub)
    if tokenizer is None:
        raise ValueError(f"checkpoint {source!r} holds no tokenizer; cannot encode text")
    if args.tasks:
        return run_multiple_choice(args, model, tokenizer, checkpoint, source)
    if args.input:
        text = "".join(read_corpus(args.input))
        text_source = args.input
    else:
        val_fraction = training_value(checkpoint.train_config, "data", "val_fraction", 0.1)
        docs, _ = clean_documents(read_corpus(default_corpus_path()))
        text = "".join(split_train_val(docs, val_fraction)[1])
        text_source = f"the embedded corpus's last {val_fraction:.0%} (validation split)"
    ids = np.array(tokenizer.encode_ordinary(text), dtype=np.int64)  # host: token ids
    if ids.size < 2:
        raise ValueError(f"--input {text_source!r} encodes to {ids.size} tokens; need at least 2")
    with autocast(args.precision):
        result = evaluate_language_model(model, ids, model.config.block_size, args.batch_size,
                                         num_bytes=len(text.encode("utf-8")), device=args.device,
                                         stride=args.stride, prefix="")
    result.update(checkpoint=checkpoint.path, text=text_source, step=checkpoint.step, precision=args.precision)
    print(json.dumps(finite_for_json(result), indent=2, allow_nan=False))
    return 0


def run_multiple_choice(args: EvalSection, model, tokenizer, checkpoint, source: str) -> int:
    """``minillm eval --tasks FILE.jsonl``: accuracy on multiple-choice questions (see
    :mod:`minillm.train.multiple_choice`)."""
    for flag, value in (("--input", args.input), ("--stride", args.stride)):
        if value:
            raise ValueError(f"{flag}={value!r} is for the loss on a text; with --tasks {args.tasks!r} expected "
                             f"no {flag}")
    questions = read_tasks(args.tasks)
    with autocast(args.precision):
        result = evaluate_multiple_choice(model, tokenizer, questions, use_cache=args.kv_cache,
                                          batch_size=args.batch_size)
    if args.json:
        result.update(model=source, tasks=args.tasks, step=checkpoint.step, precision=args.precision)
        print(json.dumps(finite_for_json(result), indent=2, allow_nan=False))
    else:
        print(format_report(result, f"{args.tasks} ({source}, step {checkpoint.step})"))
    return 0


def run_export(cfg: ExportConfig) -> int:
    args = cfg.export
    checkpoint, directory = args.paths
    model, tokenizer, _ = load_model(checkpoint)
    written = save_pretrained(model, directory, tokenizer=tokenizer, overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote {directory}: {', '.join(written)} ({model.num_parameters():,} parameters, {args.dtype})")
    if tokenizer is None:
        print("note: the checkpoint holds no tokenizer; none was written")
    return 0


def finite_for_json(result: dict) -> dict:
    """``result`` with every NaN/Inf figure as null (JSON has no NaN) and a ``note`` saying why
    (also printed on stderr). A non-finite loss makes its perplexity meaningless too."""
    loss = result.get("loss")
    bad = [key for key, value in result.items() if isinstance(value, float) and not math.isfinite(value)]
    if loss is not None and not math.isfinite(loss):
        bad += [key for key in ("ppl",) if key in result and key not in bad]
    if not bad:
        return result
    values = ", ".join(f"{key} {result[key]}" for key in bad)
    note = (f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite ({values}): the model's outputs "
            "overflowed or its weights hold NaN/Inf; written as null because JSON has no NaN")
    print(f"minillm eval: warning: {note}", file=sys.stderr)
    return {**{key: (None if key in bad else value) for key, value in result.items()}, "note": note}


def training_value(train_config: dict | None, section: str, key: str, default):
    """A value of the config a checkpoint was trained with: ``{section: {key: ...}}`` (or the flat
    layout of checkpoints written before the config had sections)."""
    config = train_config or {}
    inner = config.get(section)
    if isinstance(inner, dict) and key in inner:
        return inner[key]
    return config.get(key, default)
