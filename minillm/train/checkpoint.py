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

Loading trusts nothing in the file (:func:`load_checkpoint`): the safetensors reader bounds the
header and checks each tensor's SHA-256 (see :mod:`minillm.serialization`); then every metadata
field is checked for type and form, the model config against the weights' shapes (so a config
claiming a 10**12-token vocabulary is refused instead of allocated), and the weights and optimizer
moments must be floating point (F32, F16, BF16 or F64). All of it happens before any tensor is
read or any model built, and every fault is a ``ValueError`` naming the file and the field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from minillm.backend import get_rng_state, to_numpy
from minillm.filechecks import FLOAT_DTYPES, count_field, is_int, is_number, json_kind
from minillm.nn import GPT, GPTConfig
from minillm.serialization import _read_tensors, loads_json_bounded, read_safetensors_header, save_safetensors
from minillm.tokenizer import tokenizer_from_dict

FORMAT = "minillm-checkpoint"
VERSION = 1
JSON_FIELDS = ("model_config", "rng", "optimizer", "loader", "tokenizer", "train_config", "extra")
MAX_JSON_DEPTH = 32                  # far deeper than any field needs (the optimizer's is 4)
# Position tables (RoPE, sinusoidal) are computed from block_size, not stored: they may be as big as
# the weights themselves or this many elements (64 MiB of float32), whichever is larger.
MIN_POSITION_TABLE_LIMIT = 2 ** 24
# The integer counters a batch source keeps in its state (RandomWindowLoader, the post-training samplers).
_LOADER_COUNTERS = ("batches_served", "seed", "batch_size", "block_size", "num_tokens", "epoch", "position",
                    "num_examples", "data_crc32")


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
                    rng_state: dict | None = None, optimizer_state: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout). The optimizer's
    state is ``optimizer.state_dict()``, or ``optimizer_state`` when that was taken already (under
    ZeRO-1 taking it is a collective every rank joins, while one rank writes)."""
    tensors = {f"model.{name}": to_numpy(array) for name, array in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "step": str(int(step)),
        "model_config": json.dumps(model.config.to_dict()),
        "rng": json.dumps(rng_state if rng_state is not None else get_rng_state()),
    }
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    if optimizer_state is not None:
        state = optimizer_state
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


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for anything else.

    Everything is checked before any tensor is read (module docstring); ``verify=False`` skips
    only the tensors' SHA-256 check. Raises FileNotFoundError, or ValueError naming the file and
    the faulty field or tensor.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is a directory; expected a .safetensors file such as "
                         f"{os.path.join(path, 'last.safetensors')!r}")
    infos, metadata, data_start = read_safetensors_header(path)

    def bad(what: str, problem: str):
        raise ValueError(f"checkpoint {path!r}: {what} {problem}")

    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path!r} is a safetensors file but not a minillm checkpoint "
                         f"(metadata format={metadata.get('format')!r:.80}, expected {FORMAT!r})")
    version = count_field(bad, "version", metadata.get("version", "0"))
    if version > VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {version}; this minillm "
                         f"reads versions up to {VERSION}: upgrade minillm")
    if "step" not in metadata:
        bad("field 'step'", "is missing; expected the optimizer step count the checkpoint was saved at")
    step = count_field(bad, "step", metadata["step"])
    decoded = {}
    for key in JSON_FIELDS:
        if key in metadata:
            try:
                decoded[key] = loads_json_bounded(metadata[key], MAX_JSON_DEPTH)
            except ValueError as error:
                bad(f"field {key!r}", f"is not valid JSON: {error}")
    if "model_config" not in decoded:
        bad("field 'model_config'", "is missing; expected the GPTConfig fields of the saved model (JSON)")
    config = _check_model_config(bad, decoded["model_config"])
    for name, info in infos.items():
        if name.startswith(("model.", "optim.")) and info.dtype not in FLOAT_DTYPES:
            bad(f"tensor {name!r}", f"has dtype {info.dtype}; weights and optimizer state must be floating point: "
                                    f"{', '.join(FLOAT_DTYPES)}")
    _check_model_tensors(bad, config, {k[len("model."):]: info for k, info in infos.items() if k.startswith("model.")})
    _check_fields(bad, decoded)

    tensors = _read_tensors(path, infos, data_start, mmap=False, bf16_as="float32", verify=verify)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if "optimizer" in decoded:
        optimizer_state = dict(decoded["optimizer"])
        optimizer_state["state"] = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    return Checkpoint(path=path, step=step, model_config=decoded["model_config"], model_state=model_state,
                      optimizer_state=optimizer_state, rng_state=decoded.get("rng"),
                      loader_state=decoded.get("loader"), tokenizer=decoded.get("tokenizer"),
                      train_config=decoded.get("train_config"), extra=decoded.get("extra", {}))


# ------------------------------------------------------------------------------------------------
# The checks load_checkpoint makes; ``bad(what, problem)`` raises the ValueError naming the file.
# ------------------------------------------------------------------------------------------------

def _check_model_config(bad, values) -> GPTConfig:
    if not isinstance(values, dict):
        bad("field 'model_config'", f"is a JSON {json_kind(values)}; expected an object of GPTConfig fields")
    try:
        return GPTConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        bad("field 'model_config'", f"is not a valid model config: {error}")


def _check_model_tensors(bad, config: GPTConfig, model_infos: dict) -> None:
    """Every parameter the config implies must be in the file with that shape, and the tables it
    computes must be of a size in proportion to the weights: so building the model allocates what
    the file holds, never what its metadata claims. The file may hold more model tensors than the
    config describes (a post-training run's LoRA adapters, ``<layer>.lora_A``/``.lora_B``, which
    the run adds before resuming): those are read from the file, not allocated from the config, and
    ``load_state_dict`` refuses any the model does not have."""
    for name, shape in config.parameter_shapes():   # lazy: stops at the first mismatch
        info = model_infos.get(name)
        if info is None:
            bad("field 'model_config'", f"describes a model with parameter {name!r} of shape {shape}, which the "
                                        f"file lacks (it holds {len(model_infos)} model tensors): config and "
                                        "weights do not belong together")
        if info.shape != shape:
            bad("field 'model_config'", f"implies parameter {name!r} of shape {shape}, but the file's tensor "
                                        f"'model.{name}' has shape {info.shape}: config and weights do not "
                                        "belong together")
    weights = sum(math.prod(info.shape) for info in model_infos.values())
    tables = config.position_table_elements()
    if tables > max(weights, MIN_POSITION_TABLE_LIMIT):
        bad("field 'model_config'", f"has block_size={config.block_size}, whose {config.pos} position tables "
                                    f"({tables:,} elements) would be larger than the weights ({weights:,}) "
                                    f"and than {MIN_POSITION_TABLE_LIMIT:,} elements")


def _pcg64_problem(state) -> str | None:
    """Why ``state`` is not a NumPy PCG64 state (as ``get_rng_state`` writes), or None."""
    if not isinstance(state, dict):
        return f"is a JSON {json_kind(state)}, not an object"
    if state.get("bit_generator") != "PCG64":
        return f"has bit_generator={state.get('bit_generator')!r:.40}, expected 'PCG64'"
    inner = state.get("state")
    if not isinstance(inner, dict) or not all(is_int(inner.get(k)) for k in ("state", "inc")):
        return "lacks state: {state: int, inc: int}"
    if not all(is_int(state.get(k)) for k in ("has_uint32", "uinteger")):
        return "lacks the integers has_uint32 and uinteger"
    try:
        np.random.PCG64().state = state    # host: NumPy's own check of the state, on a scratch generator
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        return f"is refused by NumPy: {error}"
    return None


def _check_fields(bad, decoded: dict) -> None:
    """rng, loader, optimizer, tokenizer, train_config, extra: each absent or of the form its reader
    expects, so a resume never fails half-way with a TypeError."""
    if "rng" in decoded and (problem := _pcg64_problem(decoded["rng"])):
        bad("field 'rng'", f"is not a random generator state: it {problem}")

    if "loader" in decoded:
        loader = decoded["loader"]
        if not isinstance(loader, dict):
            bad("field 'loader'", f"is a JSON {json_kind(loader)}; expected the batch source's state (an object)")
        if "bit_generator" in loader and (problem := _pcg64_problem(loader["bit_generator"])):
            bad("field 'loader'", f"has a bit_generator that {problem}")
        for key in _LOADER_COUNTERS:
            if key in loader and not (is_int(loader[key]) and loader[key] >= 0):
                bad("field 'loader'", f"has {key}={loader[key]!r:.40}; expected a non-negative integer")

    if "optimizer" in decoded:
        _check_optimizer(bad, decoded["optimizer"])

    if "tokenizer" in decoded:
        try:
            tokenizer_from_dict(decoded["tokenizer"])
        except (TypeError, ValueError, KeyError, IndexError) as error:
            bad("field 'tokenizer'", f"is not a valid tokenizer: {error}")

    if "train_config" in decoded:
        train_config = decoded["train_config"]
        if not isinstance(train_config, dict):
            bad("field 'train_config'", f"is a JSON {json_kind(train_config)}; expected an object")
        data = train_config.get("data", {})
        for where, section in (("data.", data), ("", train_config)):   # the value eval reads (flat: older files)
            value = section.get("val_fraction") if isinstance(section, dict) else None
            if value is not None and not (is_number(value) and 0 <= value < 1):
                bad("field 'train_config'", f"has {where}val_fraction={value!r:.40}; expected a number in [0, 1)")

    if "extra" in decoded:
        extra = decoded["extra"]
        if not isinstance(extra, dict):
            bad("field 'extra'", f"is a JSON {json_kind(extra)}; expected an object")
        for key in ("best_val_loss", "grad_norm_mean"):
            if extra.get(key) is not None and not is_number(extra[key]):
                bad("field 'extra'", f"has {key}={extra[key]!r:.40}; expected a number or null")
        scaler = extra.get("grad_scaler")
        if scaler is not None:
            if not isinstance(scaler, dict):
                bad("field 'extra'", f"has grad_scaler as a JSON {json_kind(scaler)}; expected an object or null")
            if not (is_number(scaler.get("scale")) and math.isfinite(scaler["scale"]) and scaler["scale"] > 0):
                bad("field 'extra'", f"has grad_scaler.scale={scaler.get('scale')!r:.40}; expected a positive number")
            for key in ("growth_tracker", "growth_interval", "skipped_steps"):
                if key in scaler and not (is_int(scaler[key]) and scaler[key] >= 0):
                    bad("field 'extra'", f"has grad_scaler.{key}={scaler[key]!r:.40}; expected a non-negative integer")
            if "growth_tracker" not in scaler:
                bad("field 'extra'", "has a grad_scaler without growth_tracker")
            for key in ("growth_factor", "backoff_factor"):
                if key in scaler and not is_number(scaler[key]):
                    bad("field 'extra'", f"has grad_scaler.{key}={scaler[key]!r:.40}; expected a number")
            if "enabled" in scaler and not isinstance(scaler["enabled"], bool):
                bad("field 'extra'", f"has grad_scaler.enabled={scaler['enabled']!r:.40}; expected true or false")


def _check_optimizer(bad, state) -> None:
    """The optimizer's hyperparameters and step counts (its moments are tensors, checked by the
    optimizer's load_state_dict against the parameters)."""
    what = "field 'optimizer'"
    if not isinstance(state, dict):
        bad(what, f"is a JSON {json_kind(state)}; expected an object (optimizer, param_groups, steps)")
    missing = [key for key in ("optimizer", "param_groups", "steps") if key not in state]
    if missing:
        bad(what, f"lacks {missing}; expected the layout written by Optimizer.state_dict()")
    if not isinstance(state["optimizer"], str):
        bad(what, f"has optimizer={state['optimizer']!r:.40}; expected the optimizer's class name")
    groups, steps = state["param_groups"], state["steps"]
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        bad(what, "has param_groups that are not a list of objects")
    for g, group in enumerate(groups):
        params = group.get("params")
        if not isinstance(params, list) or not all(is_int(i) and i >= 0 for i in params):
            bad(what, f"param group {g}: params must be a list of parameter positions (non-negative integers)")
        if "names" in group and (not isinstance(group["names"], list)
                                 or not all(isinstance(n, str) for n in group["names"])):
            bad(what, f"param group {g}: names must be a list of strings")
        for key, value in group.items():
            if key in ("params", "names"):
                continue
            if not (value is None or isinstance(value, (bool, int, float))
                    or (isinstance(value, list) and all(is_number(v) for v in value))):
                bad(what, f"param group {g}: hyperparameter {key}={value!r:.40}; expected a number, a boolean "
                          "or a list of numbers")
    if not isinstance(steps, list) or not all(is_int(i) and i >= 0 for i in steps):
        bad(what, "has steps that are not a list of non-negative integers")


