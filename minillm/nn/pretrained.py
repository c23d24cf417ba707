"""Hugging Face model directories in and out: ``GPT.from_pretrained`` and ``GPT.save_pretrained``.

A Hugging Face model directory holds ``config.json`` (the architecture's hyperparameters) and the
weights in ``model.safetensors``, or in shards listed by ``model.safetensors.index.json``
(``{"weight_map": {tensor name: shard file}}``), often with tokenizer files beside them. Two
families map onto :class:`~minillm.nn.gpt.GPT` exactly:

``GPT2LMHeadModel`` (model_type ``gpt2``) -> the :meth:`GPTConfig.gpt2` preset. GPT-2 stores its
projections as ``Conv1D`` layers, whose weight is (in, out), the transpose of a Linear's (out, in);
and it fuses the query, key and value projections into one ``c_attn`` of width 3C, columns
[0, C) the queries, [C, 2C) the keys, [2C, 3C) the values. So, with C = n_embd::

    blocks.i.attn.q_proj.weight = h.i.attn.c_attn.weight[:, 0:C].T      (and k, v: the next C columns)
    blocks.i.attn.q_proj.bias   = h.i.attn.c_attn.bias[0:C]
    blocks.i.attn.o_proj.weight = h.i.attn.c_proj.weight.T
    blocks.i.mlp.up_proj.weight = h.i.mlp.c_fc.weight.T,  down_proj = h.i.mlp.c_proj.weight.T
    tok_emb = wte, pos_emb = wpe, norm1/norm2/norm_f = ln_1/ln_2/ln_f; the head is tied to wte.

``activation_function`` ``gelu_new`` (and its twin ``gelu_pytorch_tanh``) is GELU's tanh
approximation, minillm's ``gelu_approximate="tanh"``; ``gelu`` is the exact erf form ("none").

``LlamaForCausalLM`` (model_type ``llama``; ``MistralForCausalLM`` too, whose only difference, a
sliding attention window, is accepted when it covers the whole context) -> the
:meth:`GPTConfig.llama` preset: RMSNorm (``rms_norm_eps``), RoPE (``rope_theta``), SwiGLU
(``intermediate_size``), grouped-query attention (``num_key_value_heads``), no biases, a tied or
untied head. The names map one to one (``model.layers.i.self_attn.q_proj`` ->
``blocks.i.attn.q_proj``, ``mlp.gate_proj`` -> ``mlp.gate_proj``, ``input_layernorm`` -> ``norm1``,
``post_attention_layernorm`` -> ``norm2``, ``model.norm`` -> ``norm_f``) and so do the layouts:
both are (out, in) Linear weights. RoPE needs no permutation: HF Llama rotates the pairs
(i, i + D/2) ("rotate half"; Meta's original checkpoints interleave (2i, 2i + 1) and the HF
conversion script permutes the q/k rows into the half-split order), and so does minillm's
:func:`~minillm.ops.attention.rope`.

Anything the model cannot represent is refused with a ``ValueError`` naming the config field and
its value, never loaded approximately: rope scaling (``rope_scaling`` / ``rope_parameters`` other
than the default), a sliding window shorter than the context, attention or MLP biases in Llama,
a head size other than hidden_size / num_attention_heads, other activations, other architectures.
A tensor the file holds that the model has no place for is refused too.

Loading memory: each weight file is memory-mapped (:class:`~minillm.serialization.SafetensorsMap`);
the model is allocated without drawing random numbers (:func:`~minillm.backend.skip_random_init`),
and each stored tensor is converted straight into its parameter (F32, F16, or BF16 widened by a
16-bit shift) and its pages released, so the process holds about one copy of the weights plus the
tensor in flight. Files from Hugging Face carry no minillm checksums: they get the structural
checks of the safetensors reader (header bounds, tiling, dtypes, shapes); minillm's own exports
carry checksums, verified unless ``verify=False``.

Hub names: ``from_pretrained("gpt2")`` (a name, not an existing directory) downloads config,
weights and tokenizer files over plain HTTPS into ``~/.cache/minillm/hub/NAME`` (the root is
``$MINILLM_CACHE`` when set; the hub address ``$MINILLM_HUB_URL``, else ``$HF_ENDPOINT``, else
https://huggingface.co; ``$HF_TOKEN`` is sent for gated models) the first time, and reads the cache
afterwards. Without a network the error says to pass a local directory.

Out: :func:`save_pretrained` writes ``config.json``, ``model.safetensors`` (with ``{"format": "pt"}``
metadata, as transformers expects) and ``generation_config.json`` (bos/eos: the tokenizer's ``<|endoftext|>``; a chat-tuned tokenizer's
``<|end|>`` joins the stop ids) in the layout above, so that
``transformers.AutoModelForCausalLM.from_pretrained(dir)`` computes the same logits. A tokenizer,
when given, is written as ``minillm_tokenizer.json`` (minillm's own format, read back exactly) and,
when it has a ``save_pretrained`` method, through that too (``tokenizer.json``).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from minillm.backend import skip_random_init, to_numpy
from minillm.errors import MinillmError
from minillm.fileio import atomic_write_text, refuse_to_overwrite
from minillm.nn.gpt import GPT, GPTConfig
from minillm.nn.mlp import swiglu_hidden
from minillm.serialization import (
    SafetensorsMap,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    loads_json_bounded,
    save_safetensors,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MINILLM_TOKENIZER_FILE = "minillm_tokenizer.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
MAX_JSON_FILE_BYTES = 16 * 2 ** 20           # config.json and the shard index: a few kB in practice
MAX_JSON_DEPTH = 16
MIN_POSITION_TABLE_LIMIT = 2 ** 24           # as minillm.train.checkpoint: RoPE tables vs weight size
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")
GPT2_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
# Tensors some files carry that are computed, not learned (old GPT-2 masks, old Llama RoPE frequencies).
IGNORED_TENSORS = re.compile(r".*\.attn\.(bias|masked_bias)$|.*\.rotary_emb\.inv_freq$")
DEFAULT_HUB_URL = "https://huggingface.co"
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?")
HUB_TIMEOUT_S = 30.0
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16", "float64": np.float64}


class HubUnavailableError(MinillmError, OSError):
    """A model asked for by name could not be fetched from the Hugging Face hub (offline, unknown
    name, gated): pass a local directory instead."""


# ------------------------------------------------------------------------------------------------
# config.json <-> GPTConfig
# ------------------------------------------------------------------------------------------------
def _read_json(path: str, what: str):
    size = os.path.getsize(path)
    if size > MAX_JSON_FILE_BYTES:
        raise ValueError(f"{what} {path!r} is {size:,} bytes, more than the {MAX_JSON_FILE_BYTES:,}-byte limit; "
                         "expected a small JSON file")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        data = loads_json_bounded(raw.decode("utf-8"), MAX_JSON_DEPTH)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{what} {path!r} is not valid UTF-8 JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path!r} holds a JSON {type(data).__name__}; expected an object")
    return data


class _Fields:
    """Typed access to config.json's values; every fault names the file, the field and the value."""

    def __init__(self, values: dict, source: str):
        self.values, self.source = values, source

    def refuse(self, key: str, problem: str):
        raise ValueError(f"{self.source}: {key}={self.values.get(key)!r:.120} {problem}")

    def int(self, key: str, default=None, *aliases) -> int:
        for name in (key, *aliases):
            if self.values.get(name) is not None:
                key = name
                break
        value = self.values.get(key, default)
        if value is None:
            raise ValueError(f"{self.source}: field {key!r} is missing; expected a positive int")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.refuse(key, "is not a positive int")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            self.refuse(key, "is not a positive number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            self.refuse(key, "is not true or false")
        return value

    def require(self, key: str, allowed, why: str, default=None) -> None:
        value = self.values.get(key, default)
        if value not in allowed:
            self.refuse(key, f"is not supported: {why}")


def _architecture(values: dict, source: str) -> str:
    """'gpt2' or 'llama' (Mistral loads as llama), from model_type and architectures."""
    model_type = values.get("model_type")
    families = {"gpt2": ("gpt2", "GPT2LMHeadModel"), "llama": ("llama", "LlamaForCausalLM"),
                "mistral": ("llama", "MistralForCausalLM")}
    if model_type not in families:
        raise ValueError(f"{source}: model_type={model_type!r:.80} is not supported; expected one of "
                         f"{sorted(families)} (GPT-2, Llama and Mistral causal language models)")
    family, head_class = families[model_type]
    architectures = values.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or head_class not in architectures):
        raise ValueError(f"{source}: architectures={architectures!r:.120} is not supported for model_type="
                         f"{model_type!r}; expected [{head_class!r}] (a causal language model with its head)")
    return family


