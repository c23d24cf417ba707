"""LoRA: low-rank adapters on chosen Linear layers, the base weights frozen (Hu et al., 2021).

A Linear layer y = x W^T + b (W: out × in) gets a trainable low-rank update ΔW = s · B A with
A (r × in), B (out × r), r << min(in, out) and the scale s = alpha / r:

    y = x W^T + b + s · dropout(x) A^T B^T

B starts at zero, so an adapted model computes exactly what the base model does until training
moves B; A starts like a Linear weight, U(-1/sqrt(in), 1/sqrt(in)) (a zero A and a zero B would
give both zero gradients forever). Only A and B train: r · (in + out) numbers per layer instead
of in · out. Dividing by r keeps the update's size roughly independent of the rank, so alpha
need not be retuned when r changes.

    apply_lora(model, targets=("q_proj", "v_proj"), rank=8, alpha=16)   # swaps the Linears
    ... train (only requires_grad parameters reach the optimizer) ...
    save_lora("adapters.safetensors", model)        # only A, B (and trained new-token rows)
    merge_lora(model)                               # W <- W + s·B A; plain Linears again

``apply_lora`` replaces submodules by attribute assignment (``attn.q_proj = LoRALinear(...)``);
no class is patched. A :class:`LoRALinear` holds the base layer's own ``weight`` and ``bias``
Parameters under the same names, so ``blocks.0.attn.q_proj.weight`` keeps its name and the
adapters add ``blocks.0.attn.q_proj.lora_A`` and ``.lora_B``.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from minillm import functional as F
from minillm.backend import get_array_module, get_rng_state, random_uniform, set_rng_state, to_device, to_numpy
from minillm.filechecks import FLOAT_DTYPES, count_field, is_int, is_number, json_kind
from minillm.nn.layers import Linear
from minillm.nn.module import Module, Parameter
from minillm.nn.vocab import resize_token_embeddings
from minillm.optim.groups import assign_groups, trainable_parameters
from minillm.serialization import (
    _read_tensors,
    _reject_duplicate_keys,
    loads_json_bounded,
    read_safetensors_header,
    save_safetensors,
)
from minillm.tensor import Tensor

LORA_FORMAT = "minillm-lora"
LORA_VERSION = 1
# Every matrix inside the transformer blocks (attention and both MLP kinds); the output head
# and the embeddings are not adapted by default.
BLOCK_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SHORT_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
                "up": "up_proj", "down": "down_proj"}


class LoRALinear(Module):
    """A frozen Linear plus a trainable low-rank update: y = x W^T + b + (alpha/r)·dropout(x) A^T B^T.

    Args:
        base: the Linear to adapt; its ``weight`` and ``bias`` Parameters are reused (not copied)
            and frozen (``requires_grad = False``).
        rank: r >= 1. alpha: the scale numerator (s = alpha / r), > 0.
        dropout: dropout probability on the adapter's input (training mode only).
    Shapes: x (..., in_features) -> y (..., out_features); lora_A (r, in), lora_B (out, r).
    """

    def __init__(self, base: Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear: base has type {type(base).__name__}; expected a minillm.nn.Linear")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"LoRALinear: rank={rank!r}; expected an int >= 1")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"LoRALinear: alpha={alpha!r}; expected a number > 0")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout={dropout!r}; expected a probability in [0, 1)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        base.weight.requires_grad = False
        self.weight = base.weight
        self.bias = base.bias
        if base.bias is not None:
            base.bias.requires_grad = False
        w = base.weight
        bound = 1.0 / math.sqrt(self.in_features)
        a = random_uniform((self.rank, self.in_features), w.dtype, w.device)     # U[0, 1)
        a *= 2 * bound
        a -= bound                                                              # U(-bound, bound)
        self.lora_A = Parameter(a)
        self.lora_B = Parameter(get_array_module(w.data).zeros((self.out_features, self.rank), dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)                            # (..., out)
        h = F.dropout(x, self.dropout, self.training)                      # (..., in)
        update = F.linear(F.linear(h, self.lora_A), self.lora_B)           # (..., r) -> (..., out)
        return y + update * self.scale

    def delta_weight(self):
        """ΔW = (alpha / r) · B A as an xp array (out, in)."""
        return (self.lora_B.data @ self.lora_A.data) * self.scale          # (out, r) @ (r, in)

    def merge(self) -> Linear:
        """A plain Linear with W + (alpha/r)·B A and the same bias: computes what this layer
        computes in eval mode. Its parameters are trainable, as in a freshly built Linear."""
        w = self.weight
        state = get_rng_state()      # Linear() draws an initialisation we overwrite: leave the stream as it was
        merged = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=w.dtype, device=w.device)
        set_rng_state(state)
        merged.weight = Parameter(w.data + self.delta_weight().astype(w.dtype, copy=False))
        if self.bias is not None:
            merged.bias = Parameter(self.bias.data.copy())
        return merged

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.dropout}")


def _normalise_targets(targets) -> tuple[str, ...] | None:
    if targets is None:
        return None
    if isinstance(targets, str):
        targets = [t for t in targets.split(",") if t.strip()]
    if not isinstance(targets, (list, tuple)) or not targets or \
            not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f"targets={targets!r}; expected a non-empty list of Linear attribute names such as "
                         f"{list(BLOCK_LINEAR_NAMES)} (short forms q, k, v, o, gate, up, down work too) or None")
    return tuple(_SHORT_NAMES.get(t.strip(), t.strip()) for t in targets)


def _linear_slots(model: Module):
    """(owner module, attribute name, dotted name, Linear) for every plain Linear in ``model``."""
    for owner_name, owner in model.named_modules():
        for attribute, child in owner._modules.items():
            if type(child) is Linear:
                yield owner, attribute, f"{owner_name}.{attribute}" if owner_name else attribute, child


def apply_lora(model: Module, targets=None, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               freeze: bool = True) -> list[str]:
    """Replace the chosen Linear submodules of ``model`` by :class:`LoRALinear`; returns their names.

    Args:
        targets: attribute names of the Linears to adapt (``"q_proj"``, ``"v"``, ``"lm_head"`` ...),
            matched against the last part of each submodule's name; each must match at least one
            Linear. None adapts every Linear inside the transformer blocks (``BLOCK_LINEAR_NAMES``).
        rank, alpha, dropout: see :class:`LoRALinear`.
        freeze: set ``requires_grad = False`` on every other parameter, so only the adapters train.
    """
    names = _normalise_targets(targets)
    slots = list(_linear_slots(model))
    wanted = names if names is not None else BLOCK_LINEAR_NAMES
    chosen = [slot for slot in slots if slot[1] in wanted and (names is not None or ".blocks." in f".{slot[2]}")]
    if names is not None:
        missing = [t for t in names if not any(slot[1] == t for slot in chosen)]
        if missing:
            available = sorted({slot[1] for slot in slots})
            raise ValueError(f"apply_lora: targets {missing} match no Linear layer of the model; expected "
                             f"names from {available}")
    if not chosen:
        raise ValueError("apply_lora: the model has no Linear layer to adapt (already adapted, or targets "
                         f"match nothing); Linear layers found: {sorted({slot[2] for slot in slots})}")
    if freeze:
        for parameter in model.parameters():
            parameter.requires_grad = False
    adapted = []
    for owner, attribute, dotted, linear in chosen:
        setattr(owner, attribute, LoRALinear(linear, rank, alpha, dropout))   # registers the new module
        adapted.append(dotted)
    return adapted


def lora_modules(model: Module) -> dict[str, LoRALinear]:
    """{dotted name: LoRALinear} for every adapted layer of ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(model: Module) -> Module:
    """Fold every adapter into its base weight (W <- W + s·B A) and put plain Linears back.

    The merged model computes what the adapted model computes in eval mode (no adapter dropout)
    and has the base model's parameter names again, so it saves and loads as a plain model.
    Every parameter becomes a fresh trainable Parameter holding the same array (the freezing and
    the row-training hooks belonged to adapter training); build optimizers after merging.
    Returns ``model``.
    """
    adapted = lora_modules(model)
    if not adapted:
        raise ValueError("merge_lora: the model has no LoRALinear layer; expected a model prepared with apply_lora")
    for dotted, module in adapted.items():
        path, _, attribute = dotted.rpartition(".")
        owner = model
        for part in path.split(".") if path else ():
            owner = owner._modules[part]
        setattr(owner, attribute, module.merge())
    # Fresh Parameters (same arrays) for everything: trainable, and without the gradient hooks
    # that train_rows_from put on the embedding, which would otherwise keep freezing its old rows
    # if training went on. A parameter registered in two modules stays one shared Parameter.
    fresh: dict[int, Parameter] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if id(parameter) not in fresh:
                fresh[id(parameter)] = Parameter(parameter.data)
            setattr(module, name, fresh[id(parameter)])
    return model


