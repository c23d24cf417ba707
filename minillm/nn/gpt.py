"""GPTConfig and GPT: a decoder-only transformer language model.

    idx (B, T) token ids
      -> token embedding (+ learned or sinusoidal positions) -> dropout
      -> n_layer blocks (attention + feed-forward, residual; pre- or post-norm)
      -> final norm (pre-norm only) -> head (tied to the token embedding by default)
      -> logits (B, T, V); with targets, the mean cross-entropy over non-ignored targets.

One class covers GPT-2 (LayerNorm, learned positions, GELU, biases, tied head) and Llama-style
models (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases): see the presets
:meth:`GPTConfig.gpt2` and :meth:`GPTConfig.llama`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from minillm import functional as F
from minillm.autograd import is_grad_enabled
from minillm.backend import device_of, get_array_module, random_init_skipped, random_normal, to_device, to_numpy
from minillm.nn.block import Block, make_norm
from minillm.nn.layers import Dropout, Embedding, Linear
from minillm.nn.mlp import swiglu_hidden
from minillm.nn.module import Module, ModuleList
from minillm.nn.positions import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEmbedding
from minillm.nn.recompute import recompute
from minillm.tensor import Tensor

CHOICES = {        # the allowed values of GPTConfig's string fields (the [model] config section uses them too)
    "norm": ("layernorm", "rmsnorm"),
    "pos": ("learned", "sinusoidal", "rope"),
    "mlp": ("gelu", "swiglu"),
    "norm_position": ("pre", "post"),
    "gelu_approximate": ("tanh", "none"),
}


@dataclass
class GPTConfig:
    """Every hyperparameter of :class:`GPT`. The defaults are GPT-2 small (124M parameters).

    Attributes:
        vocab_size: V, the number of token ids (ids are 0..V-1).
        block_size: the longest sequence (context length) the model accepts; position tables
            are built for this many positions.
        n_layer: the number of transformer blocks.
        n_head: H, query heads per attention layer; the head size is D = n_embd / n_head.
        n_kv_head: key/value heads (grouped-query attention); None means n_head (MHA), 1 is MQA.
            n_head must be a multiple of it. Stored resolved (an int) after construction.
        n_embd: C, the width of the residual stream.
        dropout: dropout probability on the embeddings, the attention weights and both
            residual branches (training mode only); 0.0 disables it.
        bias: biases in every Linear and LayerNorm (GPT-2: True; Llama: False).
        norm: "layernorm" or "rmsnorm".
        norm_eps: the epsilon inside the norms' square root.
        pos: "learned" (GPT-2), "sinusoidal" (the original transformer) or "rope" (Llama).
        rope_theta: RoPE base θ: pair i rotates by p · θ^(-2i/D) at position p.
        mlp: "gelu" (two matrices, hidden 4C) or "swiglu" (three, hidden from the Llama rule).
        mlp_hidden: the feed-forward hidden width; None means 4·C for "gelu" and the Llama rule
            int(2/3 · 4C) rounded up to a multiple of ``mlp_multiple_of`` for "swiglu".
        mlp_multiple_of: the rounding of the SwiGLU hidden width (Llama uses 256; 64 default).
        gelu_approximate: "tanh" (GPT-2's GELU) or "none" (the exact erf form).
        norm_position: "pre" (GPT-2, Llama; a final norm before the head) or "post" (the
            original transformer's Add & Norm; no final norm).
        tie_weights: share the token embedding matrix with the output head (GPT-2 does).
        init_std: the standard deviation of the normal initialisation of every Linear and
            embedding matrix (0.02 as in GPT-2); residual output projections use
            init_std / sqrt(2 · n_layer).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    pos: str = "learned"
    rope_theta: float = 10000.0
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    mlp_multiple_of: int = 64
    gelu_approximate: str = "tanh"
    norm_position: str = "pre"
    tie_weights: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig: {name}={value!r}; expected a positive int")
        for name, value in (("n_kv_head", self.n_kv_head), ("mlp_hidden", self.mlp_hidden)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                      or value <= 0):
                raise ValueError(f"GPTConfig: {name}={value!r}; expected a positive int or None")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig: {name}={getattr(self, name)!r}; expected one of {choices}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig: {name}={getattr(self, name)!r}; expected True or False")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "expected n_embd = n_head * head_size")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head={self.n_head} is not divisible by n_kv_head="
                             f"{self.n_kv_head}; expected each key/value head to serve the same "
                             "number of query heads")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout={self.dropout!r}; expected a probability in [0, 1)")
        for name in ("norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig: {name}={value!r}; expected a positive number")
        if not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 1:
            raise ValueError(f"GPTConfig: rope_theta={self.rope_theta!r}; expected a number > 1")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: pos='rope' needs an even head size, got n_embd/n_head = "
                             f"{self.head_dim}")
        if self.pos == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: pos='sinusoidal' needs an even n_embd, got {self.n_embd}")

    @property
    def head_dim(self) -> int:
        """D = n_embd / n_head."""
        return self.n_embd // self.n_head

    def parameter_shapes(self):
        """Yield ``(name, shape)`` for every parameter ``GPT(self)`` holds, in ``state_dict`` order,
        without building anything: a checkpoint loader compares them with the file's tensors before
        allocating the model (a config claiming a huge vocabulary then fails on the embedding's
        shape instead of allocating it). A generator, so a config with absurdly many layers is
        refused at the first layer the file lacks."""
        c = self
        hidden = c.mlp_hidden
        if hidden is None:
            hidden = 4 * c.n_embd if c.mlp == "gelu" else swiglu_hidden(c.n_embd, c.mlp_multiple_of)
        kv_width = c.n_kv_head * c.head_dim

        def linear(name, n_in, n_out):
            yield f"{name}.weight", (n_out, n_in)
            if c.bias:
                yield f"{name}.bias", (n_out,)

        def norm(name):
            yield f"{name}.weight", (c.n_embd,)
            if c.norm == "layernorm" and c.bias:
                yield f"{name}.bias", (c.n_embd,)

        yield "tok_emb.weight", (c.vocab_size, c.n_embd)
        if c.pos == "learned":
            yield "pos_emb.weight", (c.block_size, c.n_embd)
        for i in range(c.n_layer):
            block = f"blocks.{i}"
            yield from norm(f"{block}.norm1")
            yield from linear(f"{block}.attn.q_proj", c.n_embd, c.n_embd)
            yield from linear(f"{block}.attn.k_proj", c.n_embd, kv_width)
            yield from linear(f"{block}.attn.v_proj", c.n_embd, kv_width)
            yield from linear(f"{block}.attn.o_proj", c.n_embd, c.n_embd)
            yield from norm(f"{block}.norm2")
            if c.mlp == "swiglu":
                yield from linear(f"{block}.mlp.gate_proj", c.n_embd, hidden)
            yield from linear(f"{block}.mlp.up_proj", c.n_embd, hidden)
            yield from linear(f"{block}.mlp.down_proj", hidden, c.n_embd)
        if c.norm_position == "pre":
            yield from norm("norm_f")
        if not c.tie_weights:
            yield "lm_head.weight", (c.vocab_size, c.n_embd)

    def position_table_elements(self) -> int:
        """Elements of the position tables ``GPT(self)`` computes (not stored in checkpoints): the
        sinusoidal table (block_size x n_embd) or RoPE's cos and sin (block_size x head_dim / 2
        each); 0 for learned positions (a parameter)."""
        if self.pos == "sinusoidal":
            return self.block_size * self.n_embd
        if self.pos == "rope":
            return self.block_size * self.head_dim
        return 0

    # -- dict round trip ------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        """A plain dict of every field (JSON/TOML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        """Build a config from a dict; unknown keys are an error that lists the valid ones."""
        if not isinstance(values, dict):
            raise TypeError(f"GPTConfig.from_dict: expected a dict, got {type(values).__name__}")
        _reject_unknown(values, "GPTConfig.from_dict")
        return cls(**values)

    # -- presets --------------------------------------------------------------------------------
    @classmethod
    def gpt2(cls, **overrides) -> "GPTConfig":
        """GPT-2: LayerNorm, learned positions, GELU (tanh) MLP, biases, tied head, pre-norm.
        Sizes default to GPT-2 small (12 layers, 12 heads, 768 wide, 1024 positions)."""
        _reject_unknown(overrides, "GPTConfig.gpt2")
        values = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_kv_head=None,
                      n_embd=768, bias=True, norm="layernorm", pos="learned", mlp="gelu",
                      norm_position="pre", tie_weights=True)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def llama(cls, **overrides) -> "GPTConfig":
        """Llama: RMSNorm, RoPE (θ = 10000), SwiGLU, grouped-query attention, no biases, untied
        head, pre-norm. Sizes default to a small model (8 layers, 8 query / 2 key-value heads,
        512 wide, 32000 ids, 1024 positions); override them freely. Overriding n_head alone
        keeps 2 key/value heads when n_head is even and falls back to n_head (MHA) otherwise."""
        _reject_unknown(overrides, "GPTConfig.llama")
        values = dict(vocab_size=32000, block_size=1024, n_layer=8, n_head=8, n_kv_head=2,
                      n_embd=512, bias=False, norm="rmsnorm", pos="rope", mlp="swiglu",
                      norm_position="pre", tie_weights=False)
        values.update(overrides)
        if "n_head" in overrides and "n_kv_head" not in overrides \
                and values["n_head"] % values["n_kv_head"]:
            values["n_kv_head"] = values["n_head"]
        return cls(**values)