def config_from_hf(values: dict, source: str = "config.json", block_size: int | None = None,
                   dropout: float = 0.0) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face ``config.json`` (a dict); a ValueError naming the
    field for anything GPT cannot represent. ``block_size`` (optional) shortens the context below
    the file's ``n_positions`` / ``max_position_embeddings`` (smaller RoPE tables or position table);
    ``dropout`` is the training-time dropout to build with (Hugging Face's *_pdrop fields are not read)."""
    fields = _Fields(values, source)
    family = _architecture(values, source)
    if family == "gpt2":
        c, heads = fields.int("n_embd"), fields.int("n_head")
        positions = fields.int("n_positions", None, "n_ctx")
        activation = values.get("activation_function", "gelu_new")
        if activation not in GPT2_ACTIVATIONS:
            fields.refuse("activation_function", f"is not supported; expected one of {sorted(GPT2_ACTIVATIONS)} "
                                                 "(GELU, tanh approximation or exact)")
        fields.require("scale_attn_weights", (True,), "attention without the 1/sqrt(head size) scale", True)
        fields.require("scale_attn_by_inverse_layer_idx", (False,), "attention scaled by 1/layer", False)
        fields.require("add_cross_attention", (False,), "cross-attention (an encoder-decoder model)", False)
        hidden = values.get("n_inner")
        values_ = dict(vocab_size=fields.int("vocab_size"), block_size=positions, n_layer=fields.int("n_layer"),
                       n_head=heads, n_embd=c, mlp_hidden=None if hidden is None else fields.int("n_inner"),
                       norm_eps=fields.number("layer_norm_epsilon", 1e-5), gelu_approximate=GPT2_ACTIVATIONS[activation],
                       tie_weights=fields.flag("tie_word_embeddings", True), dropout=dropout)
        make = GPTConfig.gpt2
    else:
        c, heads = fields.int("hidden_size"), fields.int("num_attention_heads")
        positions = fields.int("max_position_embeddings")
        kv_heads = fields.int("num_key_value_heads", heads)
        if values.get("hidden_act", "silu") != "silu":
            fields.refuse("hidden_act", "is not supported; expected 'silu' (SwiGLU)")
        fields.require("attention_bias", (False, None), "biases on the attention projections", False)
        fields.require("mlp_bias", (False, None), "biases on the MLP projections", False)
        head_dim = values.get("head_dim")
        if head_dim is not None and head_dim != c // heads:
            fields.refuse("head_dim", f"is not supported: minillm's head size is hidden_size / num_attention_heads "
                                      f"= {c // heads}")
        theta = _rope_theta(values, fields)
        window = values.get("sliding_window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < (block_size or positions)):
            fields.refuse("sliding_window", f"is not supported: minillm attends to the whole context of "
                                            f"{block_size or positions} positions (a window that covers it loads; "
                                            "or pass a block_size no longer than the window)")
        values_ = dict(vocab_size=fields.int("vocab_size"), block_size=positions, n_layer=fields.int("num_hidden_layers"),
                       n_head=heads, n_kv_head=kv_heads, n_embd=c, mlp_hidden=fields.int("intermediate_size"),
                       norm_eps=fields.number("rms_norm_eps", 1e-6), rope_theta=theta,
                       tie_weights=fields.flag("tie_word_embeddings", False), dropout=dropout)
        make = GPTConfig.llama
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or not 0 < block_size <= positions:
            raise ValueError(f"from_pretrained: block_size={block_size!r}; expected an int in [1, {positions}] "
                             f"(the context of {source})")
        values_["block_size"] = block_size
    std = values.get("initializer_range")
    if isinstance(std, (int, float)) and not isinstance(std, bool) and std > 0:
        values_["init_std"] = float(std)
    try:
        return make(**values_)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _rope_theta(values: dict, fields: _Fields) -> float:
    """RoPE's base from ``rope_theta`` (transformers 4) or ``rope_parameters`` (transformers 5);
    any scaling variant is refused."""
    scaling = values.get("rope_scaling")
    if scaling is not None and not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type"))
                                    == "default" and set(scaling) <= {"rope_type", "type", "rope_theta"}):
        fields.refuse("rope_scaling", "is not supported: minillm's RoPE has no scaling variants (expected null)")
    parameters = values.get("rope_parameters")
    theta = values.get("rope_theta", 10000.0)
    if parameters is not None:
        if not isinstance(parameters, dict) or parameters.get("rope_type", "default") != "default" \
                or not set(parameters) <= {"rope_type", "rope_theta", "partial_rotary_factor"} \
                or parameters.get("partial_rotary_factor", 1.0) != 1.0:
            fields.refuse("rope_parameters", "is not supported: minillm's RoPE has no scaling variants (expected "
                                             "rope_type 'default' and a rope_theta)")
        theta = parameters.get("rope_theta", theta)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 1:
        raise ValueError(f"{fields.source}: rope_theta={theta!r:.40} is not a number > 1")
    return float(theta)


def _family_of(config: GPTConfig) -> str:
    """'gpt2' or 'llama': the Hugging Face class a config can be written as; a ValueError naming the
    field that has no Hugging Face equivalent otherwise."""
    c = config

    def refuse(field: str, family: str, expected):
        raise ValueError(f"save_pretrained: GPTConfig {field}={getattr(c, field)!r} has no Hugging Face equivalent "
                         f"in {family} (pos={c.pos!r} makes it that family); expected {field}={expected!r}")

    if c.pos == "sinusoidal":
        raise ValueError("save_pretrained: GPTConfig pos='sinusoidal' has no Hugging Face equivalent; expected "
                         "pos='learned' (GPT2LMHeadModel) or pos='rope' (LlamaForCausalLM)")
    if c.norm_position != "pre":
        raise ValueError(f"save_pretrained: GPTConfig norm_position={c.norm_position!r} (post-norm) has no Hugging "
                         "Face equivalent; expected norm_position='pre'")
    if c.pos == "learned":
        family, expected = "GPT2LMHeadModel", dict(norm="layernorm", mlp="gelu", bias=True, n_kv_head=c.n_head)
    else:
        family, expected = "LlamaForCausalLM", dict(norm="rmsnorm", mlp="swiglu", bias=False)
    for field, value in expected.items():
        if getattr(c, field) != value:
            refuse(field, family, value)
    return "gpt2" if c.pos == "learned" else "llama"


def _mlp_hidden(config: GPTConfig) -> int:
    if config.mlp_hidden is not None:
        return config.mlp_hidden
    return 4 * config.n_embd if config.mlp == "gelu" else swiglu_hidden(config.n_embd, config.mlp_multiple_of)


def hf_config_from(config: GPTConfig, bos_id: int | None = None, eos_id: int | None = None,
                   dtype: str = "float32") -> dict:
    """The Hugging Face ``config.json`` of a GPT config (GPT2LMHeadModel or LlamaForCausalLM)."""
    c = config
    family = _family_of(c)
    hidden = _mlp_hidden(c)
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
                "n_head": c.n_head, "n_inner": None if hidden == 4 * c.n_embd else hidden,
                "activation_function": "gelu_new" if c.gelu_approximate == "tanh" else "gelu",
                "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_weights,
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
                "initializer_range": c.init_std, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": dtype, "use_cache": True}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": hidden, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
            "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
            "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": c.tie_weights,
            "attention_bias": False, "attention_dropout": c.dropout, "mlp_bias": False, "pretraining_tp": 1,
            "initializer_range": c.init_std, "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": dtype,
            "use_cache": True}


# ------------------------------------------------------------------------------------------------
# the weight maps: Hugging Face tensor -> minillm parameter(s)
# ------------------------------------------------------------------------------------------------
def _identity(array):
    return array


def _transpose(array):
    return array.T


def _columns(begin: int, end: int):
    """One of q/k/v out of GPT-2's fused Conv1D c_attn weight (in, 3C): columns [begin, end), as (out, in)."""
    return lambda array: array[:, begin:end].T


def _entries(begin: int, end: int):
    return lambda array: array[begin:end]


def weight_plan(config: GPTConfig, family: str, prefix: str = ""):
    """Yield ``(hf name, hf shape, [(minillm name, transform), ...])`` for every stored tensor of
    ``family`` ("gpt2" or "llama"); ``transform(stored array)`` is the minillm parameter (a view)."""
    c = config
    hidden = _mlp_hidden(c)
    if family == "gpt2":
        yield f"{prefix}wte.weight", (c.vocab_size, c.n_embd), [("tok_emb.weight", _identity)]
        yield f"{prefix}wpe.weight", None, [("pos_emb.weight", lambda a: a[:c.block_size])]
        for i in range(c.n_layer):
            h, b = f"{prefix}h.{i}.", f"blocks.{i}."
            for hf, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
                yield f"{h}{hf}.weight", (c.n_embd,), [(f"{b}{ours}.weight", _identity)]
                yield f"{h}{hf}.bias", (c.n_embd,), [(f"{b}{ours}.bias", _identity)]
            yield f"{h}attn.c_attn.weight", (c.n_embd, 3 * c.n_embd), [
                (f"{b}attn.{n}_proj.weight", _columns(k * c.n_embd, (k + 1) * c.n_embd)) for k, n in enumerate("qkv")]
            yield f"{h}attn.c_attn.bias", (3 * c.n_embd,), [
                (f"{b}attn.{n}_proj.bias", _entries(k * c.n_embd, (k + 1) * c.n_embd)) for k, n in enumerate("qkv")]
            for hf, ours, shape in (("attn.c_proj", "attn.o_proj", (c.n_embd, c.n_embd)),
                                    ("mlp.c_fc", "mlp.up_proj", (c.n_embd, hidden)),
                                    ("mlp.c_proj", "mlp.down_proj", (hidden, c.n_embd))):
                yield f"{h}{hf}.weight", shape, [(f"{b}{ours}.weight", _transpose)]
                yield f"{h}{hf}.bias", (shape[1],), [(f"{b}{ours}.bias", _identity)]
        yield f"{prefix}ln_f.weight", (c.n_embd,), [("norm_f.weight", _identity)]
        yield f"{prefix}ln_f.bias", (c.n_embd,), [("norm_f.bias", _identity)]
    else:
        kv = c.n_kv_head * c.head_dim
        yield f"{prefix}embed_tokens.weight", (c.vocab_size, c.n_embd), [("tok_emb.weight", _identity)]
        for i in range(c.n_layer):
            h, b = f"{prefix}layers.{i}.", f"blocks.{i}."
            for hf, ours, shape in (("input_layernorm", "norm1", (c.n_embd,)),
                                    ("self_attn.q_proj", "attn.q_proj", (c.n_embd, c.n_embd)),
                                    ("self_attn.k_proj", "attn.k_proj", (kv, c.n_embd)),
                                    ("self_attn.v_proj", "attn.v_proj", (kv, c.n_embd)),
                                    ("self_attn.o_proj", "attn.o_proj", (c.n_embd, c.n_embd)),
                                    ("post_attention_layernorm", "norm2", (c.n_embd,)),
                                    ("mlp.gate_proj", "mlp.gate_proj", (hidden, c.n_embd)),
                                    ("mlp.up_proj", "mlp.up_proj", (hidden, c.n_embd)),
                                    ("mlp.down_proj", "mlp.down_proj", (c.n_embd, hidden))):
                yield f"{h}{hf}.weight", shape, [(f"{b}{ours}.weight", _identity)]
        yield f"{prefix}norm.weight", (c.n_embd,), [("norm_f.weight", _identity)]
    if not c.tie_weights:
        yield "lm_head.weight", (c.vocab_size, c.n_embd), [("lm_head.weight", _identity)]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
