"""Supervised fine-tuning (SFT): teach a pretrained GPT to answer in the chat format.

    minillm sft --checkpoint runs/shakespeare/last.safetensors [--data sft.jsonl] [--lora-rank 8]

Pipeline (``run_sft``):

1. load the pretrained checkpoint (model, tokenizer); add the chat markers to the tokenizer
   (``ensure_chat_tokens``) and grow the model's vocabulary to match (``resize_token_embeddings``);
2. optionally wrap chosen Linear layers with LoRA adapters (everything else frozen; the rows of
   the new chat tokens train too, since they never have);
3. train on rendered conversations through the same :class:`~minillm.train.Trainer` as
   pretraining (gradient accumulation, cosine schedule, clipping, checkpoints, exact resume,
   progress bar) with the loss of :func:`sft_loss`: the mean cross-entropy over the
   *supervised* tokens only (assistant replies and their ``<|end|>``);
4. evaluate greedy replies on held-out task prompts (exact match per task, the rate of each
   task's systematic mistake, and the share of replies that end with ``<|end|>``) before and
   after, and save ``model.safetensors`` (merged when LoRA was used: ``load_model`` reads it),
   ``adapters.safetensors`` (LoRA only) and ``summary.json`` under ``out_dir``.

With no ``--data``, the seeded task files (``tasks.write_task_files``) are written to
``out_dir/data``; their SFT set is *noisy* by default (``tasks.DEFAULT_NOISE``: 30% of the
``larger``, ``word_count`` and ``last_word`` answers carry that task's systematic mistake), which
is the flaw that ``minillm dpo`` then removes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from minillm.autograd import no_grad
from minillm.backend import get_array_module, item, manual_seed, random_normal, to_device
from minillm.fileio import atomic_write_text
from minillm.nn import GPT, GPTConfig
from minillm.nn.layers import Linear
from minillm.nn.module import Parameter
from minillm.optim import AdamW, decay_groups
from minillm.posttrain.batches import IGNORE_INDEX, SFTBatchSampler, sft_batch
from minillm.posttrain.chat import ChatTemplate, ensure_chat_tokens
from minillm.posttrain.datasets import load_sft_jsonl, render_sft_examples
from minillm.posttrain.evaluate import evaluate_tasks, per_task_subset
from minillm.posttrain.lora import (apply_lora, lora_param_groups, merge_lora, parameter_counts, save_lora,
                                    train_rows_from)
from minillm.posttrain.tasks import DEFAULT_NOISE, load_eval_jsonl, make_eval_prompts, write_task_files
from minillm.tokenizer import tokenizer_from_dict
from minillm.train.checkpoint import load_checkpoint, save_checkpoint
from minillm.train.trainer import LoopSettings, Trainer

PROGRESS_PROMPTS_PER_TASK = 10     # held-out prompts per task decoded at each evaluation during training

# ------------------------------------------------------------------------------------------------
# vocabulary growth
# ------------------------------------------------------------------------------------------------


def resize_token_embeddings(model: GPT, new_vocab_size: int, noise_scale: float = 0.1) -> GPT:
    """Grow ``model``'s vocabulary to ``new_vocab_size`` ids (the token embedding, and the output
    head when it is untied; a tied head follows the embedding). Returns ``model``.

    New row i (for a new id) = mean of the existing rows + N(0, (noise_scale · σ)²), with σ the
    standard deviation of the existing rows' entries. The mean makes a new token's logit h·ē the
    average of the old tokens' logits (Hewitt 2021), so the grown model predicts what it did
    before (a new id gets about the probability of a typical old token, not a random share); the
    small noise gives each new token a distinct input embedding (``<|user|>`` and
    ``<|assistant|>`` must be told apart). Random numbers come from the global generator.

    ``model.config`` is replaced by a copy with the new ``vocab_size``, so checkpoints saved
    afterwards carry it and ``load_model`` rebuilds the grown shape. Build the optimizer after
    resizing: the grown matrices are new Parameters.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"resize_token_embeddings: model has type {type(model).__name__}; expected a GPT")
    old = model.config.vocab_size
    if isinstance(new_vocab_size, bool) or not isinstance(new_vocab_size, (int, np.integer)) or new_vocab_size < old:
        raise ValueError(f"resize_token_embeddings: new_vocab_size={new_vocab_size!r}; expected an int >= the "
                         f"current vocab_size={old} (shrinking would drop trained rows)")
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) or noise_scale < 0:
        raise ValueError(f"resize_token_embeddings: noise_scale={noise_scale!r}; expected a number >= 0")
    new_vocab_size = int(new_vocab_size)
    if new_vocab_size == old:
        return model
    model.tok_emb.weight = _grown(model.tok_emb.weight, new_vocab_size, noise_scale)
    model.tok_emb.num_embeddings = new_vocab_size
    if model.lm_head is not None:
        if type(model.lm_head) is not Linear:
            raise TypeError(f"resize_token_embeddings: lm_head is a {type(model.lm_head).__name__}; resize "
                            "before applying adapters (apply_lora) to it")
        model.lm_head.weight = _grown(model.lm_head.weight, new_vocab_size, noise_scale)
        model.lm_head.out_features = new_vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=new_vocab_size)
    return model


