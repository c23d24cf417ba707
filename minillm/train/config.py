"""The sections every training command shares, and the pretraining config built from them.

    [model]  ModelSection: the preset and every GPTConfig field (None = the preset's value)
    [data]   DataSection: corpus, tokenizer, cleaning, split (pretraining)
    [optim]  OptimSection: the optimizer (AdamW or Muon), the learning-rate schedule (lr, min_lr,
             warmup_steps), clipping
    [loop]   LoopSection: the Trainer's loop (steps, batches, device, precision, checkpoints, logs)

``TrainConfig`` (``minillm train``) is all four, with the main job's sizes as its defaults; SFT and
DPO (``minillm.posttrain.stage``) take ``optim`` and ``loop`` plus a section of their own. A TOML
file has one table per section; ``[train]`` is read as ``[loop]`` (its name before the sections
were shared). See :mod:`minillm.config` for how values are read and checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from minillm.amp import PRECISIONS
from minillm.backend import DEVICES
from minillm.config import Config, Section, option
from minillm.nn.gpt import CHOICES as MODEL_CHOICES
from minillm.nn.gpt import GPTConfig
from minillm.optim import AdamW, CosineSchedule, Muon, decay_groups, muon_groups


@dataclass
class ModelSection(Section):
    """The model: ``preset`` chooses the family's defaults, every other key overrides one
    :class:`~minillm.nn.GPTConfig` field (None keeps the preset's value; ``vocab_size`` None: the
    tokenizer's size)."""

    name: ClassVar[str] = "model"
    title: ClassVar[str] = "the model (GPTConfig; unset keys take the preset's value)"

    preset: str = option("gpt2", "architecture family: gpt2 (LayerNorm, learned positions, GELU, tied head) or "
                         "llama (RMSNorm, RoPE, SwiGLU, GQA)", choices=("gpt2", "llama"))
    vocab_size: int | None = option(None, "model vocabulary (>= the tokenizer's); none = the tokenizer's size",
                                    minimum=1)
    block_size: int | None = option(None, "context length T", minimum=1)
    n_layer: int | None = option(None, "transformer blocks", minimum=1)
    n_head: int | None = option(None, "query heads per attention layer", minimum=1)
    n_kv_head: int | None = option(None, "key/value heads (grouped-query attention); n_head = multi-head",
                                   minimum=1)
    n_embd: int | None = option(None, "model width C", minimum=1)
    dropout: float | None = option(None, "dropout probability (embeddings, attention, residual branches)",
                                   minimum=0.0, below=1.0)
    bias: bool | None = option(None, "biases in every Linear and LayerNorm")
    norm: str | None = option(None, "normalisation", choices=MODEL_CHOICES["norm"])
    norm_eps: float | None = option(None, "the epsilon inside the norms' square root", above=0.0)
    pos: str | None = option(None, "position encoding", choices=MODEL_CHOICES["pos"])
    rope_theta: float | None = option(None, "RoPE base theta", above=1.0)
    mlp: str | None = option(None, "feed-forward", choices=MODEL_CHOICES["mlp"])
    mlp_hidden: int | None = option(None, "feed-forward hidden width; none = 4C (gelu) or the Llama rule (swiglu)",
                                    minimum=1)
    mlp_multiple_of: int | None = option(None, "SwiGLU hidden width rounds up to a multiple of this", minimum=1)
    gelu_approximate: str | None = option(None, "GELU form", choices=MODEL_CHOICES["gelu_approximate"])
    norm_position: str | None = option(None, "pre-norm (GPT-2, Llama) or post-norm (the original transformer)",
                                       choices=MODEL_CHOICES["norm_position"])
    tie_weights: bool | None = option(None, "share the token embedding with the output head")
    init_std: float | None = option(None, "standard deviation of the normal initialisation", above=0.0)

    def build(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig: the preset, then every key that is set; ``vocab_size`` unless set here."""
        values = {k: v for k, v in self.to_dict().items() if k != "preset" and v is not None}
        values.setdefault("vocab_size", vocab_size)
        if values["vocab_size"] < vocab_size:
            raise ValueError(f"model.vocab_size={values['vocab_size']} is smaller than the tokenizer's {vocab_size} "
                             "ids; expected at least that many rows (or leave it unset)")
        make = GPTConfig.gpt2 if self.preset == "gpt2" else GPTConfig.llama
        return make(**values)


@dataclass
class DataSection(Section):
    """Pretraining data: the corpus, its cleaning and split, and the tokenizer trained on it."""

    name: ClassVar[str] = "data"
    title: ClassVar[str] = "corpus, cleaning, split and tokenizer"

    corpus: str = option("", "text file or folder of .txt files; empty = the embedded Shakespeare corpus")
    tokenizer: str = option("bpe", "tokenizer kind trained on the corpus", choices=("bpe", "char"))
    tokenizer_path: str = option("", "a saved tokenizer JSON to use instead of training one")
    vocab_size: int = option(1024, "BPE vocabulary size (256 bytes + merges + special tokens)", minimum=257)
    pattern: str = option("gpt4", "BPE pre-tokenization split pattern: gpt2, gpt4 or a regex", text=True)
    val_fraction: float = option(0.1, "share of the corpus held out for validation (the tail)", above=0.0,
                                 below=1.0)
    min_chars: int = option(1, "documents shorter than this many characters are dropped when cleaning", minimum=0)
    dedup_threshold: float = option(0.0, "MinHash near-duplicate Jaccard threshold; 0 = exact duplicates only",
                                    minimum=0.0, maximum=1.0)


@dataclass
class OptimSection(Section):
    """The optimizer: AdamW, or Muon (AdamW for what it does not orthogonalise); the learning-rate
    schedule (warmup, cosine decay) is the one owner of the learning rate, for every param group;
    gradient clipping."""

    name: ClassVar[str] = "optim"
    title: ClassVar[str] = "optimizer (AdamW or Muon), learning-rate schedule, clipping"

    optimizer: str = option("adamw", "adamw, or muon (orthogonalised momentum for the blocks' matrices, AdamW for "
                            "the embedding, the head and the vectors)", choices=("adamw", "muon"))
    lr: float = option(2e-3, "peak learning rate (the schedule's)", minimum=0.0)
    min_lr: float = option(2e-4, "learning rate at the end of the cosine decay", minimum=0.0)
    warmup_steps: int = option(50, "linear warmup steps (clamped to max_steps for shorter runs)", minimum=0)
    weight_decay: float = option(0.1, "decoupled weight decay (matrices only; Muon's too)", minimum=0.0)
    beta1: float = option(0.9, "AdamW beta1 (with muon: of the AdamW groups)", minimum=0.0, below=1.0)
    beta2: float = option(0.99, "AdamW beta2", minimum=0.0, below=1.0)
    eps: float = option(1e-8, "AdamW epsilon", above=0.0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 = off", minimum=0.0)
    momentum: float = option(0.95, "(muon) momentum of the orthogonalised updates", minimum=0.0, below=1.0)
    update_rms: float = option(0.2, "(muon) root-mean-square of a matrix update per unit of learning rate",
                               above=0.0)
    ns_steps: int = option(5, "(muon) Newton-Schulz iterations that orthogonalise each update", minimum=1)

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr={self.min_lr!r} is above optim.lr={self.lr!r}; expected "
                             "0 <= min_lr <= lr")

    def schedule(self, total_steps: int):
        """The run's :class:`~minillm.optim.CosineSchedule`."""
        return CosineSchedule(self.lr, self.min_lr, self.warmup_steps, total_steps)

    def param_groups(self, named_parameters, weight_decay: float | None = None) -> list[dict]:
        """The optimizer's groups for a model's ``named_parameters()``: decay_groups (AdamW) or
        muon_groups (Muon), with ``weight_decay`` (None: this section's)."""
        weight_decay = self.weight_decay if weight_decay is None else weight_decay
        if self.optimizer == "muon":
            return muon_groups(named_parameters, weight_decay)
        return decay_groups(named_parameters, weight_decay)

    def build_optimizer(self, param_groups, schedule):
        """The optimizer over ``param_groups`` (or parameters), starting at the schedule's first rate."""
        if self.optimizer == "muon":
            return Muon(param_groups, lr=schedule(0), momentum=self.momentum, ns_steps=self.ns_steps,
                        update_rms=self.update_rms, betas=(self.beta1, self.beta2), eps=self.eps,
                        weight_decay=self.weight_decay)
        return AdamW(param_groups, lr=schedule(0), betas=(self.beta1, self.beta2), eps=self.eps,
                     weight_decay=self.weight_decay)


@dataclass
class LoopSection(Section):
    """The training loop (:class:`~minillm.train.Trainer`): how long, on what, in what precision,
    and what it writes."""

    name: ClassVar[str] = "loop"
    title: ClassVar[str] = "the training loop"

    max_steps: int = option(400, "optimizer steps", minimum=1)
    batch_size: int = option(32, "sequences (or conversations, pairs) per micro-batch", minimum=1)
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", minimum=1)
    seed: int = option(1337, "seed for initialisation, dropout and batch sampling", minimum=0)
    device: str = option("cpu", "where to train", choices=DEVICES)
    precision: str = option("fp32", "compute precision: fp32, or mixed fp16 (dynamic loss scaling) / bf16 "
                            "(see minillm/amp/)", choices=PRECISIONS)
    out_dir: str = option("runs/shakespeare", "folder for checkpoints, metrics and plots")
    eval_interval: int = option(100, "evaluate every this many steps (and at the end)", minimum=1)
    eval_batches: int = option(0, "(pretraining) validation batches per evaluation; 0 = the whole split",
                               minimum=0)
    log_interval: int = option(10, "write a metrics line every this many steps", minimum=1)
    save_interval: int = option(0, "save the 'last' checkpoint every this many steps; 0 = at evaluations",
                                minimum=0)
    on_nonfinite: str = option("stop", "a NaN/Inf loss stops the run, or skips that step", choices=("stop", "skip"))
    max_skips: int = option(10, "with on_nonfinite=skip: stop (an error) after this many consecutive skipped steps",
                            minimum=1)
    spike_factor: float = option(5.0, "log a gradient-norm spike above this multiple of the running mean",
                                 above=0.0)
    sample_tokens: int = option(200, "(pretraining) tokens to sample at the end; 0 = none", minimum=0)
    resume: str = option("", "checkpoint to resume from (exactly where it stopped)")
    overwrite: bool = option(False, "start afresh in an out_dir that holds an earlier run (its checkpoints, metrics "
                             "and summary are deleted first); without it such a run is refused")
    progress: bool = option(True, "show a progress bar")
    doctor: bool = option(False, "(pretraining) run the `minillm doctor` checks on this config first and stop "
                          "(exit status 4) if one fails")
    profile: int = option(0, "profile this many steps after the first (tables printed, out_dir/profile.json); "
                          "0 = off", minimum=0)
    recompute: bool = option(False, "recompute each block's activations in backward instead of keeping them "
                             "(less memory, more time; the same gradients)")
    health_interval: int = option(0, "record per-layer health (gradient/weight norms, update ratios, activations, "
                                  "attention entropy, logit scale) at step 1 and every this many steps into "
                                  "metrics.jsonl, for `minillm health`; 0 = off", minimum=0)
    zero: int = option(0, "(under mpiexec) ZeRO stage: 1 shards AdamW's moments across the ranks; 0 = every rank "
                       "holds all of them", choices=(0, 1))


@dataclass
class TrainConfig(Config):
    """``minillm train``: pretraining from scratch. The defaults are the main job: a 4,096-token BPE
    tokenizer and a small Llama-style model on the embedded Shakespeare corpus, 600 Muon steps of 16
    sequences on a CPU."""

    description: ClassVar[str] = ("Pretrain a GPT: corpus -> cleaning -> tokenizer -> token shards -> model -> "
                                  "trainer. No options: the main job on the embedded Shakespeare corpus.")
    # The main job's recipe, chosen by benchmarks/sweep_main_job.py (README, "The main job"): a
    # Llama-style model with a 4,096-token BPE vocabulary trained by Muon with a strong weight decay
    # (the run sees its corpus 4 times), sized to finish within 5 minutes on 2 cores.
    defaults: ClassVar[dict] = {"model.preset": "llama", "model.n_layer": 4, "model.n_head": 4, "model.n_kv_head": 2,
                                "model.n_embd": 192, "model.block_size": 128, "model.dropout": 0.0,
                                "data.vocab_size": 4096, "optim.optimizer": "muon", "optim.weight_decay": 1.0,
                                "optim.ns_steps": 3, "loop.batch_size": 16, "loop.max_steps": 600,
                                "loop.eval_interval": 150}
    prefer: ClassVar[dict] = {"vocab_size": "data"}

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)
