"""Checkpoints: one safetensors file holding everything a run needs to continue exactly.

Layout (DESIGN.md: safetensors, written atomically, no pickle):

- tensors ``model.<parameter name>``: the weights, as host arrays in their own dtype;
- tensors ``optim.<index>.<buffer>``: the optimizer's per-parameter buffers (AdamW's moments);
- metadata (str -> str, JSON where structured):
  ``format`` = "minillm-checkpoint", ``version``, ``step``, ``model_config`` (GPTConfig fields),
  ``optimizer`` (hyperparameters and step counts), ``rng`` (the global generator's state),
  ``loader`` (the batch sampler's state: the data position), ``tokenizer`` (its full
  definition), ``train_config``, and ``extra`` (run bookkeeping such as the best validation loss).

A resumed run restores all of it, so 10 steps + save + resume + 10 steps reproduces 20
uninterrupted steps bit for bit. Writes go to a temporary file renamed over the target, so a
kill during a save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from minillm.backend import get_rng_state, to_numpy
from minillm.nn import GPT, GPTConfig
from minillm.serialization import load_safetensors, save_safetensors
from minillm.tokenizer import tokenizer_from_dict

FORMAT = "minillm-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns (host arrays; nothing is applied yet)."""

    path: str
    step: int
    model_config: dict
    model_state: dict
    optimizer_state: dict | None = None
    rng_state: dict | None = None
    loader_state: dict | None = None
    tokenizer: dict | None = None
    train_config: dict | None = None
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, *, model, step: int, optimizer=None, loader_state=None,
                    tokenizer=None, train_config: dict | None = None, extra: dict | None = None,
                    rng_state: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    tensors = {f"model.{name}": to_numpy(array) for name, array in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "step": str(int(step)),
        "model_config": json.dumps(model.config.to_dict()),
        "rng": json.dumps(rng_state if rng_state is not None else get_rng_state()),
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        for key, array in state["state"].items():
            tensors[f"optim.{key}"] = to_numpy(array)
        metadata["optimizer"] = json.dumps({k: v for k, v in state.items() if k != "state"})
    if loader_state is not None:
        metadata["loader"] = json.dumps(loader_state)
    if tokenizer is not None:
        metadata["tokenizer"] = json.dumps(tokenizer.to_dict() if hasattr(tokenizer, "to_dict") else tokenizer)
    if train_config is not None:
        metadata["train_config"] = json.dumps(train_config)
    metadata["extra"] = json.dumps(extra or {})
    save_safetensors(path, tensors, metadata)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is a directory; expected a .safetensors file such as "
                         f"{os.path.join(path, 'last.safetensors')!r}")
    tensors, metadata = load_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path!r} is a safetensors file but not a minillm checkpoint "
                         f"(metadata format={metadata.get('format')!r}, expected {FORMAT!r})")
    if _metadata_int(metadata, "version", path, default="0") > VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {metadata['version']}; this minillm "
                         f"reads versions up to {VERSION}: upgrade minillm")
    try:
        decoded = {key: json.loads(metadata[key]) for key in
                   ("model_config", "rng", "optimizer", "loader", "tokenizer", "train_config", "extra")
                   if key in metadata}
    except (KeyError, ValueError) as error:
        raise ValueError(f"checkpoint {path!r} has corrupt metadata: {error}") from None
    step = _metadata_int(metadata, "step", path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if "optimizer" in decoded:
        optimizer_state = dict(decoded["optimizer"])
        optimizer_state["state"] = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    return Checkpoint(path=path, step=step, model_config=decoded["model_config"], model_state=model_state,
                      optimizer_state=optimizer_state, rng_state=decoded.get("rng"),
                      loader_state=decoded.get("loader"), tokenizer=decoded.get("tokenizer"),
                      train_config=decoded.get("train_config"), extra=decoded.get("extra", {}))


def _metadata_int(metadata: dict, key: str, path: str, default: str | None = None) -> int:
    """The metadata value ``key`` (a decimal string, as :func:`save_checkpoint` writes it)."""
    text = metadata.get(key, default)
    if text is None:
        raise ValueError(f"checkpoint {path!r} has corrupt metadata: no {key!r}; expected a whole number")
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        raise ValueError(f"checkpoint {path!r} has corrupt metadata: {key}={text!r}; expected a whole number")
    return int(text)


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """(model, tokenizer or None, checkpoint) from a checkpoint file, the model in eval mode."""
    checkpoint = load_checkpoint(path)
    model = GPT(GPTConfig.from_dict(checkpoint.model_config))
    model.load_state_dict(checkpoint.model_state)
    model.to(device)
    model.eval()
    tokenizer = None
    if checkpoint.tokenizer is not None:
        tokenizer = tokenizer_from_dict(checkpoint.tokenizer)
    return model, tokenizer, checkpoint
