"""What SFT and DPO share: their config sections, loading a model for chat data, LoRA set-up,
the seeded task data, and running a stage through the shared Trainer.

A post-training command's config has three sections (see :mod:`minillm.config`)::

    [sft] or [dpo]   the stage: the starting checkpoint, data, LoRA, evaluation (and DPO's beta...)
    [optim]          the schedule and AdamW (the same section as pretraining's)
    [loop]           the Trainer's loop (the same section as pretraining's)

with the stage's own defaults (``SFTConfig.defaults``, ``DPOConfig.defaults``).

Under ``mpiexec -n N`` (:mod:`minillm.distributed`) every rank runs the whole stage: it reads the
checkpoint and the data, draws the same batches and trains on its 1/N of each batch's rows
through the Trainer (``--zero 1`` included). Rank 0 alone prepares the run folder, generates the
task files (the others wait for it: :func:`minillm.distributed.from_main`), logs, evaluates and writes files
(adapters, ``model.safetensors``, ``summary.json``); the other ranks return a short summary
after training (:func:`rank_summary`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

from minillm.config import Config, Section, option
from minillm.fileio import atomic_write_text
from minillm.nn import GPT
from minillm.nn.vocab import resize_token_embeddings
from minillm.posttrain.lora import (
    apply_lora,
    lora_param_groups,
    merge_lora,
    parameter_counts,
    save_lora,
    train_rows_from,
)
from minillm.posttrain.tasks import (
    DEFAULT_EVAL_PER_TASK,
    DEFAULT_NOISE,
    load_eval_jsonl,
    make_eval_prompts,
    write_task_files,
)
from minillm.tokenizer.chat import ChatTemplate, ensure_chat_tokens
from minillm.train.checkpoint import MODEL_HELP, check_model_choice, load_model, model_source, save_checkpoint
from minillm.train.config import LoopSection, OptimSection
from minillm.train.trainer import Trainer

PROGRESS_PROMPTS_PER_TASK = 10     # held-out prompts per task decoded at each evaluation during training


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
@dataclass
class PostTrainSection(Section):
    """The stage options SFT and DPO share."""

    checkpoint: str = option("", "the checkpoint to start from (pretrained for sft, an sft model.safetensors for dpo)")
    model: str = option("", MODEL_HELP)
    data: str = option("", "a JSON-lines data file (SFT: messages or Alpaca; DPO: prompt/chosen/rejected); empty = "
                       "generate the seeded task files into out_dir/data")
    eval_data: str = option("", "held-out task prompts (eval.jsonl: prompt, task, answer, mistake); empty = "
                            "eval.jsonl beside data, else generated held-out prompts")
    dropout: float = option(0.0, "dropout of the model during this run (replaces the checkpoint's)", minimum=0.0,
                            below=1.0)
    lora_rank: int = option(0, "LoRA rank; 0 = full fine-tuning", minimum=0)
    lora_alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / rank)", above=0.0)
    lora_dropout: float = option(0.0, "dropout on the LoRA adapters' input", minimum=0.0, below=1.0)
    lora_targets: str = option("", "comma-separated Linear names to adapt (q_proj,v_proj,...); empty = every Linear "
                               "in the blocks")
    eval_per_task: int = option(DEFAULT_EVAL_PER_TASK, "held-out prompts per task for exact match (each rate is "
                                "reported with a 95% interval); 0 = no task evaluation", minimum=0)
    max_new_tokens: int = option(0, "greedy decoding limit per reply; 0 = the longest reference reply + 4 tokens",
                                 minimum=0)
    n_sft: int = option(20000, "SFT examples to generate when data is empty", minimum=1)
    n_dpo: int = option(4000, "preference pairs to generate when data is empty", minimum=1)
    clean_data: bool = option(False, "generate SFT data without the deliberate noise")

    def check(self) -> None:
        check_model_choice(self)


@dataclass
class SFTSection(PostTrainSection):
    """``sft``: supervised fine-tuning on chat data."""

    name: ClassVar[str] = "sft"
    title: ClassVar[str] = "supervised fine-tuning: start, data, LoRA, evaluation"


@dataclass
class DPOSection(PostTrainSection):
    """``dpo``: direct preference optimisation against a frozen copy of the starting model."""

    name: ClassVar[str] = "dpo"
    title: ClassVar[str] = "preference optimisation: start, data, LoRA, beta, evaluation"

    beta: float = option(0.1, "DPO beta: the strength of the implicit KL constraint to the reference", above=0.0)
    nll_alpha: float = option(1.0, "weight of the NLL term on the chosen replies (0 = plain DPO)", minimum=0.0)
    eval_pairs: int = option(400, "held-out preference pairs for the preference accuracy; 0 = none", minimum=0)


_POSTTRAIN_DEFAULTS = {"loop.seed": 0, "loop.eval_interval": 200, "loop.sample_tokens": 0, "optim.weight_decay": 0.0,
                       "optim.beta2": 0.95}


@dataclass
class SFTConfig(Config):
    """``minillm sft``: a short run with its own schedule defaults (and seed 0)."""

    description: ClassVar[str] = "Supervised fine-tuning of a pretrained checkpoint on chat data (see minillm.posttrain.sft)."
    defaults: ClassVar[dict] = {**_POSTTRAIN_DEFAULTS, "loop.out_dir": "runs/sft", "loop.max_steps": 600,
                                "optim.lr": 2e-3, "optim.min_lr": 2e-4, "optim.warmup_steps": 20}

    sft: SFTSection = field(default_factory=SFTSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)

    @property
    def stage(self) -> PostTrainSection:
        return self.sft

    def check(self) -> None:
        _check_muon_without_lora(self)


@dataclass
class DPOConfig(Config):
    """``minillm dpo``: a short, gentle run (lower learning rate) from an SFT model."""

    description: ClassVar[str] = "Direct preference optimisation of an SFT model on preference pairs (see minillm.posttrain.dpo)."
    defaults: ClassVar[dict] = {**_POSTTRAIN_DEFAULTS, "loop.out_dir": "runs/dpo", "loop.max_steps": 150,
                                "loop.eval_interval": 50, "optim.lr": 2e-4, "optim.min_lr": 2e-5,
                                "optim.warmup_steps": 10}

    dpo: DPOSection = field(default_factory=DPOSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)

    @property
    def stage(self) -> PostTrainSection:
        return self.dpo

    def check(self) -> None:
        _check_muon_without_lora(self)


def _check_muon_without_lora(cfg) -> None:
    """Muon orthogonalises whole weight matrices; LoRA trains two thin factors of an update instead."""
    if cfg.optim.optimizer == "muon" and cfg.stage.lora_rank:
        raise ValueError(f"optim.optimizer='muon' with {cfg.stage.name}.lora_rank={cfg.stage.lora_rank}: Muon "
                         "orthogonalises whole weight matrices, not LoRA's low-rank factors; use optim.optimizer "
                         "adamw with LoRA, or lora_rank 0 (full fine-tuning) with Muon")


def check_paths(where: str, cfg) -> None:
    """The files a run reads must exist before anything is written."""
    source, hub = model_source(cfg.stage)
    if not os.path.exists(source) and not hub:
        raise FileNotFoundError(f"{where}: checkpoint {source!r} does not exist")
    if cfg.loop.resume and not os.path.exists(cfg.loop.resume):
        raise FileNotFoundError(f"{where}: resume checkpoint {cfg.loop.resume!r} does not exist")


# ------------------------------------------------------------------------------------------------
# data parallelism: who does what
# ------------------------------------------------------------------------------------------------
def rank_summary(stage: str, world, trainer) -> dict:
    """What a rank other than 0 returns: rank 0 evaluates and writes the summary."""
    return {"stage": stage, "steps": trainer.step, "rank": world.rank, "world_size": world.size}


# ------------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------------
def load_chat_model(checkpoint: str, device: str = "cpu", dropout: float | None = 0.0, hub: bool = False):
    """The model and tokenizer of ``checkpoint`` (a minillm checkpoint or a Hugging Face model
    directory; with ``hub``, a hub name: see ``load_model``), ready for chat data.

    Rebuilds the GPT from the checkpoint's config (with ``dropout`` replaced unless None:
    post-training runs default to 0, see ``PostTrainSection.dropout``), loads the weights, adds the chat
    markers the tokenizer lacks and grows the vocabulary to match.
    Returns ``(model, tokenizer, template, base_vocab_size, checkpoint)``; ``base_vocab_size`` is the
    tokenizer's vocabulary before the markers were added, i.e. the first id that no pretraining
    ever trained (the model's own vocabulary may be padded beyond the tokenizer's: its unused rows
    then take the new ids, and nothing is resized).
    """
    model, tokenizer, loaded = load_model(checkpoint, device, dropout=dropout, hub=hub)
    model.train()
    if tokenizer is None:
        raise ValueError(f"checkpoint {checkpoint!r} holds no tokenizer; post-training needs the tokenizer the "
                         "model was pretrained with (checkpoints written by minillm train have it; a Hugging Face "
                         "directory needs tokenizer files beside the weights)")
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


def build_optimizer(model, param_groups, optim: OptimSection, schedule):
    """The optimizer over ``param_groups`` (LoRA) or over every parameter in the usual groups."""
    groups = param_groups if param_groups is not None else optim.param_groups(model.named_parameters())
    return optim.build_optimizer(groups, schedule)


# ------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------
@dataclass
class StageOutcome:
    """What :func:`train_stage` hands back: the trainer and its records, the training time, and
    either ``paused`` (the summary of a run stopped early by ``stop_at``) or the final model's path."""

    trainer: Trainer
    records: list
    train_seconds: float
    paused: dict | None = None
    model_path: str | None = None


def train_stage(stage: str, cfg, model, optimizer, schedule, compute_loss, sampler, evaluate, tokens_per_batch: int,
                tokenizer, base_vocab: int, counts: dict, log, stop_at: int | None) -> StageOutcome:
    """The part SFT and DPO share: run the shared Trainer (resuming when asked), then save the
    final model (LoRA adapters saved separately and merged first) as ``out_dir/model.safetensors``.
    Data-parallel, every rank trains and rank 0 alone writes (the others' outcome has no
    ``model_path``)."""
    loop = cfg.loop
    extra = {"stage": stage, "base_vocab_size": base_vocab, "lora": counts if cfg.stage.lora_rank else None}
    trainer = Trainer(model, optimizer, schedule, loop, compute_loss, sampler, evaluate=evaluate,
                      grad_clip=cfg.optim.grad_clip, tokens_per_batch=tokens_per_batch,
                      checkpoint_metadata={"tokenizer": tokenizer, "train_config": cfg.to_dict(), "extra": extra})
    if summary := trainer.parallel_summary():
        log(summary)
    if loop.resume:
        trainer.resume(loop.resume)
        log(f"resumed from {loop.resume} at step {trainer.step}")
    train_started = time.perf_counter()
    records = trainer.fit(stop_at)
    train_seconds = time.perf_counter() - train_started
    if trainer.step < loop.max_steps:
        paused = {"stage": stage, "paused_at": trainer.step, "checkpoint": trainer.checkpoint_path("last")}
        return StageOutcome(trainer, records, train_seconds, paused=paused)
    if not trainer.world.is_main:
        return StageOutcome(trainer, records, train_seconds)
    if cfg.stage.lora_rank:
        save_lora(os.path.join(loop.out_dir, "adapters.safetensors"), model, base_vocab_size=base_vocab)
        merge_lora(model)
    model_path = os.path.join(loop.out_dir, "model.safetensors")
    save_final_model(model_path, model, tokenizer, trainer.step, cfg.to_dict(), extra)
    return StageOutcome(trainer, records, train_seconds, model_path=model_path)