class _WeightFiles:
    """The weight files of a directory: ``model.safetensors``, or the shards of the index; maps
    each tensor name to the open :class:`SafetensorsMap` holding it."""

    def __init__(self, directory: str, verify: bool):
        single, index = os.path.join(directory, WEIGHTS_FILE), os.path.join(directory, INDEX_FILE)
        self.where: dict[str, SafetensorsMap] = {}
        if os.path.isfile(single):
            files = {WEIGHTS_FILE: SafetensorsMap(single, verify=verify)}
            for name in files[WEIGHTS_FILE].infos:
                self.where[name] = files[WEIGHTS_FILE]
            return
        if not os.path.isfile(index):
            raise FileNotFoundError(f"{directory!r} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; expected a Hugging "
                                    "Face model directory with safetensors weights (.bin files are pickle: not read)")
        data = _read_json(index, "shard index")
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"shard index {index!r}: 'weight_map' must be a non-empty object of tensor name -> file")
        files: dict[str, SafetensorsMap] = {}
        for name, file in weight_map.items():
            if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", "..") \
                    or not file.endswith(".safetensors"):
                raise ValueError(f"shard index {index!r}: tensor {name!r} lives in {file!r:.80}; expected the name "
                                 "of a .safetensors file in the same directory")
            if file not in files:
                path = os.path.join(directory, file)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"shard index {index!r} lists {file!r}, which {directory!r} lacks")
                files[file] = SafetensorsMap(path, verify=verify)
            if name not in files[file].infos:
                raise ValueError(f"shard index {index!r} puts tensor {name!r} in {file!r}, which does not hold it")
            self.where[name] = files[file]
        for shard in files.values():                 # tensors a shard holds beyond the index: found too
            for name in shard.infos:
                self.where.setdefault(name, shard)

    def info(self, name: str):
        return self.where[name].infos[name]