def _grown(weight: Parameter, rows: int, noise_scale: float) -> Parameter:
    """(V, C) -> (rows, C): the old rows, then mean + noise rows (see resize_token_embeddings)."""
    xp = get_array_module(weight.data)
    old = weight.data                                                   # (V, C)
    extra = rows - old.shape[0]
    mean = old.mean(axis=0, keepdims=True)                              # (1, C)
    std = item(old.std()) * noise_scale
    new_rows = random_normal((extra, old.shape[1]), old.dtype, weight.device, std=std) if std > 0 else \
        xp.zeros((extra, old.shape[1]), dtype=old.dtype)
    new_rows += mean                                                    # (extra, C)
    return Parameter(xp.concatenate([old, new_rows], axis=0), requires_grad=weight.requires_grad)


# ------------------------------------------------------------------------------------------------
# the loss
# ------------------------------------------------------------------------------------------------

def sft_loss(model, batch):
    """compute_loss for SFT: ``batch = (x, y)``, (B, T) each, y = -100 off the supervised tokens.

        loss = (1/N) Σ_{(b,t): y[b,t] != -100} -log softmax(logits[b, t])[y[b, t]],

    N = the number of supervised tokens in the batch (not B·T: padding and prompt tokens neither
    count nor dilute the mean). A batch without any supervised target raises ValueError (its mean
    would be 0/0). Returns ``(loss, {"supervised_tokens": N})``.
    """
    x, y = batch
    count = item((y != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError(f"sft_loss: every target of this batch of shape {tuple(y.shape)} is {IGNORE_INDEX} "
                         "(no assistant token to learn), so the mean loss would be 0/0 = NaN; check the loss "
                         "masks of the data, or use a larger block_size")
    _, loss = model(x, y)
    return loss, {"supervised_tokens": float(count)}


def teacher_forced_loss(model, rendered, block_size: int, pad_id: int, batch_size: int = 64,
                        device: str = "cpu") -> float:
    """Mean cross-entropy over the supervised tokens of ``rendered`` examples (``(ids, mask)``
    pairs), in eval mode without gradients: the SFT loss on held-out conversations."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with no_grad():
            for start in range(0, len(rendered), batch_size):
                x, y = sft_batch(rendered[start:start + batch_size], block_size, pad_id)
                n = int((y != IGNORE_INDEX).sum())
                _, loss = model(to_device(x, device), to_device(y, device))
                total += loss.item() * n
                count += n
    finally:
        model.train(was_training)
    return total / count


# ------------------------------------------------------------------------------------------------
# shared set-up of the post-training runs (SFT and DPO)
# ------------------------------------------------------------------------------------------------

def load_chat_model(checkpoint: str, device: str = "cpu", dropout: float | None = 0.0):
    """The model and tokenizer of ``checkpoint``, ready for chat data.

    Rebuilds the GPT from the checkpoint's config (with ``dropout`` replaced unless None:
    post-training runs default to 0, see ``SFTConfig.dropout``), loads the weights, adds the chat
    markers the tokenizer lacks and grows the vocabulary to match.
    Returns ``(model, tokenizer, template, base_vocab_size, checkpoint)``; ``base_vocab_size`` is the
    tokenizer's vocabulary before the markers were added, i.e. the first id that no pretraining
    ever trained (the model's own vocabulary may be padded beyond the tokenizer's: its unused rows
    then take the new ids, and nothing is resized).
    """
    loaded = load_checkpoint(checkpoint)
    if loaded.tokenizer is None:
        raise ValueError(f"checkpoint {checkpoint!r} holds no tokenizer; post-training needs the tokenizer the "
                         "model was pretrained with (checkpoints written by minillm train have it)")
    values = dict(loaded.model_config)
    if dropout is not None:
        values["dropout"] = float(dropout)
    model = GPT(GPTConfig.from_dict(values))
    model.load_state_dict(loaded.model_state)
    model.to(device)
    tokenizer = tokenizer_from_dict(loaded.tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"checkpoint {checkpoint!r}: the tokenizer has {tokenizer.vocab_size} ids but the model "
                         f"only {model.config.vocab_size} rows; expected a tokenizer no larger than the model's "
                         "vocabulary")
    base_vocab = tokenizer.vocab_size
    ensure_chat_tokens(tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        resize_token_embeddings(model, tokenizer.vocab_size)
    return model, tokenizer, ChatTemplate(tokenizer), base_vocab, loaded


def setup_lora(model: GPT, rank: int, alpha: float, dropout: float, targets, base_vocab: int,
               weight_decay: float):
    """Adapt ``model`` with LoRA and train the rows of new tokens (``base_vocab`` onwards).

    Returns ``(param_groups for AdamW, counts)`` where counts = ``parameter_counts`` (the trained
    share) plus ``"adapted"``, the adapted layer names."""
    adapted = apply_lora(model, targets=targets or None, rank=rank, alpha=alpha, dropout=dropout)
    partial = []
    row_trained = [model.tok_emb.weight] + ([model.lm_head.weight] if model.lm_head is not None else [])
    for parameter in row_trained:
        trained = train_rows_from(parameter, base_vocab)
        if trained:
            partial.append((parameter, trained))
    counts = parameter_counts(model, partial)
    counts["adapted"] = adapted
    return lora_param_groups(model, weight_decay, row_trained=[p for p, _ in partial]), counts


def prepare_task_data(out_dir: str, seed: int, n_sft: int, n_dpo: int, n_eval_per_task: int,
                      noisy: bool = True) -> dict:
    """Write the seeded task files to ``out_dir/data`` (``tasks.write_task_files``) unless the same
    files are there already; returns their paths. ``noisy`` applies ``tasks.DEFAULT_NOISE``."""
    data_dir = os.path.join(out_dir, "data")
    spec = {"seed": seed, "n_sft": n_sft, "n_dpo": n_dpo, "n_eval_per_task": n_eval_per_task,
            "noise": dict(DEFAULT_NOISE) if noisy else {}}
    spec_path = os.path.join(data_dir, "spec.json")
    paths = {kind: os.path.join(data_dir, name) for kind, name in
             (("sft", "sft_train.jsonl"), ("dpo", "dpo_train.jsonl"), ("eval", "eval.jsonl"))}
    if os.path.exists(spec_path) and all(os.path.exists(p) for p in paths.values()):
        with open(spec_path, encoding="utf-8") as handle:
            if json.load(handle) == spec:
                return paths        # same arguments, same files: keep them (a resumed run needs them unchanged)
    paths = write_task_files(data_dir, seed=seed, n_sft=n_sft, n_dpo=n_dpo,
                             noisy=DEFAULT_NOISE if noisy else None, n_eval_per_task=n_eval_per_task)
    atomic_write_text(spec_path, json.dumps(spec, indent=2))
    return paths


def load_eval_prompts(eval_data: str, data: str, eval_per_task: int, seed: int):
    """Held-out task prompts: ``eval_data`` if given, else ``eval.jsonl`` beside ``data`` if it
    exists, else ``make_eval_prompts(eval_per_task, seed)``; [] when ``eval_per_task`` is 0."""
    if eval_per_task == 0:
        return []
    if eval_data:
        return load_eval_jsonl(eval_data)
    beside = os.path.join(os.path.dirname(os.path.abspath(data)), "eval.jsonl") if data else ""
    if beside and os.path.exists(beside):
        return load_eval_jsonl(beside)
    return make_eval_prompts(eval_per_task, seed)


def save_final_model(path: str, model, tokenizer, step: int, train_config: dict, extra: dict) -> None:
    """A plain model checkpoint (no optimizer state) that ``load_model`` reads."""
    save_checkpoint(path, model=model, step=step, tokenizer=tokenizer, train_config=train_config, extra=extra)


def build_optimizer(model, param_groups, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW over ``param_groups`` (LoRA) or over every parameter with the usual decay groups."""
    groups = param_groups if param_groups is not None else decay_groups(model.named_parameters(), weight_decay)
    return AdamW(groups, lr=lr, betas=betas)


def check_run_options(where: str, cfg) -> None:
    """The checks SFT and DPO share: positive counts, a known device, a readable checkpoint."""
    for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "log_interval"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name}={value!r}; expected an int >= 1")
    for name in ("lora_rank", "eval_per_task", "warmup_steps", "seed", "max_new_tokens"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: {name}={value!r}; expected an int >= 0")
    if not cfg.lr > 0 or not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"{where}: lr={cfg.lr!r}, min_lr={cfg.min_lr!r}; expected 0 <= min_lr <= lr and lr > 0")
    if cfg.warmup_steps > cfg.max_steps:
        raise ValueError(f"{where}: warmup_steps={cfg.warmup_steps} > max_steps={cfg.max_steps}; expected at most "
                         "max_steps")
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"{where}: device={cfg.device!r}; expected 'cpu' or 'cuda'")
    if cfg.precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"{where}: precision={cfg.precision!r}; expected 'fp32', 'fp16' or 'bf16'")
    if not cfg.checkpoint:
        raise ValueError(f"{where}: checkpoint is empty; expected the path of the model to start from")
    if not os.path.exists(cfg.checkpoint):
        raise FileNotFoundError(f"{where}: checkpoint {cfg.checkpoint!r} does not exist")
    if cfg.resume and not os.path.exists(cfg.resume):
        raise FileNotFoundError(f"{where}: resume checkpoint {cfg.resume!r} does not exist")


