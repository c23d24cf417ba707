"""Direct preference optimisation (DPO, Rafailov et al. 2023), with an optional NLL term.

    minillm dpo --checkpoint runs/sft/model.safetensors [--data pairs.jsonl] --beta 0.1

For a prompt x with a chosen reply y_w and a rejected reply y_l, the policy π_θ (trained) and
the reference π_ref (a frozen copy of the starting model) give sequence log-probabilities over
the reply tokens only (content and ``<|end|>``; prompt and padding excluded):

    log π(y | x) = Σ_t log softmax(logits_t)[y_t]
    r_w = β (log π_θ(y_w|x) - log π_ref(y_w|x)),   r_l = β (log π_θ(y_l|x) - log π_ref(y_l|x))
    L_DPO = -log σ(r_w - r_l)                 (averaged over the batch)

r_w and r_l are the implicit rewards; their difference is the reward margin. At the start
π_θ = π_ref, so every margin is 0 and L = -log σ(0) = ln 2.

Plain DPO only cares about the margin, and at small scale it typically lowers the chosen
replies' likelihood too (both log-probs fall, the rejected faster), which can cost greedy
accuracy. The optional NLL term (``nll_alpha`` = α, as in RPO / Pang et al. 2024) keeps the
chosen replies likely:

    L = L_DPO + α · (1/N_w) Σ_{chosen reply tokens} -log π_θ(y_t | ...)

The reference's log-probs need no gradient: they are computed under ``no_grad`` by the frozen
copy. Logged per step: loss, dpo_loss, nll, reward margin, reward accuracy (share of pairs with
margin > 0), chosen/rejected rewards and the policy's chosen/rejected log-probs.

``F.logsigmoid`` (:mod:`minillm.ops.activation`: forward min(x, 0) - log1p(e^{-|x|}), never
overflowing) gives -log σ; ``sequence_logprobs`` uses the fused cross-entropy, with a twin built
from ``log_softmax`` and an integer-array gather. Both are gradchecked in the tests.
"""
from __future__ import annotations

import json
import math
import os
import time

