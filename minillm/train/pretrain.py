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
    RandomWindowLoader, TokenDataset, clean_documents, deduplicate, default_corpus_path, prepare_dataset,
    read_corpus, split_train_val,
)
from minillm.fileio import atomic_write_text
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, decay_groups
from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, tokenizer_from_dict
from minillm.train.checkpoint import load_checkpoint
from minillm.train.config import TrainConfig
from minillm.train.evaluate import evaluate_language_model
from minillm.train.metrics import measure_matmul_peak
from minillm.train.trainer import LoopSettings, Trainer

END_OF_TEXT = "<|endoftext|>"


def build_tokenizer(cfg: TrainConfig, train_docs: list[str], all_docs: list[str], log=print):
    """The run's tokenizer: loaded from ``tokenizer_path``, or trained on the training split
    (BPE) / the whole corpus's character set (char: a held-out character must still encode)."""
    if cfg.tokenizer_path:
        return load_tokenizer(cfg.tokenizer_path)
    started = time.perf_counter()
    if cfg.tokenizer == "char":
        tokenizer = CharTokenizer.train("".join(all_docs), special_tokens=[END_OF_TEXT])
    else:
        tokenizer = BPETokenizer.train(train_docs, vocab_size=cfg.vocab_size, pattern=cfg.pattern,
                                       special_tokens=[END_OF_TEXT], verbose=cfg.progress)
    log(f"tokenizer: {cfg.tokenizer}, {tokenizer.vocab_size} tokens, trained in "
        f"{time.perf_counter() - started:.1f} s")
    return tokenizer


def build_model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    shape = dict(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                 n_embd=cfg.n_embd, dropout=cfg.dropout)
    if cfg.preset == "llama":
        return GPTConfig.llama(n_kv_head=cfg.n_kv_head or cfg.n_head, **shape)
    if cfg.n_kv_head and cfg.n_kv_head != cfg.n_head:
        shape["n_kv_head"] = cfg.n_kv_head
    return GPTConfig.gpt2(**shape)


def language_model_loss(model, batch):
    """compute_loss for next-token prediction: batch = (inputs, targets), both (B, T)."""
    inputs, targets = batch
    _, loss = model(inputs, targets)
    return loss, {}


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, device: str, seed: int,
                temperature: float = 0.8, top_k: int | None = 40) -> str:
    """Continue ``prompt`` with the model (seeded, so the sample is reproducible)."""
    ids = tokenizer.encode(prompt, allowed_special="all") if prompt else [tokenizer.special_tokens[END_OF_TEXT]]
    idx = to_device(np.array([ids], dtype=np.int64), device)  # host: token ids, then moved
    out = model.generate(idx, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    new_ids = [int(i) for i in out[0].tolist()[len(ids):]]
    return prompt + tokenizer.decode(new_ids)


def run_pretraining(cfg: TrainConfig, log=print) -> dict:
    """Run the whole pipeline for ``cfg``; returns the summary (also saved as summary.json)."""
    started = time.perf_counter()
    manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    resume_from = load_checkpoint(cfg.resume) if cfg.resume else None

    corpus_path = cfg.corpus or default_corpus_path()
    docs, cleaning = clean_documents(read_corpus(corpus_path), min_chars=cfg.min_chars)
    log(f"corpus: {corpus_path}\n{cleaning}")
    if cfg.dedup_threshold > 0:
        docs, dedup = deduplicate(docs, threshold=cfg.dedup_threshold, seed=cfg.seed)
        log(str(dedup))
    train_docs, _ = split_train_val(docs, cfg.val_fraction)

    if resume_from is not None and resume_from.tokenizer is not None:
        tokenizer = tokenizer_from_dict(resume_from.tokenizer)
    else:
        tokenizer = build_tokenizer(cfg, train_docs, docs, log)
    tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))

    data_dir = os.path.join(cfg.out_dir, "data")
    prepare_dataset(docs, tokenizer, data_dir, val_fraction=cfg.val_fraction,
                    eot_token_id=tokenizer.special_tokens.get(END_OF_TEXT), overwrite=True)
    dataset = TokenDataset(data_dir)
    train_tokens, val_tokens = dataset.tokens("train"), dataset.tokens("val")
    log(f"data: {dataset.num_tokens('train'):,} training tokens, {dataset.num_tokens('val'):,} validation "
        f"tokens ({dataset.num_bytes('val') / max(1, dataset.num_tokens('val')):.2f} bytes/token)")

    model_config = build_model_config(cfg, tokenizer.vocab_size)
    model = GPT(model_config)
    model.to(cfg.device)
    log(f"model: {cfg.preset} preset, {cfg.n_layer} layers x {cfg.n_embd} wide, "
        f"{model.num_parameters():,} parameters, {cfg.precision} on {cfg.device}")
    optimizer = AdamW(decay_groups(model.named_parameters(), cfg.weight_decay), lr=cfg.lr,
                      betas=(cfg.beta1, cfg.beta2))
    loader = RandomWindowLoader(train_tokens, cfg.batch_size, cfg.block_size, seed=cfg.seed)

    def evaluate(model):
        return evaluate_language_model(model, val_tokens, cfg.block_size, cfg.batch_size,
                                       num_bytes=dataset.num_bytes("val"), device=cfg.device,
                                       max_batches=cfg.eval_batches)

    settings = LoopSettings(max_steps=cfg.max_steps, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                            grad_accum_steps=cfg.grad_accum_steps, grad_clip=cfg.grad_clip,
                            eval_interval=cfg.eval_interval, log_interval=cfg.log_interval,
                            save_interval=cfg.save_interval, on_nonfinite=cfg.on_nonfinite,
                            spike_factor=cfg.spike_factor, progress=cfg.progress, out_dir=cfg.out_dir,
                            precision=cfg.precision)
    trainer = Trainer(model, optimizer, settings, language_model_loss, loader, evaluate=evaluate,
                      tokens_per_batch=cfg.batch_size * cfg.block_size,
                      flops_per_token=model.flops_per_token(), peak_flops=measure_matmul_peak(cfg.device),
                      checkpoint_metadata={"tokenizer": tokenizer, "train_config": cfg.to_dict()},
                      device=cfg.device)
    if resume_from is not None:
        trainer.resume(cfg.resume)
        log(f"resumed from {cfg.resume} at step {trainer.step}")
    records = trainer.fit()

    evaluations = [r for r in records if r.get("kind") == "eval"]
    final = evaluations[-1] if evaluations else evaluate(model)
    samples = []
    if cfg.sample_tokens > 0:
        for index, prompt in enumerate(["", "ROMEO:\n", "To be, or not"]):
            samples.append(sample_text(model, tokenizer, prompt, cfg.sample_tokens, cfg.device, seed=cfg.seed + index))
    summary = {
        "tokenizer": cfg.tokenizer, "vocab_size": tokenizer.vocab_size, "parameters": model.num_parameters(),
        "steps": trainer.step, "final": {k: v for k, v in final.items() if k != "kind"},
        "best_val_loss": trainer.best_val_loss, "minutes": (time.perf_counter() - started) / 60,
        "curve": [{"step": r["step"], "val_loss": r.get("val_loss"), "val_bpb": r.get("val_bpb")} for r in evaluations],
        "samples": samples, "checkpoint": trainer.checkpoint_path("last"),
    }
    atomic_write_text(os.path.join(cfg.out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary
