"""Training configuration: one dataclass, TOML files, command-line overrides.

A config file groups keys in tables that mirror the fields' sections::

    [data]
    tokenizer = "bpe"
    vocab_size = 1024
    [model]
    n_layer = 4
    [optim]
    lr = 2e-3
    [train]
    max_steps = 2000

Every key has one flat name, so the command line overrides it directly
(``minillm train --config run.toml --max_steps 500 --lr 1e-3``). An unknown key, a key in the
wrong table, or a value of the wrong type is rejected with a message that lists the valid keys.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _f(default, section: str, help_text: str, choices: tuple | None = None):
    return field(default=default, metadata={"section": section, "help": help_text, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. Defaults are the main job: a small GPT on the
    embedded Shakespeare corpus that trains in under 10 minutes on 2 CPU cores."""

    # -- data -------------------------------------------------------------------------------
    corpus: str = _f("", "data", "text file or folder of .txt files; empty = the embedded Shakespeare corpus")
    tokenizer: str = _f("bpe", "data", "tokenizer kind trained on the corpus", ("bpe", "char"))
    tokenizer_path: str = _f("", "data", "a saved tokenizer JSON to use instead of training one")
    vocab_size: int = _f(1024, "data", "BPE vocabulary size (256 bytes + merges + special tokens)")
    pattern: str = _f("gpt4", "data", "BPE pre-tokenization split pattern: gpt2, gpt4 or a regex")
    val_fraction: float = _f(0.1, "data", "share of the corpus held out for validation (the tail)")
    min_chars: int = _f(1, "data", "documents shorter than this many characters are dropped when cleaning")
    dedup_threshold: float = _f(0.0, "data", "MinHash near-duplicate Jaccard threshold; 0 = exact duplicates only")

    # -- model ------------------------------------------------------------------------------
    preset: str = _f("gpt2", "model", "architecture family", ("gpt2", "llama"))
    n_layer: int = _f(4, "model", "transformer blocks")
    n_head: int = _f(4, "model", "attention heads")
    n_kv_head: int = _f(0, "model", "key/value heads for grouped-query attention; 0 = n_head")
    n_embd: int = _f(192, "model", "model width C")
    block_size: int = _f(128, "model", "context length T")
    dropout: float = _f(0.1, "model", "dropout probability")

    # -- optimizer and schedule ---------------------------------------------------------------
    lr: float = _f(2e-3, "optim", "peak learning rate")
    min_lr: float = _f(2e-4, "optim", "learning rate at the end of the cosine decay")
    warmup_steps: int = _f(50, "optim", "linear warmup steps")
    weight_decay: float = _f(0.1, "optim", "AdamW decoupled weight decay (matrices only)")
    beta1: float = _f(0.9, "optim", "AdamW beta1")
    beta2: float = _f(0.99, "optim", "AdamW beta2")
    grad_clip: float = _f(1.0, "optim", "clip the global gradient norm to this; 0 = off")

    # -- training loop ------------------------------------------------------------------------
    batch_size: int = _f(32, "train", "sequences per micro-batch")
    grad_accum_steps: int = _f(1, "train", "micro-batches per optimizer step")
    max_steps: int = _f(400, "train", "optimizer steps")
    seed: int = _f(1337, "train", "seed for initialisation, dropout and batch sampling")
    device: str = _f("cpu", "train", "where to train", ("cpu", "cuda"))
    precision: str = _f("fp32", "train", "compute precision: fp32, or mixed fp16 (with dynamic loss scaling) / "
                        "bf16 (emulated); see minillm/amp/", ("fp32", "fp16", "bf16"))
    out_dir: str = _f("runs/shakespeare", "train", "folder for checkpoints, metrics and plots")
    eval_interval: int = _f(100, "train", "evaluate every this many steps (and at the end)")
    eval_batches: int = _f(0, "train", "validation batches per evaluation; 0 = the whole validation set")
    log_interval: int = _f(10, "train", "write a metrics line every this many steps")
    save_interval: int = _f(0, "train", "save the 'last' checkpoint every this many steps; 0 = at evaluations")
    on_nonfinite: str = _f("stop", "train", "a NaN/Inf loss stops the run, or skips that step", ("stop", "skip"))
    spike_factor: float = _f(5.0, "train", "log a gradient-norm spike above this multiple of the running mean")
    sample_tokens: int = _f(200, "train", "tokens to sample at the end (0 = none)")
    resume: str = _f("", "train", "checkpoint to resume from (exactly where it stopped)")
    progress: bool = _f(True, "train", "show a progress bar")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"config key {f.name}={value!r} is not valid; expected one of {list(choices)}")
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum_steps",
                    "max_steps", "eval_interval", "log_interval", "vocab_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config key {name}={getattr(self, name)!r} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config key dropout={self.dropout!r} must be in [0, 1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"config key val_fraction={self.val_fraction!r} must be in (0, 1)")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"config key warmup_steps={self.warmup_steps} must be between 0 and "
                             f"max_steps={self.max_steps}; lower warmup_steps for short runs")
        if self.lr < 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"config keys lr={self.lr!r}, min_lr={self.min_lr!r}: expected 0 <= min_lr <= lr")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def sections(cls) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in dataclasses.fields(cls):
            out.setdefault(f.metadata["section"], []).append(f.name)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        """Build from flat ``key: value`` pairs, converting and checking each value's type."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys are: {', '.join(cls.keys())}")
        converted = {name: _convert(name, value, types[name], source) for name, value in values.items()}
        return cls(**converted)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, overrides: dict | None = None) -> "TrainConfig":
        """Read a TOML file (tables [data], [model], [optim], [train] or top-level keys), then
        apply ``overrides`` (flat keys, e.g. parsed from the command line)."""
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML: {error}") from None
        flat = flatten_sections(document, source=os.fspath(path))
        flat.update(overrides or {})
        return cls.from_dict(flat, source=os.fspath(path))


def flatten_sections(document: dict, source: str) -> dict:
    """``{"model": {"n_layer": 4}, "seed": 1}`` -> ``{"n_layer": 4, "seed": 1}``, checking that
    each key sits in its own table."""
    sections = TrainConfig.sections()
    flat: dict = {}
    for key, value in document.items():
        if isinstance(value, dict):
            if key not in sections:
                raise ValueError(f"{source}: unknown table [{key}]; valid tables are "
                                 f"{['[' + s + ']' for s in sections]}")
            for inner, inner_value in value.items():
                if inner not in sections[key]:
                    home = next((s for s, names in sections.items() if inner in names), None)
                    hint = f" (it belongs in [{home}])" if home else f"; valid keys in [{key}]: {sections[key]}"
                    raise ValueError(f"{source}: key {inner!r} is not valid in [{key}]{hint}")
                flat[inner] = inner_value
        else:
            flat[key] = value
    return flat


def _convert(name: str, value, type_name: str, source: str):
    """Coerce ``value`` (possibly a command-line string) to the field's type, or explain why not."""
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if type_name == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if type_name == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{source}: key {name}={value!r} is not a valid {type_name}")
