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

import json
import os
import time

from minillm import functional as F
from minillm.autograd import no_grad
from minillm.backend import item, manual_seed, to_device
from minillm.distributed import current_batch_share, from_main, start_ranks
from minillm.fileio import atomic_write_text
from minillm.posttrain.batches import IGNORE_INDEX, SFTBatchSampler, sft_batch
from minillm.posttrain.datasets import load_sft_jsonl, render_sft_examples
from minillm.posttrain.evaluate import evaluate_tasks, per_task_subset
from minillm.posttrain.lora import parameter_counts
from minillm.posttrain.stage import (
    PROGRESS_PROMPTS_PER_TASK,
    SFTConfig,
    build_optimizer,
    check_paths,
    load_chat_model,
    load_eval_prompts,
    model_source,
    prepare_task_data,
    rank_summary,
    setup_lora,
    train_stage,
)
from minillm.posttrain.tasks import DEFAULT_NOISE
from minillm.train.trainer import prepare_run_folder

# ------------------------------------------------------------------------------------------------
# the loss
# ------------------------------------------------------------------------------------------------

def sft_loss(model, batch):
    """compute_loss for SFT: ``batch = (x, y)``, (B, T) each, y = -100 off the supervised tokens.

        loss = (1/N) Σ_{(b,t): y[b,t] != -100} -log softmax(logits[b, t])[y[b, t]],

    N = the number of supervised tokens in the batch (not B·T: padding and prompt tokens neither
    count nor dilute the mean). A batch without any supervised target raises ValueError (its mean
    would be 0/0). Returns ``(loss, {"supervised_tokens": N})``.

    Data-parallel (a :class:`~minillm.distributed.BatchShare` of N_ranks > 1 installed by the
    Trainer): this rank's rows give ``N_ranks · S_r / N``, S_r the sum of their tokens' losses and
    N the global batch's supervised tokens (all-reduced), so the ranks' average is the mean above
    over the global batch (see :mod:`minillm.distributed.batch_share`); ``supervised_tokens`` is N.
    """
    x, y = batch
    share = current_batch_share()
    (count,) = share.global_counts(item((y != IGNORE_INDEX).sum()))
    if count == 0:
        raise ValueError(f"sft_loss: every target of this batch of shape {tuple(y.shape)} is {IGNORE_INDEX} "
                         "(no assistant token to learn), so the mean loss would be 0/0 = NaN; check the loss "
                         "masks of the data, or use a larger block_size")
    if share.size == 1:
        _, loss = model(x, y)
    else:                # a sum over this rank's tokens (it may hold none), scaled to its share of the mean
        logits, _ = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum") * (share.size / count)
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