# ------------------------------------------------------------------------------------------------
# training new vocabulary rows while the rest is frozen
# ------------------------------------------------------------------------------------------------

def train_rows_from(parameter: Parameter, first_row: int) -> int:
    """Make only rows ``first_row:`` of a frozen 2-D ``parameter`` trainable; returns how many numbers.

    Used for the rows of chat tokens added to a pretrained vocabulary: they have never been
    trained, so a LoRA run must learn them (the adapters alone cannot give ``<|user|>`` and
    ``<|assistant|>`` distinct meanings), while the pretrained rows stay exactly as they are.
    The parameter gets ``requires_grad = True`` and a gradient hook that zeroes the rows above
    ``first_row``. With a zero gradient, AdamW's moments of those rows stay 0 and so does their
    update, provided the parameter is in a group without weight decay (``lora_param_groups``).
    """
    if not isinstance(parameter, Parameter) or parameter.ndim != 2:
        raise TypeError(f"train_rows_from: expected a 2-D Parameter, got {getattr(parameter, 'shape', parameter)!r}")
    rows = parameter.shape[0]
    if isinstance(first_row, bool) or not isinstance(first_row, (int, np.integer)) or not 0 <= first_row <= rows:
        raise ValueError(f"train_rows_from: first_row={first_row!r}; expected an int in [0, {rows}]")
    if first_row == rows:
        return 0
    first_row = int(first_row)

    def keep_new_rows(grad: Tensor) -> Tensor:
        # A fresh array: the engine's gradient arrays are never modified in place. Returned as
        # a Tensor: the engine reads a replacement's ``.data``, which a bare NumPy array also
        # has (its raw buffer).
        kept = get_array_module(grad.data).zeros_like(grad.data)
        kept[first_row:] = grad.data[first_row:]
        return Tensor(kept)

    parameter.requires_grad = True
    parameter.register_hook(keep_new_rows)
    return (rows - first_row) * parameter.shape[1]