# ------------------------------------------------------------------------------------------------
# the SFT run
# ------------------------------------------------------------------------------------------------

@dataclass
class PostTrainConfig:
    """The options SFT and DPO share (the ``minillm sft`` / ``minillm dpo`` flags); each stage's
    config below changes some defaults and adds its own."""

    checkpoint: str
    data: str = ""
    eval_data: str = ""
    out_dir: str = "runs/sft"
    max_steps: int = 600
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 32
    grad_accum_steps: int = 1
    dropout: float = 0.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ""
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    eval_interval: int = 200
    log_interval: int = 10
    eval_per_task: int = 50
    max_new_tokens: int = 0
    n_sft: int = 20000
    n_dpo: int = 4000
    clean_data: bool = False
    resume: str = ""
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SFTConfig(PostTrainConfig):
    """Everything ``run_sft`` needs (the ``minillm sft`` options).

    ``dropout`` replaces the pretrained model's dropout (default 0: short fine-tuning runs on
    small data learn faster without it, and DPO needs a deterministic policy). ``lora_rank`` 0
    means full fine-tuning. ``data`` empty: generate the seeded task files (``n_sft`` examples,
    noisy unless ``clean_data``) into ``out_dir/data``.
    """


@dataclass
class StageOutcome:
    """What :func:`train_stage` hands back: the trainer and its records, the training time, and
    either ``paused`` (the summary of a run stopped early by ``stop_at``) or the final model's path."""

    trainer: Trainer
    records: list
    train_seconds: float
    paused: dict | None = None
    model_path: str | None = None