def _copy_into(destination: np.ndarray, source: np.ndarray, stored: str) -> None:
    """destination[...] = source converted; BF16 (uint16 bits) widens by a 16-bit shift."""
    if stored == "BF16":
        if destination.dtype == np.float32:
            bits = destination.view(np.uint32)
            np.copyto(bits, source, casting="safe")      # uint16 -> uint32, zero-extended
            bits <<= 16                                 # the bf16 bits are the float32's upper half
        else:
            np.copyto(destination, bf16_bits_to_float32(np.ascontiguousarray(source)), casting="same_kind")
    else:
        np.copyto(destination, source, casting="same_kind")


def _resolve_dtype(dtype):
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.kind != "f" or resolved.itemsize < 2:
        raise ValueError(f"from_pretrained: dtype={dtype!r}; expected a NumPy floating dtype (float32, float16, "
                         "float64)")
    return resolved


def from_pretrained(path_or_name: str | os.PathLike, dtype=np.float32, device: str = "cpu",
                    block_size: int | None = None, verify: bool = True, dropout: float = 0.0) -> GPT:
    """A :class:`GPT` with the weights of a Hugging Face model directory (or hub name, downloaded
    into the cache once: see the module docstring), in eval mode. ``dtype``: the parameters'
    dtype; ``block_size``: a shorter context than the config's; ``verify``: check minillm's
    SHA-256 checksums where the file has them; ``dropout``: for fine-tuning (0 by default)."""
    directory = resolve_pretrained(path_or_name)
    source = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{os.fspath(path_or_name)!r} has no {CONFIG_FILE}; expected a Hugging Face model "
                                "directory (config.json + model.safetensors) or a minillm checkpoint file")
    config = config_from_hf(_read_json(source, "model config"), source, block_size, dropout)
    family = "gpt2" if config.pos == "learned" else "llama"
    dtype = _resolve_dtype(dtype)
    files = _WeightFiles(directory, verify)
    names = files.where
    base = {"gpt2": "transformer.", "llama": "model."}[family]
    prefix = base if any(name.startswith(base) for name in names) else ""
    plan = []
    stored = 0
    # Everything is checked before anything is allocated, lazily: a config claiming 10**9 layers
    # stops at the first tensor the file lacks (the plan never outgrows the file's tensors).
    for hf_name, shape, targets in weight_plan(config, family, prefix):
        if hf_name not in names:
            raise ValueError(f"{directory!r}: the weights lack tensor {hf_name!r}, which {CONFIG_FILE} implies "
                             f"({family}, {config.n_layer} layers); config and weights do not belong together")
        info = files.info(hf_name)
        if info.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{directory!r}: tensor {hf_name!r} has dtype {info.dtype}; expected one of "
                             f"{', '.join(WEIGHT_DTYPES)}")
        if shape is None:                                  # GPT-2's position table: at least block_size rows
            shape = (max(info.shape[0] if info.shape else 0, config.block_size), config.n_embd)
        if info.shape != shape:
            raise ValueError(f"{directory!r}: tensor {hf_name!r} has shape {info.shape}; {CONFIG_FILE} implies "
                             f"{shape}: config and weights do not belong together")
        stored += math.prod(info.shape)
        plan.append((hf_name, shape, targets))
    used = {hf_name for hf_name, _, _ in plan}
    if config.tie_weights:
        used.add("lm_head.weight")                         # a tied head some files store anyway: the embedding's copy
    unexpected = sorted(n for n in names if n not in used and not IGNORED_TENSORS.fullmatch(n))
    if unexpected:
        raise ValueError(f"{directory!r}: the weights hold {len(unexpected)} tensors this {family} model has no place "
                         f"for, e.g. {unexpected[:3]}; refusing to load them approximately")
    if config.position_table_elements() > max(stored, MIN_POSITION_TABLE_LIMIT):
        raise ValueError(f"{source}: a context of {config.block_size} positions needs RoPE tables larger than the "
                         f"weights ({stored:,} elements); pass a smaller block_size")
    with skip_random_init():
        model = GPT(config, dtype=dtype, device="cpu")
    parameters = dict(model.named_parameters())
    for hf_name, _, targets in plan:
        shard = names[hf_name]
        array = shard.tensor(hf_name)
        for name, transform in targets:
            _copy_into(parameters[name].data, transform(array), shard.infos[hf_name].dtype)
        del array
        shard.release(hf_name)
    if device != "cpu":
        model.to(device)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# the hub
# ------------------------------------------------------------------------------------------------
def cache_root() -> str:
    """Where hub downloads go: ``$MINILLM_CACHE/hub``, by default ``~/.cache/minillm/hub``."""
    root = os.environ.get("MINILLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minillm")
    return os.path.join(root, "hub")


def _is_complete(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, CONFIG_FILE)) and (
        os.path.isfile(os.path.join(directory, WEIGHTS_FILE)) or os.path.isfile(os.path.join(directory, INDEX_FILE)))


def resolve_pretrained(path_or_name: str | os.PathLike) -> str:
    """The local directory of ``path_or_name``: itself when it is a directory; for a hub name (not
    an existing path), the cached copy, downloaded first when absent."""
    path = os.fspath(path_or_name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path!r} is a file; expected a Hugging Face model directory (config.json + "
                         "model.safetensors) or a hub name such as 'gpt2'")
    if not isinstance(path, str) or not HUB_NAME.fullmatch(path) or ".." in path:
        raise FileNotFoundError(f"{path!r} does not exist; expected a Hugging Face model directory or a hub name "
                                "such as 'gpt2' or 'owner/model'")
    cached = os.path.join(cache_root(), path.replace("/", "--"))
    if not _is_complete(cached):
        download_from_hub(path, cached)
    return cached


def _hub_get(url: str, name: str):
    request = urllib.request.Request(url, headers={"User-Agent": "minillm"})
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S)    # noqa: S310  (https by default)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        hint = " (a gated model: accept its licence on the hub and set HF_TOKEN)" if error.code in (401, 403) else ""
        raise HubUnavailableError(f"the Hugging Face hub answered HTTP {error.code} for {url}{hint}; pass a local "
                                  "model directory instead") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise HubUnavailableError(f"cannot download model {name!r}: the Hugging Face hub ({url}) is unreachable "
                                  f"({reason}); offline, pass a local model directory (config.json + "
                                  "model.safetensors) instead") from None


def download_from_hub(name: str, destination: str) -> None:
    """Fetch ``name``'s config, weights (single file or shards) and tokenizer files into
    ``destination`` (through a temporary directory renamed into place when complete)."""
    endpoint = (os.environ.get("MINILLM_HUB_URL") or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_URL).rstrip("/")
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=os.path.basename(destination) + ".", suffix=".partial",
                               dir=os.path.dirname(destination))

    def fetch(file: str, required: bool) -> bool:
        url = f"{endpoint}/{urllib.parse.quote(name)}/resolve/main/{urllib.parse.quote(file)}"
        response = _hub_get(url, name)
        if response is None:
            if required:
                raise HubUnavailableError(f"the Hugging Face hub has no file {file!r} for model {name!r} ({url}); "
                                          "check the name, or pass a local model directory")
            return False
        with response, open(os.path.join(partial, file), "wb") as handle:
            shutil.copyfileobj(response, handle, 8 * 2 ** 20)
        return True

    try:
        fetch(CONFIG_FILE, required=True)
        if not fetch(WEIGHTS_FILE, required=False):
            fetch(INDEX_FILE, required=True)
            weight_map = _read_json(os.path.join(partial, INDEX_FILE), "shard index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"the shard index of {name!r} has no weight_map object")
            for file in sorted(set(weight_map.values())):
                if not isinstance(file, str) or os.path.basename(file) != file or not file.endswith(".safetensors"):
                    raise ValueError(f"the shard index of {name!r} lists {file!r:.80}; expected .safetensors file names")
                fetch(file, required=True)
        for file in (GENERATION_CONFIG_FILE, *TOKENIZER_FILES):
            fetch(file, required=False)
        if os.path.exists(destination):
            shutil.rmtree(destination)
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# tokenizers (the tokenizer package does the work; this only finds the files)
# ------------------------------------------------------------------------------------------------
def load_pretrained_tokenizer(directory: str):
    """The tokenizer of a model directory, or None when it has none that minillm reads:
    ``minillm_tokenizer.json`` (minillm's own, written by :func:`save_pretrained`), else
    ``BPETokenizer.from_pretrained`` where that exists (tokenizer.json), else GPT-2's
    ``vocab.json`` + ``merges.txt``."""
    from minillm.tokenizer import BPETokenizer, load_tokenizer  # noqa: PLC0415  (the tokenizer sits beside nn)

    own = os.path.join(directory, MINILLM_TOKENIZER_FILE)
    if os.path.isfile(own):
        return load_tokenizer(own)
    reader = getattr(BPETokenizer, "from_pretrained", None)
    if reader is not None and any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "vocab.json")):
        return reader(directory)
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if os.path.isfile(vocab) and os.path.isfile(merges):
        return BPETokenizer.from_gpt2(vocab, merges)
    return None


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def hf_tensors(model: GPT, family: str) -> dict[str, np.ndarray]:
    """The model's weights under the Hugging Face names and layouts (host arrays; GPT-2's fused
    and transposed Conv1D weights are new arrays, the rest the parameters' own host data)."""
    state = {name: to_numpy(array) for name, array in model.state_dict().items()}
    prefix = {"gpt2": "transformer.", "llama": "model."}[family]
    out = {}
    for hf_name, _, targets in weight_plan(model.config, family, prefix):
        parts = [state[name] for name, _ in targets]
        if hf_name.endswith("c_attn.weight"):
            out[hf_name] = np.concatenate([part.T for part in parts], axis=1)     # host: (in, 3C) Conv1D
        elif hf_name.endswith("c_attn.bias"):
            out[hf_name] = np.concatenate(parts)                                  # host: (3C,)
        elif targets[0][1] is _transpose:
            out[hf_name] = np.ascontiguousarray(parts[0].T)                       # host: (in, out) Conv1D
        else:
            out[hf_name] = parts[0]
    return out