def lora_param_groups(model: Module, weight_decay: float, row_trained=()) -> list[dict]:
    """AdamW groups for adapter training: the LoRA matrices with ``weight_decay``, and everything
    else that requires grad (biases, norm gains, ``row_trained`` parameters) without it (weight
    decay would shrink the frozen rows of a row-trained parameter)."""
    row_ids = {id(p) for p in row_trained}
    return assign_groups(trainable_parameters(model.named_parameters(), "lora_param_groups"),
                         [{"weight_decay": weight_decay}, {"weight_decay": 0.0}],
                         lambda name, p: 0 if name.endswith((".lora_A", ".lora_B")) and id(p) not in row_ids else 1)


# ------------------------------------------------------------------------------------------------
# adapter files
# ------------------------------------------------------------------------------------------------

def lora_state_dict(model: Module) -> dict:
    """{``<layer>.lora_A`` / ``<layer>.lora_B``: xp array} of every adapter (live arrays, not copies)."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{name}.lora_A"] = module.lora_A.data
        state[f"{name}.lora_B"] = module.lora_B.data
    return state


def save_lora(path: str | os.PathLike, model: Module, base_vocab_size: int | None = None) -> None:
    """Write the adapters of ``model`` to a small safetensors file (atomically).

    Holds ``<layer>.lora_A``/``lora_B`` for each adapted layer, and, when ``base_vocab_size`` is
    smaller than the model's vocabulary, the rows added to the vocabulary (``new_rows.tok_emb``
    and, for an untied head, ``new_rows.lm_head``), which an adapter run trains too. Metadata:
    format, version, rank/alpha/dropout and scale of each layer, base and full vocabulary sizes.
    """
    adapted = lora_modules(model)
    if not adapted:
        raise ValueError("save_lora: the model has no LoRALinear layer; nothing to save")
    tensors = {name: to_numpy(array) for name, array in lora_state_dict(model).items()}
    layers = {name: {"rank": m.rank, "alpha": m.alpha, "dropout": m.dropout} for name, m in adapted.items()}
    vocab = model.config.vocab_size
    base_vocab = vocab if base_vocab_size is None else int(base_vocab_size)
    if not 0 < base_vocab <= vocab:
        raise ValueError(f"save_lora: base_vocab_size={base_vocab_size!r}; expected an int in [1, {vocab}]")
    if base_vocab < vocab:
        tensors["new_rows.tok_emb"] = to_numpy(model.tok_emb.weight.data[base_vocab:])
        head = getattr(model, "lm_head", None)
        if head is not None:
            tensors["new_rows.lm_head"] = to_numpy(head.weight.data[base_vocab:])
    metadata = {"format": LORA_FORMAT, "version": str(LORA_VERSION), "layers": json.dumps(layers),
                "base_vocab_size": str(base_vocab), "vocab_size": str(vocab)}
    save_safetensors(path, tensors, metadata)


def load_lora(path: str | os.PathLike, model: Module, *, verify: bool = True) -> list[str]:
    """Adapt ``model`` (a base model) with the adapters in ``path``; returns the adapted layer names.

    Grows the vocabulary first when the file carries new rows (``resize_token_embeddings``), then
    applies LoRA to the recorded layers (freezing everything else) and loads A and B.

    The file is trusted for nothing (as :func:`minillm.train.load_checkpoint`): the safetensors
    reader bounds the header and checks each tensor's SHA-256 (``verify=False`` skips only that);
    then every metadata field is checked for form (``layers`` as bounded JSON), each adapter's
    shape against its layer in ``model`` and its rank, the vocabulary sizes against the model and
    the new rows the file holds, and every tensor must be floating point and finite. All of it
    before a tensor is read or ``model`` is changed; a fault is a ``ValueError`` naming the file
    and the field or tensor, and leaves ``model`` as it was.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"adapter file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"adapter file {path!r} is a directory; expected a .safetensors file written by save_lora")
    infos, metadata, data_start = read_safetensors_header(path)

    def bad(what: str, problem: str):
        raise ValueError(f"adapter file {path!r}: {what} {problem}")

    if metadata.get("format") != LORA_FORMAT:
        raise ValueError(f"{path!r} is not a minillm LoRA file (metadata format={metadata.get('format')!r:.80}, "
                         f"expected {LORA_FORMAT!r})")
    for key, meaning in (("version", "the format version"), ("layers", "the adapted layers (JSON)"),
                         ("base_vocab_size", "the base model's vocabulary size"),
                         ("vocab_size", "the adapted model's vocabulary size")):
        if key not in metadata:
            bad(f"field {key!r}", f"is missing; expected {meaning}")
    version = count_field(bad, "version", metadata["version"])
    if version > LORA_VERSION:
        raise ValueError(f"adapter file {path!r} has format version {version}; this minillm reads versions up to "
                         f"{LORA_VERSION}: upgrade minillm")
    base_vocab = count_field(bad, "base_vocab_size", metadata["base_vocab_size"])
    vocab = count_field(bad, "vocab_size", metadata["vocab_size"])
    if not 1 <= base_vocab <= vocab:
        bad("field 'base_vocab_size'", f"is {base_vocab}; expected an integer in [1, vocab_size={vocab}]")
    if not base_vocab <= model.config.vocab_size <= vocab:
        raise ValueError(f"adapter file {path!r} is for a vocabulary grown from {base_vocab} to {vocab} ids; the "
                         f"model has {model.config.vocab_size}, expected a size in that range")
    layers = _check_layers(bad, metadata["layers"], model, infos)
    expected = {f"{name}.{key}" for name in layers for key in ("lora_A", "lora_B")}
    expected |= _check_new_rows(bad, model, infos, base_vocab, vocab)
    for name, info in infos.items():
        if name not in expected:
            bad(f"tensor {name!r}", "is neither an adapter of a layer in field 'layers' nor a new vocabulary row "
                                    "the vocabulary sizes call for; the file is corrupt or not from save_lora")
        if info.dtype not in FLOAT_DTYPES:
            bad(f"tensor {name!r}", f"has dtype {info.dtype}; adapters must be floating point: {', '.join(FLOAT_DTYPES)}")

    tensors = _read_tensors(path, infos, data_start, mmap=False, bf16_as="float32", verify=verify)
    for name, array in tensors.items():
        if not np.isfinite(array).all():    # host: the file's arrays, read before any device copy
            bad(f"tensor {name!r}", "holds non-finite values (inf or NaN); the adapters diverged or the file is corrupt")

    # Everything is checked: change the model.
    if model.config.vocab_size < vocab:
        resize_token_embeddings(model, vocab)
    head = getattr(model, "lm_head", None)
    for key, owner in (("new_rows.tok_emb", model.tok_emb), ("new_rows.lm_head", head)):
        if key in tensors:
            rows = owner.weight.data[base_vocab:]
            rows[...] = to_device(tensors[key], owner.weight.device).astype(rows.dtype, copy=False)
    slots = {dotted: (owner, attribute, linear) for owner, attribute, dotted, linear in _linear_slots(model)}
    for parameter in model.parameters():
        parameter.requires_grad = False
    for name, (rank, alpha, dropout) in layers.items():
        owner, attribute, linear = slots[name]
        module = LoRALinear(linear, rank, alpha, dropout)
        for key, target in (("lora_A", module.lora_A), ("lora_B", module.lora_B)):
            target.data = to_device(tensors[f"{name}.{key}"], target.device).astype(target.dtype, copy=False)
        setattr(owner, attribute, module)
    return list(layers)


def _check_layers(bad, text: str, model: Module, infos: dict) -> dict[str, tuple[int, float, float]]:
    """The ``layers`` field -> {layer name: (rank, alpha, dropout)}, each a Linear of ``model`` whose
    adapters in the file have the shapes its features and rank imply."""
    what = "field 'layers'"
    try:
        layers = loads_json_bounded(text, 2, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as error:
        bad(what, f"is not valid JSON of the expected form (an object of objects, 2 levels): {error}")
    if not isinstance(layers, dict) or not layers:
        bad(what, f"is a JSON {json_kind(layers) if layers != {} else 'empty object'}; expected a non-empty object "
                  "of layer name -> {rank, alpha, dropout}")
    slots = {dotted: linear for _, _, dotted, linear in _linear_slots(model)}
    missing = [name for name in layers if name not in slots]
    if missing:
        bad(what, f"names layers {[name[:80] for name in missing[:5]]}, which are not Linear layers of the model "
                  f"(it has {sorted(slots)})")
    checked = {}
    for name, spec in layers.items():
        if not isinstance(spec, dict) or set(spec) != {"rank", "alpha", "dropout"}:
            bad(what, f"has {name!r}: {spec!r:.80}; expected an object with exactly rank, alpha, dropout")
        rank, alpha, dropout = spec["rank"], spec["alpha"], spec["dropout"]
        if not (is_int(rank) and rank >= 1):
            bad(what, f"has {name!r} with rank={rank!r:.40}; expected an integer >= 1")
        if not (is_number(alpha) and math.isfinite(alpha) and alpha > 0):
            bad(what, f"has {name!r} with alpha={alpha!r:.40}; expected a finite number > 0")
        if not (is_number(dropout) and 0 <= dropout < 1):
            bad(what, f"has {name!r} with dropout={dropout!r:.40}; expected a probability in [0, 1)")
        linear = slots[name]
        for key, shape in (("lora_A", (rank, linear.in_features)), ("lora_B", (linear.out_features, rank))):
            info = infos.get(f"{name}.{key}")
            if info is None:
                bad(f"tensor '{name}.{key}'", f"is missing; field 'layers' lists {name!r} with rank {rank}")
            if info.shape != shape:
                bad(f"tensor '{name}.{key}'", f"has shape {info.shape}; layer {name!r} of the model "
                                              f"({linear.in_features} -> {linear.out_features} features) with "
                                              f"rank {rank} (field 'layers') needs {shape}")
        checked[name] = (rank, float(alpha), float(dropout))
    return checked


def _check_new_rows(bad, model: Module, infos: dict, base_vocab: int, vocab: int) -> set[str]:
    """The tensors holding the rows ids ``base_vocab..vocab-1`` add (the embedding's, and the head's
    when it is untied) must be in the file with those shapes: the vocabulary grows by what the file
    holds, never by what its metadata claims. Returns their names."""
    new = vocab - base_vocab
    if new == 0:
        return set()
    head = getattr(model, "lm_head", None)
    owners = {"new_rows.tok_emb": model.tok_emb.weight}
    if head is not None:
        owners["new_rows.lm_head"] = head.weight
    for key, weight in owners.items():
        shape = (new, weight.shape[1])
        info = infos.get(key)
        if info is None:
            bad(f"tensor {key!r}", f"is missing; fields base_vocab_size={base_vocab} and vocab_size={vocab} "
                                   f"call for the {new} new rows of shape {shape}")
        if info.shape != shape:
            bad(f"tensor {key!r}", f"has shape {info.shape}; fields base_vocab_size={base_vocab} and "
                                   f"vocab_size={vocab} and the model's width call for {shape}")
    return set(owners)


def parameter_counts(model: Module, partially_trained=()) -> dict:
    """{"total", "trainable", "fraction"}: the numbers in the model, and those that training updates.

    ``trainable`` counts every parameter with ``requires_grad`` (the LoRA matrices in an adapter
    run), except those listed in ``partially_trained`` as ``(parameter, trained numbers)`` pairs
    (row-trained embeddings, see :func:`train_rows_from`), which count only their trained part.
    """
    partial = {id(parameter): int(count) for parameter, count in partially_trained}
    total = sum(p.size for p in model.parameters())
    trainable = sum(partial.get(id(p), p.size) for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "fraction": trainable / total if total else 0.0}