def run_sft(cfg: SFTConfig, log=print, stop_at: int | None = None) -> dict:
    """Run SFT as described in the module docstring; returns the summary (also ``summary.json``).

    ``stop_at`` pauses the run after that many steps (the schedule still spans ``max_steps``);
    ``last.safetensors`` then resumes it exactly, and the summary only says ``{"paused_at": step}``.
    """
    check_paths("sft", cfg)
    stage, optim, loop = cfg.sft, cfg.optim, cfg.loop
    world, log = start_ranks("conversations", loop, log)      # data-parallel: rank 0 alone logs and writes
    started = time.perf_counter()
    manual_seed(loop.seed)
    source, hub = model_source(stage)
    from_main(world, lambda: prepare_run_folder(loop, log, reads=(source, stage.data, stage.eval_data)))  # no silent overwrite
    model, tokenizer, template, base_vocab, _ = load_chat_model(source, loop.device, stage.dropout, hub)
    log(f"model: {model.num_parameters():,} parameters; vocabulary {base_vocab} -> {tokenizer.vocab_size} "
        f"(chat markers {sorted(template.marker_ids)}; model rows {model.config.vocab_size})")

    data_path, eval_data = stage.data, stage.eval_data
    if not data_path:
        paths = from_main(world, lambda: prepare_task_data(loop.out_dir, loop.seed, stage.n_sft, stage.n_dpo,
                                                           stage.eval_per_task or 1, noisy=not stage.clean_data))
        data_path, eval_data = paths["sft"], eval_data or paths["eval"]
        log(f"data: generated task files in {os.path.dirname(data_path)} "
            f"({'clean' if stage.clean_data else 'noisy: ' + str(dict(DEFAULT_NOISE))})")
    rendered = render_sft_examples(template, load_sft_jsonl(data_path))
    block_size = model.config.block_size
    sampler = SFTBatchSampler(rendered, loop.batch_size, block_size, pad_id=template.end_id, seed=loop.seed)
    log(f"data: {len(rendered):,} conversations from {data_path} ({sampler.num_truncated} truncated to "
        f"block_size={block_size})")
    eval_prompts = load_eval_prompts(eval_data, data_path, stage.eval_per_task, loop.seed)
    heldout = [template.render([{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}])
               for t in eval_prompts]

    param_groups, counts = None, parameter_counts(model)
    if stage.lora_rank:
        param_groups, counts = setup_lora(model, stage.lora_rank, stage.lora_alpha, stage.lora_dropout,
                                          stage.lora_targets, base_vocab, optim.weight_decay)
        log(f"LoRA: rank {stage.lora_rank}, alpha {stage.lora_alpha} on {len(counts['adapted'])} layers; training "
            f"{counts['trainable']:,} of {counts['total']:,} parameters ({100 * counts['fraction']:.2f}%)")
    schedule = optim.schedule(loop.max_steps)
    optimizer = build_optimizer(model, param_groups, optim, schedule)

    progress_prompts = per_task_subset(eval_prompts, PROGRESS_PROMPTS_PER_TASK)

    def evaluate(model) -> dict:
        result = {}
        if heldout:
            result["val_loss"] = teacher_forced_loss(model, heldout, block_size, template.end_id, device=loop.device)
            # a subset during training (decoding is the slow part); the final figures use all prompts
            tasks = evaluate_tasks(model, template, progress_prompts, stage.max_new_tokens)
            result.update(exact_match=tasks["overall"], end_rate=tasks["end_rate"],
                          tasks={k: v for k, v in tasks.items() if k not in ("replies", "prompts")})
        return result

    before = evaluate_tasks(model, template, eval_prompts, stage.max_new_tokens) \
        if eval_prompts and not loop.resume and world.is_main else None
    if before is not None:
        log(f"before SFT: exact match {before['overall']:.3f}, end-marker rate {before['end_rate']:.3f}")
    mean_length = sum(len(ids) - 1 for ids, _ in rendered) / len(rendered)
    outcome = train_stage("sft", cfg, model, optimizer, schedule, sft_loss, sampler, evaluate if heldout else None,
                          int(loop.batch_size * min(mean_length, block_size)), tokenizer, base_vocab, counts,
                          log, stop_at)
    if outcome.paused is not None:
        return outcome.paused
    if not world.is_main:
        return rank_summary("sft", world, outcome.trainer)
    trainer, records, train_seconds, model_path = outcome.trainer, outcome.records, outcome.train_seconds, \
        outcome.model_path
    after = evaluate_tasks(model, template, eval_prompts, stage.max_new_tokens) if eval_prompts else None
    train_losses = [r["loss"] for r in records if r.get("kind") == "train" and "loss" in r]
    summary = {
        "stage": "sft", "steps": trainer.step, "train_seconds": train_seconds,
        "minutes": (time.perf_counter() - started) / 60, "final_train_loss": train_losses[-1] if train_losses else None,
        "parameters": counts, "data": data_path, "examples": len(rendered),
        "before": _brief(before), "after": _brief(after), "model": model_path,
        "adapters": os.path.join(loop.out_dir, "adapters.safetensors") if stage.lora_rank else None,
    }
    if after is not None:
        log(f"after SFT: exact match {after['overall']:.3f}, end-marker rate {after['end_rate']:.3f}")
    atomic_write_text(os.path.join(loop.out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _brief(result: dict | None) -> dict | None:
    """An evaluate_tasks result without the reply texts (for summaries)."""
    if result is None:
        return None
    return {k: v for k, v in result.items() if k != "replies"}