def _reject_unknown(values: dict, where: str) -> None:
    unknown = sorted(set(values) - set(GPTConfig.field_names()))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; valid keys are "
                         f"{GPTConfig.field_names()}")


class GPT(Module):
    """A decoder-only transformer language model configured by :class:`GPTConfig`.

    Submodules: tok_emb, pos_emb (learned/sinusoidal, else None), rotary (RoPE, else None; shared
    by every attention layer), drop, blocks, norm_f (pre-norm only), lm_head (untied only).

    ``recompute`` (False; ``minillm train --recompute`` sets it): while gradients are recorded,
    each block runs through :func:`minillm.nn.recompute.recompute`, so the graph keeps only each
    block's input and backward runs every block's forward again (less memory, more time; the
    same gradients, bit for bit). Not a GPTConfig field: it changes how a step runs, not the
    model, so checkpoints do not record it.

    Initialisation (GPT-2): every Linear and embedding matrix ~ N(0, init_std²), biases 0, norm
    scales 1, and the residual output projections (attn.o_proj, mlp.down_proj) ~
    N(0, (init_std / sqrt(2·n_layer))²) so the residual stream's variance does not grow with
    depth. Random numbers come from the global generator (``minillm.manual_seed``).
    """

    def __init__(self, config: GPTConfig, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.tok_emb = Embedding(c.vocab_size, c.n_embd, dtype=dtype, device=device)
        self.pos_emb = None
        self.rotary = None
        if c.pos == "learned":
            self.pos_emb = LearnedPositionalEmbedding(c.block_size, c.n_embd, dtype=dtype, device=device)
        elif c.pos == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEmbedding(c.block_size, c.n_embd, dtype=dtype, device=device)
        else:
            self.rotary = RotaryEmbedding(c.head_dim, c.block_size, c.rope_theta, dtype=dtype, device=device)
        self.drop = Dropout(c.dropout)
        self.blocks = ModuleList(Block(c, self.rotary, dtype=dtype, device=device) for _ in range(c.n_layer))
        self.norm_f = make_norm(c, dtype, device) if c.norm_position == "pre" else None
        self.lm_head = None if c.tie_weights else Linear(c.n_embd, c.vocab_size, bias=False,
                                                         dtype=dtype, device=device)
        self.recompute = False            # per-block activation recomputation (see forward)
        self._init_weights()

    def _init_weights(self) -> None:
        if random_init_skipped():            # a load overwrites every weight next (GPT.from_pretrained)
            return
        c = self.config
        residual_std = c.init_std / math.sqrt(2 * c.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (Linear, Embedding, LearnedPositionalEmbedding)):
                std = residual_std if name.endswith(("attn.o_proj", "mlp.down_proj")) else c.init_std
                w = module.weight
                w.data = random_normal(w.shape, w.dtype, w.device, std=std)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    bias.data = get_array_module(bias.data).zeros(bias.shape, dtype=bias.dtype)

    # -- input checks ---------------------------------------------------------------------------
    def _ids(self, ids, what: str):
        """``ids`` as an integer (B, T) array, on the device it came on (checked by _check_ranges)."""
        array = ids.data if isinstance(ids, Tensor) else ids
        if isinstance(array, (list, tuple)):
            array = np.asarray(array)  # host: a Python list from the user becomes a host array
        if not hasattr(array, "dtype") or array.dtype.kind not in "iu":
            raise TypeError(f"GPT: {what} must be an integer array or Tensor of token ids, got "
                            f"{getattr(array, 'dtype', type(ids).__name__)}")
        if array.ndim != 2:
            raise ValueError(f"GPT: {what} has shape {tuple(array.shape)}; expected (B, T)")
        return array

    def _check_ranges(self, ids, targets) -> int | None:
        """Check that ``ids`` lie in [0, vocab_size) and ``targets`` (or None) in it or are -100;
        return the number of targets that are not -100.

        Host arrays are checked on the host, before anything is moved to the device (the usual
        case: data loaders and generation give host batches), so nothing is read back from a GPU.
        Device arrays are reduced on the device and read back together: one synchronisation.
        """
        v = self.config.vocab_size
        arrays = [("idx", ids, False)] + ([] if targets is None else [("targets", targets, True)])
        stats = []                                               # per array: [low, high, count]
        for _, array, allow_ignore in arrays:
            xp = get_array_module(array)
            if not array.size:
                stats.append(None)
                continue
            valid = array != -100 if allow_ignore else None
            checked = array if valid is None else xp.where(valid, array, 0)     # -100 -> 0 (in range)
            count = array.size if valid is None else valid.sum()
            stats.append(xp.stack([xp.min(checked), xp.max(checked), xp.asarray(count, dtype=checked.dtype)]))
        on_device = [s for s in stats if s is not None and device_of(s) != "cpu"]
        if on_device:                                            # the one read-back
            values = iter(to_numpy(get_array_module(on_device[0]).stack(
                [s.astype(np.int64) for s in on_device])).tolist())
        stats = [None if s is None else (next(values) if device_of(s) != "cpu" else s.tolist()) for s in stats]
        count = None
        for (what, array, allow_ignore), stat in zip(arrays, stats):
            if allow_ignore:
                count = 0 if stat is None else int(stat[2])
            if stat is None or (allow_ignore and not stat[2]):
                continue
            low, high = int(stat[0]), int(stat[1])
            if low < 0 or high >= v:
                bad = low if low < 0 else high
                extra = " or -100 (ignored)" if allow_ignore else ""
                raise ValueError(f"GPT: {what} holds token id {bad}, out of range; expected ids "
                                 f"in [0, vocab_size={v}){extra}")
        return count

    # -- forward --------------------------------------------------------------------------------
    def forward(self, idx, targets=None, position_offset: int = 0, kv_cache=None,
                only_last: bool = False):
        """Logits (B, T, V) for token ids ``idx`` (B, T), and the mean cross-entropy against
        ``targets`` (B, T) (-100 = ignore) or None without targets.

        ``position_offset`` is the absolute position of idx[:, 0] (0 for a full sequence; a
        key/value cache feeds later positions); offset + T must not exceed block_size.

        ``kv_cache`` (a :class:`~minillm.nn.kv_cache.KVCache`, generation under ``no_grad``): idx
        continues the cached positions, so its positions start at ``kv_cache.length`` (pass
        position_offset 0 or that length); every layer writes its keys/values there and the
        cache's length grows by T. ``only_last`` applies the final norm and head to the last
        position only: logits (B, 1, V) (generation needs no more; not with targets).
        """
        c = self.config
        ids = self._ids(idx, "idx")
        target_ids = None if targets is None else self._ids(targets, "targets")
        if target_ids is not None and target_ids.shape != ids.shape:
            raise ValueError(f"GPT: targets have shape {tuple(target_ids.shape)}; expected the "
                             f"shape of idx {tuple(ids.shape)}")
        b, t = ids.shape
        if not isinstance(position_offset, int) or position_offset < 0:
            raise ValueError(f"GPT: position_offset={position_offset!r}; expected an int >= 0")
        if kv_cache is not None:
            position_offset = self._check_kv_cache(kv_cache, b, position_offset)
        if only_last and targets is not None:
            raise ValueError("GPT: only_last=True computes the last position's logits only; expected "
                             "targets=None")
        if position_offset + t > c.block_size:
            raise ValueError(f"GPT: sequence of length T={t} (from position {position_offset}) is "
                             f"longer than block_size={c.block_size}; crop idx to its last "
                             f"{c.block_size - position_offset} tokens")
        num_targets = self._check_ranges(ids, target_ids)
        ids = to_device(ids, self.device)
        x = self.tok_emb(ids, check_range=False)                 # (B, T, C) (checked above)
        if self.pos_emb is not None:
            x = x + self.pos_emb(t, position_offset)             # (B, T, C) + (T, C)
        x = self.drop(x)
        checkpointed = self.recompute and kv_cache is None and is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if checkpointed:                                     # keeps only x for backward
                x = recompute(block, x, position_offset)         # (B, T, C)
                continue
            layer_cache = None if kv_cache is None else kv_cache.layers[i]
            x = block(x, position_offset, layer_cache)           # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(t)
        if only_last:
            x = F.getitem(x, (slice(None), slice(t - 1, t)))     # (B, 1, C)
        if self.norm_f is not None:
            x = self.norm_f(x)
        if self.lm_head is None:
            logits = F.linear(x, self.tok_emb.weight)            # (B, T, C) @ (C, V) -> (B, T, V)
        else:
            logits = self.lm_head(x)                             # (B, T, V)
        loss = None
        if target_ids is not None:
            loss = F.cross_entropy(logits, target_ids, ignore_index=-100, num_valid=num_targets)
        return logits, loss

    def _check_kv_cache(self, kv_cache, b: int, position_offset: int) -> int:
        """The absolute position of idx[:, 0] when feeding ``kv_cache`` (its length)."""
        if is_grad_enabled():
            raise RuntimeError("GPT: kv_cache holds plain arrays (no graph); run cached generation under "
                               "minillm.no_grad()")
        if len(kv_cache.layers) != self.config.n_layer or kv_cache.batch_size != b:
            raise ValueError(f"GPT: kv_cache has {len(kv_cache.layers)} layers and batch size "
                             f"{kv_cache.batch_size}; expected {self.config.n_layer} layers and the batch "
                             f"size of idx, {b} (build it with KVCache.for_model(model, B))")
        if position_offset not in (0, kv_cache.length):
            raise ValueError(f"GPT: position_offset={position_offset} but kv_cache.length={kv_cache.length}; "
                             "with a cache, idx continues the cached positions (pass 0 or the length)")
        return kv_cache.length

    # -- generation (minillm.generation does the work; it sits above nn) -----------------------
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float | None = None, stop=None,
                 seed=None, **options):
        """Continue the prompt(s) ``idx`` by up to ``max_new_tokens`` tokens each: greedy at
        temperature 0, otherwise sampled (top-k, top-p, repetition penalty), KV-cached.

        ``idx``: a (B, T) integer array or Tensor (returns a (B, T + n) array on the model's
        device) or lists of token ids of any lengths (returns lists). ``options``: tokenizer,
        use_cache, overflow, slide, pad_id. See :func:`minillm.generation.generate` for every
        argument, the ragged-batch approach and the context-overflow policy.
        """
        from minillm.generation import generate  # noqa: PLC0415  (generation sits above nn)

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, stop=stop, seed=seed, **options)

    def stream(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, repetition_penalty: float | None = None, stop=None,
               seed=None, **options):
        """A generator of the new token ids (ints) of ONE prompt, yielded as they are produced;
        the arguments are :meth:`generate`'s (see :func:`minillm.generation.stream`)."""
        from minillm.generation import stream  # noqa: PLC0415  (generation sits above nn)

        return stream(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      repetition_penalty=repetition_penalty, stop=stop, seed=seed, **options)

    # -- Hugging Face model directories (minillm.nn.pretrained does the work) ---------------------
    @classmethod
    def from_pretrained(cls, path_or_name, dtype=np.float32, device: str = "cpu", block_size: int | None = None,
                        verify: bool = True, dropout: float = 0.0) -> "GPT":
        """A GPT with the weights of a Hugging Face model directory (``config.json`` +
        ``model.safetensors`` or a sharded index) or hub name such as ``"gpt2"`` (downloaded once
        into ``~/.cache/minillm/hub``): GPT-2, Llama and Mistral. In eval mode. Anything the model
        cannot represent is refused naming the config field. See :mod:`minillm.nn.pretrained`."""
        from minillm.nn.pretrained import from_pretrained  # noqa: PLC0415  (pretrained imports this module)

        return from_pretrained(path_or_name, dtype=dtype, device=device, block_size=block_size, verify=verify,
                               dropout=dropout)

    def save_pretrained(self, directory, tokenizer=None, overwrite: bool = False, dtype: str | None = None) -> list:
        """Write this model as a Hugging Face directory (config.json, model.safetensors,
        generation_config.json; the tokenizer's files when given) that
        ``transformers.AutoModelForCausalLM.from_pretrained`` loads: GPT-2 preset -> GPT2LMHeadModel,
        Llama preset -> LlamaForCausalLM. See :func:`minillm.nn.pretrained.save_pretrained`."""
        from minillm.nn.pretrained import save_pretrained  # noqa: PLC0415

        return save_pretrained(self, directory, tokenizer=tokenizer, overwrite=overwrite, dtype=dtype)

    # -- accounting -----------------------------------------------------------------------------
    def num_parameters(self, non_embedding: bool = False, trainable_only: bool = False) -> int:
        """Parameters counted once each; ``non_embedding`` leaves out the position table and,
        when the head is untied, the token embedding (lookups do no arithmetic)."""
        total = super().num_parameters(trainable_only)
        if non_embedding:
            if isinstance(self.pos_emb, LearnedPositionalEmbedding):
                total -= self.pos_emb.weight.size
            if self.lm_head is not None:
                total -= self.tok_emb.weight.size
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for sequences of ``seq_len`` tokens
        (default block_size), the PaLM/nanoGPT estimate used for MFU:

            6·N + 12·n_layer·T·C

        N counts the weights that take part in matrix products: every Linear weight plus the
        (V × C) head, tied or not (embedding lookups and norms do no matrix work). Each such
        weight costs 2 FLOPs per token forward and 4 backward (6·N). The attention products
        q·k^T and A·v cost 2·2·T·C per token per layer forward, times 3 with backward
        (12·n_layer·T·C), counting the full T × T square that is computed (the causal mask
        makes half of it unused: a count of useful work would take 6·n_layer·T·C).
        """
        c = self.config
        t = c.block_size if seq_len is None else seq_len
        n = sum(m.weight.size for m in self.modules() if isinstance(m, Linear))
        if self.lm_head is None:
            n += self.tok_emb.weight.size
        return 6 * n + 12 * c.n_layer * t * c.n_embd

    def extra_repr(self) -> str:
        return f"{self.num_parameters() / 1e6:.2f}M parameters"