MODEL_HELP = ("a Hugging Face model directory (config.json + model.safetensors: GPT-2, Llama, Mistral) or a hub name "
              "such as gpt2 (downloaded once into ~/.cache/minillm/hub); instead of --checkpoint")


def check_model_choice(section) -> None:
    """A command section with both ``checkpoint`` and ``model`` options takes exactly one of them."""
    if section.checkpoint and section.model:
        raise ValueError(f"{section.name}: --checkpoint={section.checkpoint!r} and --model={section.model!r} are both "
                         "given; expected one of them (the model to start from)")
    if not section.checkpoint and not section.model:
        raise ValueError(f"--checkpoint is required: {section.option('checkpoint').metadata['help']}; or pass --model "
                         "DIR, a Hugging Face model directory or hub name")


def model_source(section) -> tuple[str, bool]:
    """(path or name, whether a hub name may be downloaded) from a section's --model / --checkpoint."""
    return (section.model, True) if section.model else (section.checkpoint, False)


def load_model_for_text(source: str, device: str = "cpu", hub: bool = False, tokenizer_path: str = ""):
    """(model, tokenizer) for a command that reads and writes text (generate, chat, serve): the
    model through :func:`load_model`; the tokenizer from ``tokenizer_path`` when given, else the
    one stored with the model. Refuses a model without one, and a tokenizer with more ids than the
    model's vocabulary."""
    from minillm.tokenizer import load_tokenizer  # noqa: PLC0415

    model, tokenizer, _ = load_model(source, device=device, hub=hub)
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer is None:
        raise ValueError(f"checkpoint {source!r} holds no tokenizer; pass --tokenizer PATH")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"vocab_size={model.config.vocab_size}; expected the tokenizer the model was trained with")
    return model, tokenizer