def train_stage(stage: str, cfg: PostTrainConfig, model, optimizer, compute_loss, sampler, evaluate,
                tokens_per_batch: int, tokenizer, base_vocab: int, counts: dict, log, stop_at: int | None) -> StageOutcome:
    """The part SFT and DPO share: run the shared Trainer (resuming when asked), then save the
    final model (LoRA adapters saved separately and merged first) as ``out_dir/model.safetensors``."""
    settings = LoopSettings(max_steps=cfg.max_steps, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                            grad_accum_steps=cfg.grad_accum_steps, grad_clip=cfg.grad_clip,
                            eval_interval=cfg.eval_interval, log_interval=cfg.log_interval,
                            progress=cfg.progress, out_dir=cfg.out_dir, precision=cfg.precision)
    extra = {"stage": stage, "base_vocab_size": base_vocab, "lora": counts if cfg.lora_rank else None}
    trainer = Trainer(model, optimizer, settings, compute_loss, sampler, evaluate=evaluate,
                      tokens_per_batch=tokens_per_batch,
                      checkpoint_metadata={"tokenizer": tokenizer, "train_config": cfg.to_dict(), "extra": extra},
                      device=cfg.device)
    if cfg.resume:
        trainer.resume(cfg.resume)
        log(f"resumed from {cfg.resume} at step {trainer.step}")
    train_started = time.perf_counter()
    records = trainer.fit(stop_at)
    train_seconds = time.perf_counter() - train_started
    if trainer.step < cfg.max_steps:
        paused = {"stage": stage, "paused_at": trainer.step, "checkpoint": trainer.checkpoint_path("last")}
        return StageOutcome(trainer, records, train_seconds, paused=paused)
    if cfg.lora_rank:
        save_lora(os.path.join(cfg.out_dir, "adapters.safetensors"), model, base_vocab_size=base_vocab)
        merge_lora(model)
    model_path = os.path.join(cfg.out_dir, "model.safetensors")
    save_final_model(model_path, model, tokenizer, trainer.step, cfg.to_dict(), extra)
    return StageOutcome(trainer, records, train_seconds, model_path=model_path)


