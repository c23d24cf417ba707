"""Pretraining from scratch: corpus → cleaning → tokenizer → token shards → GPT → trainer.

``run_pretraining(TrainConfig())`` is the main job (``minillm train`` with no arguments): a BPE
tokenizer and a small GPT trained on the embedded Shakespeare corpus, evaluated in bits per
byte, with samples printed and checkpoints saved under ``out_dir``:

    out_dir/tokenizer.json        the tokenizer
    out_dir/data/                 token shards + meta.json (train/validation split)
    out_dir/last.safetensors      the newest state (resume from it with --resume)
    out_dir/best.safetensors      the lowest validation loss
    out_dir/metrics.jsonl         one JSON line per logged step and evaluation
    out_dir/loss.png              the loss curve (when matplotlib is installed)
    out_dir/summary.json          the final figures and samples
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from minillm.backend import manual_seed, to_device
from minillm.data import (
    RandomWindowLoader,
    TokenDataset,
    clean_documents,
    deduplicate,
    default_corpus_path,
    prepare_dataset,
    read_corpus,
    split_train_val,
)
from minillm.distributed import from_main, start_ranks
from minillm.fileio import atomic_write_text
from minillm.nn import GPT
from minillm.tokenizer import END_OF_TEXT, BPETokenizer, CharTokenizer, load_tokenizer, tokenizer_from_dict
from minillm.train.checkpoint import load_checkpoint
from minillm.train.config import DataSection, TrainConfig
from minillm.train.evaluate import evaluate_language_model
from minillm.train.metrics import measure_matmul_peak
from minillm.train.trainer import Trainer, prepare_run_folder


def build_tokenizer(data: DataSection, train_docs: list[str], all_docs: list[str], verbose: bool = True,
                    log=print):
    """The run's tokenizer: loaded from ``data.tokenizer_path``, or trained on the training split
    (BPE) / the whole corpus's character set (char: a held-out character must still encode)."""
    if data.tokenizer_path:
        return load_tokenizer(data.tokenizer_path)
    started = time.perf_counter()
    if data.tokenizer == "char":
        tokenizer = CharTokenizer.train("".join(all_docs), special_tokens=[END_OF_TEXT])
    else:
        tokenizer = BPETokenizer.train(train_docs, vocab_size=data.vocab_size, pattern=data.pattern,
                                       special_tokens=[END_OF_TEXT], verbose=verbose)
    log(f"tokenizer: {data.tokenizer}, {tokenizer.vocab_size} tokens, trained in "
        f"{time.perf_counter() - started:.1f} s")
    return tokenizer


def language_model_loss(model, batch):
    """compute_loss for next-token prediction: batch = (inputs, targets), both (B, T)."""
    inputs, targets = batch
    _, loss = model(inputs, targets)
    return loss, {}