from minillm import functional as F
from minillm.autograd import no_grad
from minillm.backend import get_array_module, item, manual_seed, to_device, to_numpy
from minillm.distributed import current_batch_share, from_main, start_ranks
from minillm.fileio import atomic_write_text
from minillm.nn import GPT
from minillm.posttrain.batches import IGNORE_INDEX, DPOBatchSampler, dpo_batch
from minillm.posttrain.datasets import load_dpo_jsonl, render_preference_pairs
from minillm.posttrain.evaluate import evaluate_tasks, per_task_subset
from minillm.posttrain.lora import parameter_counts
from minillm.posttrain.stage import (
    PROGRESS_PROMPTS_PER_TASK,
    DPOConfig,
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
from minillm.posttrain.tasks import make_preference_pairs
from minillm.tensor import Tensor
from minillm.train.trainer import prepare_run_folder

# ------------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------------


def _check_targets(logits: Tensor, targets, where: str):
    array = targets.data if isinstance(targets, Tensor) else targets
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ValueError(f"{where}: logits must be a (B, T, V) Tensor, got {getattr(logits, 'shape', logits)!r}")
    if not hasattr(array, "dtype") or array.dtype.kind not in "iu" or tuple(array.shape) != logits.shape[:2]:
        raise ValueError(f"{where}: targets must be an integer array of shape {logits.shape[:2]} (B, T), got "
                         f"{getattr(array, 'dtype', type(targets).__name__)} {getattr(array, 'shape', '')}")
    return array


def sequence_logprobs(logits: Tensor, targets) -> Tensor:
    """Per-row sum of log-probabilities of the targets that are not -100.

        out[b] = Σ_{t: y[b,t] != -100} log softmax(logits[b, t])[y[b, t]]

    Shapes: logits (B, T, V), targets (B, T) -> (B,). Uses the fused cross-entropy with
    ``reduction="none"`` (-log p per position, 0 where ignored), so no (B, T, V) log-softmax is
    kept for backward.
    """
    array = _check_targets(logits, targets, "sequence_logprobs")
    nll = F.cross_entropy(logits, array, ignore_index=IGNORE_INDEX, reduction="none")   # (B, T)
    return -F.sum(nll, axis=-1)                                                          # (B,)


def sequence_logprobs_composed(logits: Tensor, targets) -> Tensor:
    """:func:`sequence_logprobs` from primitives: log_softmax, then a gather by integer arrays."""
    array = _check_targets(logits, targets, "sequence_logprobs_composed")
    xp = get_array_module(array)
    b, t, _ = logits.shape
    logp = F.log_softmax(logits, axis=-1)                                        # (B, T, V)
    valid = array != IGNORE_INDEX
    safe = xp.where(valid, array, 0)                                             # (B, T)
    rows = xp.arange(b)[:, None].repeat(t, axis=1)                               # (B, T)
    cols = xp.arange(t)[None, :].repeat(b, axis=0)                               # (B, T)
    picked = F.getitem(logp, (rows, cols, safe))                                 # (B, T)
    return F.sum(picked * Tensor(valid.astype(logits.dtype)), axis=-1)           # (B,)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen, ref_rejected, beta: float):
    """The DPO loss and its diagnostics from per-pair sequence log-probs (each (B,)).

        r_w = β (π_c - ref_c),  r_l = β (π_r - ref_r),  loss = mean_b -log σ(r_w - r_l)

    ``ref_*`` may be Tensors or arrays (they carry no gradient). Returns ``(loss, stats)`` with
    stats holding the (B,) arrays ``chosen_reward``, ``rejected_reward`` and ``margin``.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"dpo_loss: beta={beta!r}; expected a number > 0")
    ref_c = ref_chosen if isinstance(ref_chosen, Tensor) else Tensor(ref_chosen)
    ref_r = ref_rejected if isinstance(ref_rejected, Tensor) else Tensor(ref_rejected)
    for name, value in (("policy_rejected", policy_rejected), ("ref_chosen", ref_c), ("ref_rejected", ref_r)):
        if value.shape != policy_chosen.shape:
            raise ValueError(f"dpo_loss: {name} has shape {value.shape}; expected {policy_chosen.shape} (one "
                             "log-prob per pair)")
    chosen_reward = (policy_chosen - ref_c.detach()) * float(beta)               # (B,)
    rejected_reward = (policy_rejected - ref_r.detach()) * float(beta)           # (B,)
    margin = chosen_reward - rejected_reward                                     # (B,)
    loss = -F.mean(F.logsigmoid(margin))
    stats = {"chosen_reward": chosen_reward.data, "rejected_reward": rejected_reward.data, "margin": margin.data}
    return loss, stats


def pair_logprobs(model, batch: dict):
    """Sequence log-probs of the chosen and rejected replies of a ``dpo_batch`` dict, in ONE
    forward pass over the (2B, T) stack of both sides. Returns ``(chosen (B,), rejected (B,))``."""
    xp = get_array_module(batch["chosen_x"])
    b = batch["chosen_x"].shape[0]
    x = xp.concatenate([batch["chosen_x"], batch["rejected_x"]], axis=0)         # (2B, T)
    y = xp.concatenate([batch["chosen_y"], batch["rejected_y"]], axis=0)         # (2B, T)
    logits, _ = model(x)                                                         # (2B, T, V)
    logps = sequence_logprobs(logits, y)                                         # (2B,)
    return logps[:b], logps[b:]


def frozen_copy(model: GPT) -> GPT:
    """An independent copy of ``model`` (same config, weights copied, same device) in eval mode
    with every parameter frozen: the DPO reference."""
    copy = GPT(model.config)
    copy.load_state_dict({name: array.copy() for name, array in model.state_dict().items()})
    copy.to(model.device)
    copy.eval()
    for parameter in copy.parameters():
        parameter.requires_grad = False
    return copy


class DPOObjective:
    """``compute_loss`` for the Trainer: DPO against a frozen ``reference`` plus α · NLL(chosen).

    ``objective(model, batch) -> (loss, metrics)`` with batch a ``dpo_batch`` dict on the device.
    The reference's log-probs are computed under ``no_grad``.

    Data-parallel (``mpiexec -n N minillm dpo``): each rank scores its B/N pairs of the global
    batch with the policy and with its own reference copy. The DPO term is a mean over pairs and
    every rank holds as many, so the ranks' average of their means is the global mean as it is;
    the NLL term is a mean over the chosen replies' tokens, which a rank's pairs hold in any
    number, so it is scaled by the global count (:mod:`minillm.distributed.batch_share`). The
    per-pair metrics are means over the rank's pairs, averaged by the Trainer: the global ones.
    """

    def __init__(self, reference, beta: float = 0.1, nll_alpha: float = 0.0):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(f"DPOObjective: beta={beta!r}; expected a number > 0")
        if isinstance(nll_alpha, bool) or not isinstance(nll_alpha, (int, float)) or nll_alpha < 0:
            raise ValueError(f"DPOObjective: nll_alpha={nll_alpha!r}; expected a number >= 0")
        self.reference, self.beta, self.nll_alpha = reference, float(beta), float(nll_alpha)

    def reference_logprobs(self, batch: dict):
        with no_grad():
            chosen, rejected = pair_logprobs(self.reference, batch)
        return chosen.data, rejected.data

    def __call__(self, model, batch: dict):
        # Token counts of the global batch (this rank's own in one process): the NLL term is a
        # mean over the chosen replies' tokens (see minillm.distributed.batch_share).
        share = current_batch_share()
        chosen_tokens, rejected_tokens = share.global_counts(item((batch["chosen_y"] != IGNORE_INDEX).sum()),
                                                             item((batch["rejected_y"] != IGNORE_INDEX).sum()))
        if chosen_tokens == 0 or rejected_tokens == 0:
            raise ValueError("DPO batch: a side has no reply token (every target is -100); expected each pair "
                             "to have reply tokens on both sides")
        ref_chosen, ref_rejected = self.reference_logprobs(batch)
        policy_chosen, policy_rejected = pair_logprobs(model, batch)
        loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        dpo_value = loss.item()
        # mean per chosen token; data-parallel, this rank's share N_ranks · S_r / N of it
        nll = -F.sum(policy_chosen) * (share.size / chosen_tokens)
        if self.nll_alpha:
            loss = loss + nll * self.nll_alpha
        xp = get_array_module(stats["margin"])
        b = policy_chosen.shape[0]
        metrics = {
            "dpo_loss": dpo_value,
            "nll": nll.item(),
            "reward_margin": item(xp.mean(stats["margin"])),
            "reward_accuracy": item((stats["margin"] > 0).sum()) / b,
            "chosen_reward": item(xp.mean(stats["chosen_reward"])),
            "rejected_reward": item(xp.mean(stats["rejected_reward"])),
            "chosen_logp": item(xp.mean(policy_chosen.data)),
            "rejected_logp": item(xp.mean(policy_rejected.data)),
        }
        return loss, metrics


def preference_metrics(model, reference_logps, rendered_pairs, beta: float, block_size: int, pad_id: int,
                       device: str = "cpu", batch_size: int = 64) -> dict:
    """DPO diagnostics on (held-out) pairs: mean loss, reward accuracy (margin > 0), mean margin,
    and ``prefers_chosen`` (the share where log π(chosen) > log π(rejected) outright).

    ``reference_logps``: ``(chosen, rejected)`` host lists from :func:`all_pair_logprobs` of the
    reference (computed once: the reference does not change).
    """
    policy_chosen, policy_rejected = all_pair_logprobs(model, rendered_pairs, block_size, pad_id, device, batch_size)
    ref_chosen, ref_rejected = reference_logps
    losses, correct, prefers, margins = [], 0, 0, []
    for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
        margin = beta * ((pc - rc) - (pr - rr))
        margins.append(margin)
        losses.append(-min(margin, 0.0) + math.log1p(math.exp(-abs(margin))))   # -log σ(margin), stable
        correct += margin > 0
        prefers += pc > pr
    n = len(margins)
    return {"pref_loss": sum(losses) / n, "reward_accuracy": correct / n, "reward_margin": sum(margins) / n,
            "prefers_chosen": prefers / n}


def all_pair_logprobs(model, rendered_pairs, block_size: int, pad_id: int, device: str = "cpu",
                      batch_size: int = 64):
    """``(chosen, rejected)``: host lists of sequence log-probs of every pair, in eval mode, no grad."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        with no_grad():
            for start in range(0, len(rendered_pairs), batch_size):
                batch = dpo_batch(rendered_pairs[start:start + batch_size], block_size, pad_id)
                batch = {key: to_device(value, device) for key, value in batch.items()}
                c, r = pair_logprobs(model, batch)
                chosen += [float(v) for v in to_numpy(c.data).tolist()]
                rejected += [float(v) for v in to_numpy(r.data).tolist()]
    finally:
        model.train(was_training)
    return chosen, rejected


# ------------------------------------------------------------------------------------------------
# the DPO run
# ------------------------------------------------------------------------------------------------

def run_dpo(cfg: DPOConfig, log=print, stop_at: int | None = None) -> dict:
    """Run DPO from ``stage.checkpoint`` (usually an SFT model); returns the summary (also ``summary.json``).

    ``stop_at`` pauses the run as in :func:`~minillm.posttrain.sft.run_sft`.
    """
    check_paths("dpo", cfg)
    stage, optim, loop = cfg.dpo, cfg.optim, cfg.loop
    world, log = start_ranks("preference pairs", loop, log)      # data-parallel: rank 0 alone logs and writes
    started = time.perf_counter()
    manual_seed(loop.seed)
    source, hub = model_source(stage)
    from_main(world, lambda: prepare_run_folder(loop, log, reads=(source, stage.data, stage.eval_data)))  # no silent overwrite
    model, tokenizer, template, base_vocab, _ = load_chat_model(source, loop.device, stage.dropout, hub)
    reference = frozen_copy(model)
    log(f"policy and frozen reference: {model.num_parameters():,} parameters each, from {source}")

    data_path, eval_data = stage.data, stage.eval_data
    if not data_path:
        paths = from_main(world, lambda: prepare_task_data(loop.out_dir, loop.seed, stage.n_sft, stage.n_dpo,
                                                           stage.eval_per_task or 1, noisy=not stage.clean_data))
        data_path, eval_data = paths["dpo"], eval_data or paths["eval"]
    rendered = render_preference_pairs(template, load_dpo_jsonl(data_path))
    block_size = model.config.block_size
    sampler = DPOBatchSampler(rendered, loop.batch_size, block_size, pad_id=template.end_id, seed=loop.seed)
    log(f"data: {len(rendered):,} preference pairs from {data_path}")
    eval_prompts = load_eval_prompts(eval_data, data_path, stage.eval_per_task, loop.seed)
    heldout_pairs = render_preference_pairs(template, make_preference_pairs(stage.eval_pairs, loop.seed, "heldout")) \
        if stage.eval_pairs else []
    reference_logps = all_pair_logprobs(reference, heldout_pairs, block_size, template.end_id, loop.device) \
        if heldout_pairs and world.is_main else None             # rank 0 alone evaluates

    param_groups, counts = None, parameter_counts(model)
    if stage.lora_rank:
        param_groups, counts = setup_lora(model, stage.lora_rank, stage.lora_alpha, stage.lora_dropout,
                                          stage.lora_targets, base_vocab, optim.weight_decay)
        log(f"LoRA: rank {stage.lora_rank} on {len(counts['adapted'])} layers; training {counts['trainable']:,} of "
            f"{counts['total']:,} parameters ({100 * counts['fraction']:.2f}%)")
    schedule = optim.schedule(loop.max_steps)
    optimizer = build_optimizer(model, param_groups, optim, schedule)
    objective = DPOObjective(reference, stage.beta, stage.nll_alpha)

    progress_prompts = per_task_subset(eval_prompts, PROGRESS_PROMPTS_PER_TASK)

    def evaluate(model, full: bool = False) -> dict:
        result = {}
        if heldout_pairs:
            pref = preference_metrics(model, reference_logps, heldout_pairs, stage.beta, block_size, template.end_id,
                                      loop.device)
            result["val_loss"] = pref.pop("pref_loss")
            result.update({f"heldout_{k}": v for k, v in pref.items()})
        if eval_prompts:
            # a subset during training (decoding is the slow part); the final figures use all prompts
            tasks = evaluate_tasks(model, template, eval_prompts if full else progress_prompts, stage.max_new_tokens)
            result.update(exact_match=tasks["overall"], end_rate=tasks["end_rate"],
                          tasks={k: v for k, v in tasks.items() if k not in ("replies", "prompts")})
        return result

    before = evaluate(model, full=True) if (heldout_pairs or eval_prompts) and not loop.resume and world.is_main \
        else None
    if before is not None:
        log("before DPO: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items() if isinstance(v, float)))
    # tokens per micro-batch (both sides of each pair; the reference's forward pass not counted)
    pair_tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) - 2 for p in rendered)
    outcome = train_stage("dpo", cfg, model, optimizer, schedule, objective, sampler,
                          evaluate if (heldout_pairs or eval_prompts) else None,
                          int(loop.batch_size * pair_tokens / len(rendered)), tokenizer, base_vocab, counts,
                          log, stop_at)
    if outcome.paused is not None:
        return outcome.paused
    if not world.is_main:
        return rank_summary("dpo", world, outcome.trainer)
    trainer, records, train_seconds, model_path = outcome.trainer, outcome.records, outcome.train_seconds, \
        outcome.model_path
    after = evaluate(model, full=True) if (heldout_pairs or eval_prompts) else None
    train_records = [r for r in records if r.get("kind") == "train" and "loss" in r]
    summary = {
        "stage": "dpo", "steps": trainer.step, "train_seconds": train_seconds,
        "minutes": (time.perf_counter() - started) / 60, "beta": stage.beta, "nll_alpha": stage.nll_alpha,
        "last_logged": {k: v for k, v in train_records[-1].items() if k != "kind"} if train_records else None,
        "parameters": counts, "data": data_path, "pairs": len(rendered), "heldout_pairs": len(heldout_pairs),
        "before": before, "after": after, "model": model_path,
        "adapters": os.path.join(loop.out_dir, "adapters.safetensors") if stage.lora_rank else None,
    }
    if after is not None:
        log("after DPO: " + ", ".join(f"{k} {v:.3f}" for k, v in after.items() if isinstance(v, float)))
    atomic_write_text(os.path.join(loop.out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


__all__ = ["DPOObjective", "all_pair_logprobs", "dpo_loss", "frozen_copy", "pair_logprobs", "preference_metrics", "run_dpo", "sequence_logprobs",
           "sequence_logprobs_composed"]