def run_sft(cfg: SFTConfig, log=print, stop_at: int | None = None) -> dict:
    """Run SFT as described in the module docstring; returns the summary (also ``summary.json``).

    ``stop_at`` pauses the run after that many steps (the schedule still spans ``max_steps``);
    ``last.safetensors`` then resumes it exactly, and the summary only says ``{"paused_at": step}``.
    """
    check_run_options("sft", cfg)
    started = time.perf_counter()
    manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    model, tokenizer, template, base_vocab, _ = load_chat_model(cfg.checkpoint, cfg.device, cfg.dropout)
    log(f"model: {model.num_parameters():,} parameters; vocabulary {base_vocab} -> {tokenizer.vocab_size} "
        f"(chat markers {sorted(template.marker_ids)}; model rows {model.config.vocab_size})")

    data_path, eval_data = cfg.data, cfg.eval_data
    if not data_path:
        paths = prepare_task_data(cfg.out_dir, cfg.seed, cfg.n_sft, cfg.n_dpo, cfg.eval_per_task or 1,
                                  noisy=not cfg.clean_data)
        data_path, eval_data = paths["sft"], eval_data or paths["eval"]
        log(f"data: generated task files in {os.path.dirname(data_path)} "
            f"({'clean' if cfg.clean_data else 'noisy: ' + str(dict(DEFAULT_NOISE))})")
    rendered = render_sft_examples(template, load_sft_jsonl(data_path))
    block_size = model.config.block_size
    sampler = SFTBatchSampler(rendered, cfg.batch_size, block_size, pad_id=template.end_id, seed=cfg.seed)
    log(f"data: {len(rendered):,} conversations from {data_path} ({sampler.num_truncated} truncated to "
        f"block_size={block_size})")
    eval_prompts = load_eval_prompts(eval_data, data_path, cfg.eval_per_task, cfg.seed)
    heldout = [template.render([{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}])
               for t in eval_prompts]

    param_groups, counts = None, parameter_counts(model)
    if cfg.lora_rank:
        param_groups, counts = setup_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                          cfg.lora_targets, base_vocab, cfg.weight_decay)
        log(f"LoRA: rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on {len(counts['adapted'])} layers; training "
            f"{counts['trainable']:,} of {counts['total']:,} parameters ({100 * counts['fraction']:.2f}%)")
    optimizer = build_optimizer(model, param_groups, cfg.lr, cfg.weight_decay)

    progress_prompts = per_task_subset(eval_prompts, PROGRESS_PROMPTS_PER_TASK)

    def evaluate(model) -> dict:
        result = {}
        if heldout:
            result["val_loss"] = teacher_forced_loss(model, heldout, block_size, template.end_id, device=cfg.device)
            # a subset during training (decoding is the slow part); the final figures use all prompts
            tasks = evaluate_tasks(model, template, progress_prompts, cfg.max_new_tokens)
            result.update(exact_match=tasks["overall"], end_rate=tasks["end_rate"],
                          tasks={k: v for k, v in tasks.items() if k not in ("replies", "prompts")})
        return result

    before = evaluate_tasks(model, template, eval_prompts, cfg.max_new_tokens) if eval_prompts and not cfg.resume \
        else None
    if before is not None:
        log(f"before SFT: exact match {before['overall']:.3f}, end-marker rate {before['end_rate']:.3f}")
    mean_length = sum(len(ids) - 1 for ids, _ in rendered) / len(rendered)
    outcome = train_stage("sft", cfg, model, optimizer, sft_loss, sampler, evaluate if heldout else None,
                          int(cfg.batch_size * min(mean_length, block_size)), tokenizer, base_vocab, counts,
                          log, stop_at)
    if outcome.paused is not None:
        return outcome.paused
    trainer, records, train_seconds, model_path = outcome.trainer, outcome.records, outcome.train_seconds, \
        outcome.model_path
    after = evaluate_tasks(model, template, eval_prompts, cfg.max_new_tokens) if eval_prompts else None
    train_losses = [r["loss"] for r in records if r.get("kind") == "train" and "loss" in r]
    summary = {
        "stage": "sft", "steps": trainer.step, "train_seconds": train_seconds,
        "minutes": (time.perf_counter() - started) / 60, "final_train_loss": train_losses[-1] if train_losses else None,
        "parameters": counts, "data": data_path, "examples": len(rendered),
        "before": _brief(before), "after": _brief(after), "model": model_path,
        "adapters": os.path.join(cfg.out_dir, "adapters.safetensors") if cfg.lora_rank else None,
    }
    if after is not None:
        log(f"after SFT: exact match {after['overall']:.3f}, end-marker rate {after['end_rate']:.3f}")
    atomic_write_text(os.path.join(cfg.out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _brief(result: dict | None) -> dict | None:
    """An evaluate_tasks result without the reply texts (for summaries)."""
    if result is None:
        return None
    return {k: v for k, v in result.items() if k != "replies"}