SAMPLE_PROMPTS = ("", "ROMEO:\n", "To be, or not")     # the end-of-run samples (seed + their index)


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, device: str, seed: int,
                temperature: float = 0.8, top_k: int | None = 40) -> str:
    """Continue ``prompt`` with the model (seeded, so the sample is reproducible)."""
    ids = tokenizer.encode(prompt, allowed_special="all") if prompt else [tokenizer.special_tokens[END_OF_TEXT]]
    idx = to_device(np.array([ids], dtype=np.int64), device)  # host: token ids, then moved
    out = model.generate(idx, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    new_ids = [int(i) for i in out[0].tolist()[len(ids):]]
    return prompt + tokenizer.decode(new_ids)


def check_enough_text(docs: list[str], corpus_path: str, min_chars: int) -> None:
    """A train/validation split needs at least 2 characters left after cleaning."""
    total = sum(len(doc) for doc in docs)
    if total < 2:
        raise ValueError(f"--corpus {corpus_path!r} has {total} characters left after cleaning (data.min_chars="
                         f"{min_chars}); expected at least 2 to split into training and validation text")


def check_resume_data(checkpoint, resume_path: str, corpus_path: str, num_tokens: int) -> None:
    """Resuming continues the saved data loader exactly, which needs the same training tokens: a
    different count means the data changed since the checkpoint (caught here, before the model
    is built, with the two paths named)."""
    saved = (checkpoint.loader_state or {}).get("num_tokens")
    if saved is not None and saved != num_tokens:
        raise ValueError(f"--resume {resume_path!r}: the training data changed since the checkpoint was saved: "
                         f"it was trained on {saved:,} tokens, --corpus {corpus_path!r} now gives {num_tokens:,} "
                         "(another corpus, tokenizer, val_fraction or cleaning?); resume with the data it was "
                         "trained on, or start a new run without --resume")


def _barrier(world) -> None:
    if world.distributed:
        world.control().barrier()


def run_pretraining(cfg: TrainConfig, log=print) -> dict:
    """Run the whole pipeline for ``cfg``; returns the summary (also saved as summary.json)."""
    started = time.perf_counter()
    data, loop, optim = cfg.data, cfg.loop, cfg.optim
    # Under mpiexec every rank runs this function; rank 0 alone prints and writes files (the
    # others wait for them at the barriers and read them). Without MPI: one rank, no barriers.
    world, log = start_ranks("sequences", loop, log)   # before any work: the batch split, this rank's GPU
    manual_seed(loop.seed)
    resume_from = load_checkpoint(loop.resume) if loop.resume else None
    from_main(world, lambda: prepare_run_folder(loop, log))   # refuses to replace an earlier run (unless --overwrite)

    corpus_path = data.corpus or default_corpus_path()
    docs, cleaning = clean_documents(read_corpus(corpus_path), min_chars=data.min_chars)
    log(f"corpus: {corpus_path}\n{cleaning}")
    if data.dedup_threshold > 0:
        docs, dedup = deduplicate(docs, threshold=data.dedup_threshold, seed=loop.seed)
        log(str(dedup))
    check_enough_text(docs, corpus_path, data.min_chars)
    train_docs, _ = split_train_val(docs, data.val_fraction)

    data_dir = os.path.join(loop.out_dir, "data")
    if resume_from is not None and resume_from.tokenizer is not None:
        tokenizer = tokenizer_from_dict(resume_from.tokenizer)
    elif world.is_main:
        tokenizer = build_tokenizer(data, train_docs, docs, verbose=loop.progress, log=log)
    if world.is_main:
        tokenizer.save(os.path.join(loop.out_dir, "tokenizer.json"))
        prepare_dataset(docs, tokenizer, data_dir, val_fraction=data.val_fraction,
                        eot_token_id=tokenizer.special_tokens.get(END_OF_TEXT), overwrite=True)
    _barrier(world)
    if not world.is_main:                # rank 0's tokenizer and shards
        tokenizer = load_tokenizer(os.path.join(loop.out_dir, "tokenizer.json"))
    dataset = TokenDataset(data_dir)
    train_tokens, val_tokens = dataset.tokens("train"), dataset.tokens("val")
    if resume_from is not None:
        check_resume_data(resume_from, loop.resume, corpus_path, len(train_tokens))
    log(f"data: {dataset.num_tokens('train'):,} training tokens, {dataset.num_tokens('val'):,} validation "
        f"tokens ({dataset.num_bytes('val') / max(1, dataset.num_tokens('val')):.2f} bytes/token)")

    model_config = cfg.model.build(tokenizer.vocab_size)
    model = GPT(model_config)
    model.to(loop.device)
    log(f"model: {cfg.model.preset} preset, {model_config.n_layer} layers x {model_config.n_embd} wide, "
        f"{model.num_parameters():,} parameters, {loop.precision} on {loop.device}")
    schedule = optim.schedule(loop.max_steps)
    if schedule.warmup_clamped:
        log(f"schedule: optim.warmup_steps={optim.warmup_steps} is longer than the run; warming up over all "
            f"{loop.max_steps} steps")
    optimizer = optim.build_optimizer(optim.param_groups(model.named_parameters()), schedule)
    block_size = model_config.block_size
    loader = RandomWindowLoader(train_tokens, loop.batch_size, block_size, seed=loop.seed)

    def evaluate(model):
        return evaluate_language_model(model, val_tokens, block_size, loop.batch_size,
                                       num_bytes=dataset.num_bytes("val"), device=loop.device,
                                       max_batches=loop.eval_batches)

    sample_prompts = []
    if loop.sample_tokens > 0:      # checked before training, so a run never fails at its very end
        for prompt in SAMPLE_PROMPTS:
            try:
                if prompt:
                    tokenizer.encode(prompt, allowed_special="all")
                sample_prompts.append(prompt)
            except ValueError as error:
                log(f"samples: the prompt {prompt!r} is skipped: {error}")
    trainer = Trainer(model, optimizer, schedule, loop, language_model_loss, loader, evaluate=evaluate,
                      grad_clip=optim.grad_clip, tokens_per_batch=loop.batch_size * block_size,
                      flops_per_token=model.flops_per_token(), peak_flops=measure_matmul_peak(loop.device),
                      checkpoint_metadata={"tokenizer": tokenizer, "train_config": cfg.to_dict()})
    if summary := trainer.parallel_summary():
        log(summary)
    if resume_from is not None:
        trainer.resume(loop.resume)
        log(f"resumed from {loop.resume} at step {trainer.step}")
    records = trainer.fit()
    if not world.is_main:                # rank 0 evaluates, samples and writes the summary
        return {"steps": trainer.step, "records": records}

    evaluations = [r for r in records if r.get("kind") == "eval"]
    final = evaluations[-1] if evaluations else evaluate(model)
    samples = []
    for index, prompt in enumerate(SAMPLE_PROMPTS):
        if prompt in sample_prompts:
            samples.append(sample_text(model, tokenizer, prompt, loop.sample_tokens, loop.device, seed=loop.seed + index))
    summary = {
        "tokenizer": data.tokenizer, "vocab_size": tokenizer.vocab_size, "parameters": model.num_parameters(),
        "steps": trainer.step, "final": {k: v for k, v in final.items() if k != "kind"},
        "best_val_loss": trainer.best_val_loss, "minutes": (time.perf_counter() - started) / 60,
        "curve": [{"step": r["step"], "val_loss": r.get("val_loss"), "val_bpb": r.get("val_bpb")} for r in evaluations],
        "samples": samples, "checkpoint": trainer.checkpoint_path("last"),
    }
    atomic_write_text(os.path.join(loop.out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary
