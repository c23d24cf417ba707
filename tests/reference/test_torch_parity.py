"""Parity with PyTorch: the same weights give the same logits, loss and every parameter
gradient as an equivalent PyTorch model written here (GPT-2 and Llama presets, pre- and
post-norm), and 10 AdamW steps give the same losses.

Optional: skipped when torch is not installed (pip install torch==2.13.0).
"""
import numpy as np
import pytest

import minillm as mm
from minillm.nn import GPT, GPTConfig

torch = pytest.importorskip("torch")
TF = torch.nn.functional


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/reference/conftest.py

TINY = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
CONFIGS = {
    "gpt2": GPTConfig.gpt2(**TINY),
    "gpt2-post-sinusoidal": GPTConfig.gpt2(**TINY, norm_position="post", pos="sinusoidal",
                                           tie_weights=False),
    "llama": GPTConfig.llama(**TINY, n_kv_head=2, mlp_multiple_of=16),
    "llama-mqa-tied": GPTConfig.llama(**TINY, n_kv_head=1, tie_weights=True),
}


# -- the PyTorch twin: the same architecture, written functionally over a dict of weights --------
def torch_norm(cfg, p, prefix, x):
    w = p[f"{prefix}.weight"]
    if cfg.norm == "layernorm":
        return TF.layer_norm(x, (cfg.n_embd,), w, p.get(f"{prefix}.bias"), eps=cfg.norm_eps)
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w


def torch_linear(p, prefix, x):
    return TF.linear(x, p[f"{prefix}.weight"], p.get(f"{prefix}.bias"))


def torch_rope(x, offset, cfg):
    d = x.shape[-1]
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)[:, None] * inv_freq
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)      # HF Llama's rotate_half
    return x * cos + rotated * sin


def torch_sinusoidal(t, c, dtype):
    pos = torch.arange(t, dtype=torch.float64)[:, None]
    omega = 10000.0 ** (-torch.arange(0, c, 2, dtype=torch.float64) / c)
    table = torch.zeros(t, c, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * omega)
    table[:, 1::2] = torch.cos(pos * omega)
    return table.to(dtype)


def torch_attention(cfg, p, prefix, x):
    b, t, c = x.shape
    h, h_kv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    q = torch_linear(p, f"{prefix}.q_proj", x).view(b, t, h, d).transpose(1, 2)
    k = torch_linear(p, f"{prefix}.k_proj", x).view(b, t, h_kv, d).transpose(1, 2)
    v = torch_linear(p, f"{prefix}.v_proj", x).view(b, t, h_kv, d).transpose(1, 2)
    if cfg.pos == "rope":
        q, k = torch_rope(q, 0, cfg), torch_rope(k, 0, cfg)
    k = k.repeat_interleave(h // h_kv, dim=1)
    v = v.repeat_interleave(h // h_kv, dim=1)
    y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).contiguous().view(b, t, c)
    return torch_linear(p, f"{prefix}.o_proj", y)


def torch_mlp(cfg, p, prefix, x):
    if cfg.mlp == "gelu":
        hidden = TF.gelu(torch_linear(p, f"{prefix}.up_proj", x), approximate=cfg.gelu_approximate)
    else:
        hidden = TF.silu(torch_linear(p, f"{prefix}.gate_proj", x)) * torch_linear(p, f"{prefix}.up_proj", x)
    return torch_linear(p, f"{prefix}.down_proj", hidden)


def torch_gpt(cfg, p, idx, targets):
    t = idx.shape[1]
    x = TF.embedding(idx, p["tok_emb.weight"])
    if cfg.pos == "learned":
        x = x + p["pos_emb.weight"][:t]
    elif cfg.pos == "sinusoidal":
        x = x + torch_sinusoidal(t, cfg.n_embd, x.dtype)
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}"
        if cfg.norm_position == "pre":
            x = x + torch_attention(cfg, p, f"{pre}.attn", torch_norm(cfg, p, f"{pre}.norm1", x))
            x = x + torch_mlp(cfg, p, f"{pre}.mlp", torch_norm(cfg, p, f"{pre}.norm2", x))
        else:
            x = torch_norm(cfg, p, f"{pre}.norm1", x + torch_attention(cfg, p, f"{pre}.attn", x))
            x = torch_norm(cfg, p, f"{pre}.norm2", x + torch_mlp(cfg, p, f"{pre}.mlp", x))
    if cfg.norm_position == "pre":
        x = torch_norm(cfg, p, "norm_f", x)
    head = p["tok_emb.weight"] if cfg.tie_weights else p["lm_head.weight"]
    logits = x @ head.T
    loss = TF.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-100)
    return logits, loss