def load_model(path: str | os.PathLike, device: str = "cpu", dropout: float | None = None, hub: bool = False):
    """(model, tokenizer or None, checkpoint) from a minillm checkpoint file or a Hugging Face model
    directory, the model in eval mode: the one loader of every command that takes a model.

    A directory with a config.json is read as a Hugging Face model (``GPT.from_pretrained``; its tokenizer from the
    files beside it, see :func:`minillm.nn.pretrained.load_pretrained_tokenizer`); with ``hub``, a
    path that does not exist is a hub name (downloaded into the cache). The returned
    :class:`Checkpoint` of a Hugging Face model has step 0, its config and no tensors (they are in
    the model). ``dropout`` (None: the saved value) replaces the model's dropout probability.
    """
    from minillm.nn.pretrained import from_pretrained, load_pretrained_tokenizer, resolve_pretrained  # noqa: PLC0415

    source = os.fspath(path)
    # A missing path named *.safetensors is a checkpoint that is not there (never a hub name to download).
    huggingface = (os.path.isfile(os.path.join(source, "config.json")) if os.path.isdir(source)
                   else not os.path.exists(source) and not source.endswith(".safetensors"))
    if huggingface and (hub or os.path.isdir(source)):      # (a directory without config.json: load_checkpoint says so)
        directory = resolve_pretrained(source)
        model = from_pretrained(directory, device=device, dropout=0.0 if dropout is None else float(dropout))
        tokenizer = load_pretrained_tokenizer(directory)
        checkpoint = Checkpoint(path=directory, step=0, model_config=model.config.to_dict(), model_state={},
                                extra={"source": "huggingface"})
        return model.eval(), tokenizer, checkpoint
    checkpoint = load_checkpoint(source)
    values = dict(checkpoint.model_config)
    if dropout is not None:
        values["dropout"] = float(dropout)
    model = GPT(GPTConfig.from_dict(values))
    model.load_state_dict(checkpoint.model_state)
    model.to(device)
    model.eval()
    tokenizer = None
    if checkpoint.tokenizer is not None:
        tokenizer = tokenizer_from_dict(checkpoint.tokenizer)
    return model, tokenizer, checkpoint