def _special_id(tokenizer, names=("<|endoftext|>", "</s>", "<|end_of_text|>")) -> int | None:
    specials = getattr(tokenizer, "special_tokens", None) or {}
    for name in names:
        if name in specials:
            return int(specials[name])
    return None


def save_pretrained(model: GPT, directory: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                    dtype: str | None = None) -> list[str]:
    """Write ``model`` (and ``tokenizer``, optional) as a Hugging Face model directory; returns the
    files written. ``dtype``: "float32" (default for a float32 model), "float16" or "bfloat16".
    An existing non-empty directory is refused unless ``overwrite``. Models with no Hugging Face
    equivalent (sinusoidal positions, post-norm, mixed families) and models with unmerged LoRA
    adapters are refused with the field named."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_pretrained: model must be a minillm GPT, got {type(model).__name__}")
    family = _family_of(model.config)
    directory = os.fspath(directory)
    expected = {name for _, _, targets in weight_plan(model.config, family) for name, _ in targets}
    extra = sorted(name for name, _ in model.named_parameters() if name not in expected)
    if extra:
        raise ValueError(f"save_pretrained: the model has parameters with no place in the Hugging Face layout, e.g. "
                         f"{extra[:3]}; merge LoRA adapters first (minillm.posttrain.lora.merge_lora)")
    dtype = dtype or {np.dtype(np.float16): "float16", np.dtype(np.float64): "float32"}.get(model.dtype, "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"save_pretrained: dtype={dtype!r}; expected 'float32', 'float16' or 'bfloat16'")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"save_pretrained: {directory!r} is a file; expected a directory to write")
    existing = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    refuse_to_overwrite(directory, "files", existing, overwrite, "choose an empty or new directory, or pass "
                        "overwrite=True (--overwrite) to replace the model files in it")
    os.makedirs(directory, exist_ok=True)
    tensors = hf_tensors(model, family)
    bf16_names = ()
    if dtype == "bfloat16":
        tensors = {k: float32_to_bf16_bits(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}  # host: file bits
        bf16_names = tuple(tensors)
    else:
        target = DTYPES[dtype]
        tensors = {k: v if v.dtype == target else v.astype(target) for k, v in tensors.items()}
    bos = eos = _special_id(tokenizer) if tokenizer is not None else None
    stops = [eos] if eos is not None else []
    end_of_turn = _special_id(tokenizer, ("<|end|>",)) if tokenizer is not None else None
    if end_of_turn is not None and end_of_turn != eos:   # a chat-tuned model: generation stops at a reply's end too
        stops.append(end_of_turn)
    config = hf_config_from(model.config, bos, eos, dtype)
    written = []
    save_safetensors(os.path.join(directory, WEIGHTS_FILE), tensors, {"format": "pt"}, bf16_names=bf16_names)
    written.append(WEIGHTS_FILE)
    atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")
    generation = {key: value for key, value in (("bos_token_id", bos), ("eos_token_id", stops[0] if len(stops) == 1
                                                                         else stops or None)) if value is not None}
    atomic_write_text(os.path.join(directory, GENERATION_CONFIG_FILE), json.dumps(generation, indent=2) + "\n")
    written += [CONFIG_FILE, GENERATION_CONFIG_FILE]
    if tokenizer is not None:
        if hasattr(tokenizer, "save"):
            tokenizer.save(os.path.join(directory, MINILLM_TOKENIZER_FILE))
            written.append(MINILLM_TOKENIZER_FILE)
        if hasattr(tokenizer, "save_pretrained"):          # tokenizer.json (the tokenizer package's writer)
            # The directory was checked above (empty, or overwrite given), so its files may be replaced.
            paths = tokenizer.save_pretrained(directory, overwrite=True)
            written += [os.path.basename(path) for path in paths]
    return written