def make_pair(name, dtype):
    mm.manual_seed(0)
    cfg = CONFIGS[name]
    model = GPT(cfg).to_dtype(dtype)
    rng = np.random.default_rng(1)
    for p in model.parameters():               # leave the init point: non-zero biases, non-unit scales
        p.data = p.data + (rng.standard_normal(p.shape) * 0.05).astype(dtype)
    weights = {n: torch.tensor(a.copy(), requires_grad=True) for n, a in model.state_dict().items()}
    return cfg, model, weights


def data(cfg, seed=2, b=3, t=12):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, size=(b, t))
    targets = rng.integers(0, cfg.vocab_size, size=(b, t))
    targets[0, :3] = -100
    return idx, targets


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-11), (np.float32, 2e-4, 2e-5)],
                         ids=["float64", "float32"])
def test_same_logits_loss_and_gradients(name, dtype, rtol, atol):
    cfg, model, weights = make_pair(name, dtype)
    idx, targets = data(cfg)
    logits, loss = model(idx, targets)
    loss.backward()
    t_logits, t_loss = torch_gpt(cfg, weights, torch.tensor(idx), torch.tensor(targets))
    t_loss.backward()
    np.testing.assert_allclose(logits.numpy(), t_logits.detach().numpy(), rtol=rtol, atol=atol)
    assert loss.item() == pytest.approx(t_loss.item(), rel=rtol, abs=atol)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, weights[n].grad.numpy(), rtol=rtol * 10, atol=atol * 10,
                                   err_msg=f"gradient of {n}")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_ten_adamw_steps_give_the_same_losses(name):
    optim = pytest.importorskip("minillm.optim")
    cfg, model, weights = make_pair(name, np.float32)
    opt = optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t_opt = torch.optim.AdamW(list(weights.values()), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ours, theirs = [], []
    # Adam's step lr·g/(|g| + eps) is sensitive to g where |g| is near eps = 1e-8: there a gradient
    # at float32 noise level (the rounding of a cancelling sum) moves the step by
    # lr·eps·Δg/(|g| + eps)², up to a few percent of lr for the two libraries' last-bit differences.
    # Elements where that sensitivity, at any step, exceeds a tenth of the comparison's atol are
    # set by each side's rounding, not by the arithmetic compared: they are left out (a few).
    params = dict(model.named_parameters())
    amplified = {n: np.zeros(t.shape, dtype=bool) for n, t in weights.items()}
    for step in range(10):
        idx, targets = data(cfg, seed=step)
        _, loss = model(idx, targets)
        loss.backward()
        our_grads = {n: np.array(p.grad, dtype=np.float64) for n, p in params.items()}
        opt.step()
        opt.zero_grad()
        ours.append(loss.item())
        _, t_loss = torch_gpt(cfg, weights, torch.tensor(idx), torch.tensor(targets))
        t_loss.backward()
        for n, t in weights.items():
            g = t.grad.numpy().astype(np.float64)
            smaller = np.minimum(np.abs(g), np.abs(our_grads[n]))
            amplified[n] |= 3e-3 * 1e-8 * np.abs(g - our_grads[n]) / (smaller + 1e-8) ** 2 > 1e-5
        t_opt.step()
        t_opt.zero_grad()
        theirs.append(t_loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    checked = [n for n in weights if not n.endswith("k_proj.bias")]
    left_out = sum(int(amplified[n].sum()) for n in checked) / sum(amplified[n].size for n in checked)
    assert left_out < 0.01, f"{left_out:.2%} of the elements left out"
    for n, p in model.named_parameters():
        if n.endswith("k_proj.bias"):
            # its exact gradient is 0 (adding a constant to every key shifts each query's scores
            # uniformly, which softmax ignores), so both sides see float32 rounding noise, which
            # Adam's normalisation turns into full-size random steps: nothing to compare
            continue
        compared = ~amplified[n]
        np.testing.assert_allclose(p.data[compared], weights[n].detach().numpy()[compared], rtol=1e-3, atol=1e-4,
                                   err_msg=n)
