"""GPTConfig and GPT: config validation, presets, shapes, initialisation, whole-model gradcheck
(both presets), initial loss, overfitting one batch, gradient accumulation, dtypes, bad input."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import backend
from minillm.nn import GPT, GPTConfig, functional_call

try:
    from minillm.optim import AdamW
except ImportError:  # pragma: no cover - optim lands separately
    AdamW = None

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
PRESETS = {
    "gpt2": lambda **kw: GPTConfig.gpt2(**{**TINY, **kw}),
    "llama": lambda **kw: GPTConfig.llama(**{**TINY, "n_kv_head": 1, "mlp_multiple_of": 8, **kw}),
}


def batch(rng, b=2, t=4, v=11):
    return rng.integers(0, v, size=(b, t)), rng.integers(0, v, size=(b, t))


# -- config ------------------------------------------------------------------------------------
def test_config_presets():
    g, l = GPTConfig.gpt2(), GPTConfig.llama(vocab_size=100)
    assert (g.norm, g.pos, g.mlp, g.tie_weights, g.bias, g.n_kv_head) == ("layernorm", "learned", "gelu", True, True, 12)
    assert (l.norm, l.pos, l.mlp, l.tie_weights, l.bias) == ("rmsnorm", "rope", "swiglu", False, False)
    assert l.n_kv_head < l.n_head and l.vocab_size == 100
    assert GPTConfig(n_head=4, n_embd=64).n_kv_head == 4 and GPTConfig(n_head=4, n_embd=64).head_dim == 16


def test_config_dict_round_trip_and_unknown_keys():
    cfg = GPTConfig.llama(n_layer=3)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown config keys \['n_layers'\]; valid keys are \[.*'n_layer'"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_layers": 3})
    with pytest.raises(ValueError, match="unknown config keys"):
        GPTConfig.gpt2(heads=3)


@pytest.mark.parametrize("overrides, message", [
    (dict(n_embd=10, n_head=4), "n_embd=10 is not divisible by n_head=4"),
    (dict(n_head=4, n_kv_head=3, n_embd=16), "n_head=4 is not divisible by n_kv_head=3"),
    (dict(norm="batchnorm"), r"norm='batchnorm'; expected one of \('layernorm', 'rmsnorm'\)"),
    (dict(pos="alibi"), "pos='alibi'"),
    (dict(mlp="relu"), "mlp='relu'"),
    (dict(norm_position="middle"), "norm_position='middle'"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(vocab_size=0), "vocab_size=0; expected a positive int"),
    (dict(init_std=-1.0), "init_std=-1.0"),
    (dict(pos="rope", n_embd=6, n_head=2), "even head size"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **overrides})


# -- model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_forward_shapes_and_loss_none_without_targets(preset, rng, device):
    model = GPT(PRESETS[preset]()).to(device)
    idx, targets = batch(rng)
    logits, loss = model(idx)
    assert logits.shape == (2, 4, 11) and loss is None and logits.device == device
    logits, loss = model(mm.tensor(idx, device=device), mm.tensor(targets, device=device))
    assert loss.shape == () and loss.dtype == np.float32


@pytest.mark.parametrize("preset", PRESETS)
def test_initial_loss_is_close_to_log_vocab(preset, rng):
    mm.manual_seed(0)
    cfg = PRESETS[preset](vocab_size=500, n_embd=32, n_head=4, block_size=16)
    idx, targets = batch(rng, b=4, t=16, v=500)
    _, loss = GPT(cfg)(idx, targets)
    assert loss.item() == pytest.approx(math.log(500), abs=0.1)


def test_gpt2_initialisation():
    mm.manual_seed(0)
    cfg = GPTConfig.gpt2(vocab_size=1000, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    params = dict(model.named_parameters())
    assert np.std(params["tok_emb.weight"].data) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["blocks.0.attn.q_proj.weight"].data) == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 4)
    assert np.std(params["blocks.1.attn.o_proj.weight"].data) == pytest.approx(scaled, rel=0.05)
    assert np.std(params["blocks.1.mlp.down_proj.weight"].data) == pytest.approx(scaled, rel=0.05)
    assert not params["blocks.0.attn.q_proj.bias"].data.any()
    assert (params["blocks.0.norm1.weight"].data == 1).all()
    assert "lm_head.weight" not in params and model.lm_head is None       # tied


@pytest.mark.parametrize("preset", PRESETS)
def test_weight_tying(preset, rng):
    model = GPT(PRESETS[preset](tie_weights=True))
    idx, targets = batch(rng)
    logits, loss = model(idx, targets)
    loss.backward()
    # the head is the embedding matrix: logits = h @ tok_emb.weight.T gives it a dense gradient
    assert (model.tok_emb.weight.grad != 0).all()
    untied = GPT(PRESETS[preset](tie_weights=False))
    assert untied.num_parameters() == model.num_parameters() + 11 * 8


GRADCHECK_SAMPLE = [
    "tok_emb.weight", "pos_emb.weight", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
    "blocks.0.attn.q_proj.weight", "blocks.0.attn.k_proj.weight", "blocks.0.attn.v_proj.bias",
    "blocks.1.attn.o_proj.weight", "blocks.1.norm2.weight", "blocks.1.mlp.up_proj.bias",
    "blocks.1.mlp.gate_proj.weight", "blocks.1.mlp.down_proj.weight", "norm_f.weight",
    "norm_f.bias", "lm_head.weight",
]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("position", ["pre", "post"])
def test_whole_model_gradcheck(preset, position, rng, device):
    """The tiny model in float64: the loss's gradient w.r.t. a sample of parameters of every
    kind (embeddings, norms, every projection, the head) matches finite differences."""
    mm.manual_seed(1)
    cfg = PRESETS[preset](vocab_size=7, block_size=4, n_embd=4, norm_position=position)
    model = GPT(cfg).to_dtype(np.float64).to(device)
    for p in model.parameters():              # move off the init point (zero biases, unit scales)
        p.data = p.data + backend.to_device(rng.standard_normal(p.shape) * 0.3, device)
    own = dict(model.named_parameters())
    names = [n for n in GRADCHECK_SAMPLE if n in own]
    assert len(names) >= 8
    idx = mm.tensor(rng.integers(0, 7, size=(2, 4)), device=device)
    targets = rng.integers(0, 7, size=(2, 4))
    targets[0, 1] = -100
    targets = mm.tensor(targets, device=device)

    def loss_of(*tensors):
        with functional_call(model, dict(zip(names, tensors))):
            return model(idx, targets)[1]

    assert mm.gradcheck(loss_of, [own[n].detach() for n in names], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_overfits_one_batch(preset, rng):
    mm.manual_seed(0)
    cfg = PRESETS[preset](vocab_size=16, block_size=8, n_embd=32, n_head=4)
    model = GPT(cfg)
    idx, targets = batch(rng, b=4, t=8, v=16)
    idx[:, 0] = np.arange(4)                    # distinct contexts: the targets are learnable
    params = model.parameters()
    if AdamW is not None:
        opt = AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    first = None
    m = [np.zeros_like(p.data) for p in params]
    v = [np.zeros_like(p.data) for p in params]
    for step in range(1, 301):
        _, loss = model(idx, targets)
        first = first or loss.item()
        loss.backward()
        if AdamW is not None:
            opt.step()
            opt.zero_grad()
        else:                                   # a minimal Adam, until minillm.optim lands
            for p, mi, vi in zip(params, m, v):
                mi *= 0.9
                mi += 0.1 * p.grad
                vi *= 0.99
                vi += 0.01 * p.grad ** 2
                p.data -= 1e-2 * (mi / (1 - 0.9 ** step)) / (np.sqrt(vi / (1 - 0.99 ** step)) + 1e-8)
                p.grad = None
    assert first == pytest.approx(math.log(16), abs=0.2)
    assert loss.item() < 0.05, loss.item()


@pytest.mark.parametrize("preset", PRESETS)
def test_gradient_accumulation_equals_one_big_batch(preset, rng):
    mm.manual_seed(0)
    model = GPT(PRESETS[preset]()).to_dtype(np.float64)
    idx, targets = batch(rng, b=6, t=4)
    _, loss = model(idx, targets)
    loss.backward()
    big = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    k = 3
    for i in range(k):
        rows = slice(2 * i, 2 * i + 2)
        _, loss = model(idx[rows], targets[rows])
        (loss / k).backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, big[name], rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("preset", PRESETS)
def test_float64_model_keeps_float64(preset, rng):
    model = GPT(PRESETS[preset]()).to_dtype(np.float64)
    logits, loss = model(*batch(rng))
    loss.backward()
    assert logits.dtype == np.float64 and loss.dtype == np.float64
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


def test_ignored_targets_do_not_count(rng):
    model = GPT(PRESETS["gpt2"]())
    idx, targets = batch(rng)
    logits, _ = model(idx)
    masked = targets.copy()
    masked[:, :2] = -100
    _, loss = model(idx, masked)
    z = logits.numpy()[:, 2:].reshape(-1, 11).astype(np.float64)
    t = targets[:, 2:].reshape(-1)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert loss.item() == pytest.approx(-logp[np.arange(len(t)), t].mean(), rel=1e-5)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_positions_make_the_model_order_aware(pos, rng):
    model = GPT(GPTConfig(**{**TINY, "pos": pos}))
    idx = np.array([[1, 2, 3, 4]])
    a = model(idx)[0].numpy()[0, -1]
    b = model(idx[:, [2, 1, 0, 3]])[0].numpy()[0, -1]           # same last token, other order
    assert not np.allclose(a, b)


def test_dropout_is_active_in_training_only(rng):
    model = GPT(PRESETS["gpt2"](dropout=0.3))
    idx, _ = batch(rng)
    assert not np.allclose(model(idx)[0].numpy(), model(idx)[0].numpy())
    model.eval()
    np.testing.assert_array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())


def test_bad_input_errors(rng):
    model = GPT(PRESETS["gpt2"]())
    with pytest.raises(ValueError, match=r"T=9 .* longer than block_size=8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"idx holds token id 11, out of range; expected ids in \[0, vocab_size=11\)"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(np.array([[1, -1]]))
    with pytest.raises(ValueError, match=r"expected \(B, T\)"):
        model(np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        model(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="targets holds token id 12"):
        model(np.array([[1, 2]]), np.array([[1, 12]]))
    with pytest.raises(ValueError, match=r"targets have shape \(1, 1\)"):
        model(np.array([[1, 2]]), np.array([[1]]))
    with pytest.raises(ValueError, match="every target equals ignore_index"):
        model(np.array([[1, 2]]), np.array([[-100, -100]]))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 3})


def test_flops_per_token_formula():
    cfg = GPTConfig.gpt2(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    c, layers = 128, 4
    n = layers * 12 * c * c + 65 * c                       # Linear weights + the (tied) head
    assert model.flops_per_token() == 6 * n + 12 * layers * 64 * c
    assert model.flops_per_token(seq_len=32) == 6 * n + 12 * layers * 32 * c
    assert model.num_parameters(non_embedding=True) == model.num_parameters() - 64 * c


def test_state_dict_round_trip_gives_the_same_logits(rng):
    a, b = GPT(PRESETS["llama"]()), GPT(PRESETS["llama"]())
    idx, _ = batch(rng)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(a(idx)[0].numpy(), b(idx)[0].numpy())


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_runs_on_the_gpu_path(preset, rng, gpu_device):
    """The whole step (forward, loss, backward, optimizer) on the CuPy-like emulation."""
    model = GPT(PRESETS[preset](dropout=0.1)).to(gpu_device)
    idx, targets = batch(rng)
    logits, loss = model(idx, targets)                      # host ids are moved explicitly
    loss.backward()
    assert logits.device == "cuda"
    assert all(backend.device_of(p.grad) == "cuda" for p in model.parameters())
    if AdamW is not None:
        opt = AdamW(model.parameters(), lr=1e-3)
        opt.step()
        assert all(p.device == "cuda" for p in model.parameters())


@pytest.mark.parametrize("config", [
    GPTConfig.gpt2(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8),
    GPTConfig.gpt2(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False, tie_weights=False),
    GPTConfig.gpt2(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, norm_position="post",
                   pos="sinusoidal", mlp_hidden=20),
    GPTConfig.llama(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=16),
    GPTConfig.llama(vocab_size=11, block_size=8, n_layer=1, n_head=4, n_embd=16, bias=True, norm="layernorm",
                    tie_weights=True, mlp_multiple_of=8),
    GPTConfig.llama(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, norm="rmsnorm",
                    bias=True, pos="learned", mlp="gelu", gelu_approximate="none"),
])
def test_parameter_shapes_match_the_model_without_building_it(config):
    # load_checkpoint compares these with a file's tensors before allocating anything.
    built = {name: tuple(array.shape) for name, array in GPT(config).state_dict().items()}
    assert list(config.parameter_shapes()) == list(built.items())
    tables = sum(int(b.size) for _, b in GPT(config).named_buffers())
    assert config.position_table_elements() == tables


def test_parameter_shapes_is_lazy_for_absurd_configs():
    config = GPTConfig.gpt2(vocab_size=10 ** 12, block_size=8, n_layer=10 ** 9, n_head=2, n_embd=8)
    shapes = config.parameter_shapes()
    assert next(shapes) == ("tok_emb.weight", (10 ** 12, 8))     # nothing built, nothing enumerated ahead
