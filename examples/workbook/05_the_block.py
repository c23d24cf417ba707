# Workbook chapter 5: the transformer block (percent format; sync.py writes the notebook).
# %% [markdown]
# # 5 · The block: normalisation, residuals, the feed-forward, pre- vs post-norm
#
# Chapter 4 built attention, the one place where positions talk to each other. A transformer layer
# wraps it, and a position-wise feed-forward network, in three more pieces:
#
# - a **normalisation** (LayerNorm or RMSNorm) that rescales each position's vector to a fixed size,
# - a **residual connection** around each sub-layer, $x \leftarrow x + f(x)$,
# - the **feed-forward** network with a nonlinearity (GELU in GPT-2, the gated SwiGLU in Llama).
#
# Where the normalisation sits (before each sub-layer, *pre-norm*, or after the residual sum,
# *post-norm*) decides whether a deep stack trains at all. In the blueprint this is the step from
# "attention works" to "a stack of layers works"; chapter 6 then trains the stack.
#
# minillm's pieces: `F.layer_norm`, `F.rms_norm`, `F.gelu`, `F.swiglu` (fused ops with hand-written
# backward passes, each with a `*_composed` twin), the modules `LayerNorm`, `RMSNorm`, `MLP`,
# `SwiGLUMLP`, `Block` and `GPT` in `minillm.nn`.
#
# Shapes: $B$ batch, $T$ positions, $C$ model width, $H$ feed-forward hidden width;
# the norms act on each of the $N = B\cdot T$ rows of $C$ values independently.

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm import functional as F
from minillm.data import default_corpus_path, read_corpus
from minillm.nn import GPT, MLP, Block, GPTConfig, SwiGLUMLP, functional_call, swiglu_hidden
from minillm.optim import AdamW
from minillm.tokenizer import CharTokenizer

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# The models of this chapter are tiny: one BLAS thread is as fast as two, and it does not stall
# when the machine is busy with other work (see minillm.host.set_blas_threads).
mm.host.set_blas_threads(1)
CHAPTER_STARTED = time.perf_counter()
mm.manual_seed(0)
rng = np.random.default_rng(0)
print("size:", "small" if SMALL else "full")

# %% [markdown]
# ## 1 · LayerNorm
#
# ### Forward
#
# For one row $x \in \mathbb{R}^C$ (one position of one sequence):
#
# $$\mu = \frac1C\sum_{i} x_i,\qquad \sigma^2 = \frac1C\sum_i (x_i-\mu)^2,\qquad
# r = \frac{1}{\sqrt{\sigma^2+\epsilon}},\qquad \hat x_i = (x_i-\mu)\,r,\qquad
# y_i = \gamma_i \hat x_i + \beta_i .$$
#
# $\gamma, \beta \in \mathbb{R}^C$ are learned (initialised to ones and zeros). The row statistics
# $\mu$ and $r$ are what the fused op saves for backward: two numbers per row, shape $(N, 1)$.
#
# ### Backward, step by step
#
# Let $\bar y = \partial L/\partial y$ be the upstream gradient of a row and
# $g = \bar y \odot \gamma$ the gradient that reaches $\hat x$. The parameters are easy:
#
# $$\frac{\partial L}{\partial \gamma} = \sum_{\text{rows}} \bar y \odot \hat x,\qquad
# \frac{\partial L}{\partial \beta} = \sum_{\text{rows}} \bar y .$$
#
# For $x$ we need $\partial \hat x_i / \partial x_j$. Three facts:
#
# 1. $\partial \mu / \partial x_j = 1/C$.
# 2. $\partial \sigma^2/\partial x_j = \frac2C \sum_i (x_i-\mu)\,(\delta_{ij} - \tfrac1C)
#    = \frac2C (x_j - \mu)$, because $\sum_i (x_i - \mu) = 0$.
# 3. $\partial r/\partial x_j = -\tfrac12 (\sigma^2+\epsilon)^{-3/2}\,\partial\sigma^2/\partial x_j
#    = -\frac{r^3}{C}(x_j-\mu) = -\frac{r^2}{C}\hat x_j$.
#
# With the product rule on $\hat x_i = (x_i - \mu)\, r$:
#
# $$\frac{\partial \hat x_i}{\partial x_j} = r\Big(\delta_{ij} - \frac1C\Big) + (x_i-\mu)\,\frac{\partial r}{\partial x_j}
# = r\Big(\delta_{ij} - \frac1C - \frac{\hat x_i \hat x_j}{C}\Big).$$
#
# Contract with $g$ (the chain rule, $\partial L/\partial x_j = \sum_i g_i\, \partial \hat x_i/\partial x_j$):
#
# $$\boxed{\;\frac{\partial L}{\partial x} = r\,\Big(g - \operatorname{mean}(g) - \hat x\,\operatorname{mean}(g\odot\hat x)\Big),
# \qquad g = \bar y \odot \gamma\;}$$
#
# No approximation was made: $\epsilon$ is inside $r$. The formula needs only $x$ (which the graph keeps
# anyway), $\mu$, $r$ and two row means, so backward allocates nothing of size $(N, C)$ but the result.
# Read geometrically: the gradient is $g$ with its components along $\mathbf 1$ and along $\hat x$
# removed, scaled by $1/\sigma$. LayerNorm's output does not change when $x$ is shifted or scaled,
# so its gradient has no component in those directions: $\sum_j \partial L/\partial x_j = 0$ exactly,
# and $\sum_j \hat x_j\, \partial L/\partial x_j = r\,(1 - \|\hat x\|^2/C)\sum_j g_j\hat x_j \approx 0$
# (it is zero when $\epsilon = 0$, since then $\|\hat x\|^2 = C$).
#
# Below: the derivation in NumPy, then minillm's composed twin (autograd through mean, sub, sqrt, div)
# and the fused op, all in float64 with the same random upstream gradient.

# %%
def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """x (N, C) -> y (N, C); also returns what backward needs: x̂ (N, C) and r (N, 1)."""
    mu = x.mean(axis=-1, keepdims=True)                          # (N, 1)
    r = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)   # (N, 1)
    x_hat = (x - mu) * r                                         # (N, C)
    return x_hat * gamma + beta, (x_hat, r)


def layer_norm_backward(dy, gamma, saved):
    """The boxed formula: dL/dx (N, C), dL/dγ (C,), dL/dβ (C,)."""
    x_hat, r = saved
    g = dy * gamma                                               # gradient reaching x̂
    dx = r * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


N, C = 6, 8
x64 = rng.standard_normal((N, C)) * 3.0 + 1.5                   # rows with a mean and a scale to remove
gamma64, beta64 = rng.standard_normal(C), rng.standard_normal(C)
upstream = rng.standard_normal((N, C))                           # a random dL/dy, never all ones

y_hand, saved = layer_norm_forward(x64, gamma64, beta64)
dx_hand, dgamma_hand, dbeta_hand = layer_norm_backward(upstream, gamma64, saved)


def run_norm(op, *arrays):
    """Forward and backward of a minillm op on fresh float64 leaves: (y, [grads])."""
    leaves = [mm.tensor(a, requires_grad=True) for a in arrays]
    y = op(*leaves)
    y.backward(upstream)
    return y.numpy(), [t.grad for t in leaves]


print("x", x64.shape, "-> y", y_hand.shape, "| saved per row: mu, r", saved[1].shape)
for name, op in (("composed", F.layer_norm_composed), ("fused", F.layer_norm)):
    y, (dx, dgamma, dbeta) = run_norm(op, x64, gamma64, beta64)
    # the same float64 arithmetic in another order: agreement to a few units in the last place
    for what, ours, theirs in (("y", y_hand, y), ("dx", dx_hand, dx), ("dgamma", dgamma_hand, dgamma),
                               ("dbeta", dbeta_hand, dbeta)):
        np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12, err_msg=f"{name} {what}")
    print(f"{name:9s} matches the hand derivation: max |dx - hand| = {np.abs(dx - dx_hand).max():.1e}")

print("sum of dx per row (exactly 0 up to rounding):", np.abs(dx_hand.sum(axis=-1)).max())
print("sum of x̂·dx per row (0 but for eps):        ", np.abs((saved[0] * dx_hand).sum(axis=-1)).max())
assert np.abs(dx_hand.sum(axis=-1)).max() < 1e-12

# Finite differences with a random upstream gradient, for the fused op and its twin.
small_inputs = [rng.standard_normal((2, 3, 5)) * 2 + 1, rng.standard_normal(5), rng.standard_normal(5)]
assert mm.gradcheck(lambda x, w, b: F.layer_norm(x, w, b), small_inputs)
assert mm.gradcheck(lambda x, w, b: F.layer_norm_composed(x, w, b), small_inputs)
print("gradcheck (float64, random upstream): layer_norm and layer_norm_composed pass")

# %% [markdown]
# In float32, the training dtype, the fused op and the composed graph round differently; they agree to
# a few float32 ulps (relative $\sim 10^{-6}$), which is the tolerance to expect, not $10^{-12}$.
#
# The $r = 1/\sigma$ factor has a consequence that matters for the rest of this chapter: LayerNorm
# **forgets the scale of its input, and its gradient shrinks by that scale**. Multiply a row by $a$ and
# the output is unchanged (up to the effect of $\epsilon$ on rows of small variance) while
# $\partial L/\partial x$ is divided by $a$.

# %%
x32, gamma32, beta32 = (a.astype(np.float32) for a in (x64, gamma64, beta64))
fused32 = F.layer_norm(mm.tensor(x32), mm.tensor(gamma32), mm.tensor(beta32)).numpy()
composed32 = F.layer_norm_composed(mm.tensor(x32), mm.tensor(gamma32), mm.tensor(beta32)).numpy()
print(f"float32 fused vs composed: max |difference| = {np.abs(fused32 - composed32).max():.1e}")
np.testing.assert_allclose(fused32, composed32, rtol=1e-5, atol=1e-5)

print(f"{'scale a':>8} {'max|y(a·x) - y(x)|':>20} {'|dL/dx| at a·x':>16}")
for a in (0.1, 1.0, 10.0):
    y_scaled, (dx_scaled, _, _) = run_norm(F.layer_norm, a * x64, gamma64, beta64)
    print(f"{a:8.1f} {np.abs(y_scaled - y_hand).max():20.1e} {np.linalg.norm(dx_scaled):16.4f}")

# %% [markdown]
# ## 2 · RMSNorm
#
# RMSNorm (Zhang & Sennrich 2019, used by Llama) drops the centring and the bias:
#
# $$r = \frac{1}{\sqrt{\tfrac1C\sum_i x_i^2 + \epsilon}},\qquad \hat x = x\, r,\qquad y = \gamma\odot\hat x .$$
#
# The backward follows the same three steps with $\mu = 0$: $\partial r/\partial x_j = -\tfrac12 r^3 \cdot
# \tfrac2C x_j = -\tfrac{r^2}{C}\hat x_j$, so $\partial\hat x_i/\partial x_j = r\,(\delta_{ij} - \hat x_i\hat x_j/C)$ and
#
# $$\boxed{\;\frac{\partial L}{\partial x} = r\,\Big(g - \hat x\,\operatorname{mean}(g\odot\hat x)\Big),\qquad
# g = \bar y\odot\gamma,\qquad \frac{\partial L}{\partial\gamma} = \sum_{\text{rows}}\bar y\odot\hat x\;}$$
#
# One row reduction fewer in each direction (no mean), one parameter vector fewer, and the output is
# invariant to scaling only, not to shifting. The gradient keeps its component along $\mathbf 1$.

# %%
def rms_norm_forward(x, gamma, eps=1e-5):
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)   # (N, 1)
    return x * r * gamma, (x * r, r)


def rms_norm_backward(dy, gamma, saved):
    x_hat, r = saved
    g = dy * gamma
    return r * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True)), (dy * x_hat).sum(axis=0)


y_hand, saved = rms_norm_forward(x64, gamma64)
dx_hand, dgamma_hand = rms_norm_backward(upstream, gamma64, saved)
for name, op in (("composed", F.rms_norm_composed), ("fused", F.rms_norm)):
    y, (dx, dgamma) = run_norm(op, x64, gamma64)
    for what, ours, theirs in (("y", y_hand, y), ("dx", dx_hand, dx), ("dgamma", dgamma_hand, dgamma)):
        np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12, err_msg=f"{name} {what}")
    print(f"{name:9s} rms_norm matches the hand derivation: max |dx - hand| = {np.abs(dx - dx_hand).max():.1e}")
assert mm.gradcheck(lambda x, w: F.rms_norm(x, w), small_inputs[:2])
assert mm.gradcheck(lambda x, w: F.rms_norm_composed(x, w), small_inputs[:2])
print("gradcheck (float64, random upstream): rms_norm and rms_norm_composed pass")
print("sum of dx per row, RMSNorm (not 0: no centring):", np.round(dx_hand.sum(axis=-1)[:3], 3))

# %% [markdown]
# What the two norms do to rows: 2,000 rows with random offsets and scales, each row's mean and
# standard deviation before and after ($\gamma = 1$, $\beta = 0$), on the same axes. LayerNorm maps every
# row to mean 0 and standard deviation 1 (just under, because of $\epsilon$): a single point. RMSNorm maps
# every row to root-mean-square 1, so a row with a large offset keeps it (its mean and standard deviation
# then trade off along the half circle $\mu^2 + \sigma^2 = 1$).

# %%
rows = rng.standard_normal((2000, 64)) * rng.uniform(0.2, 3.0, (2000, 1)) + rng.normal(0, 2.0, (2000, 1))
ones64 = mm.tensor(np.ones(64))
after_ln = F.layer_norm(mm.tensor(rows), ones64).numpy()
after_rms = F.rms_norm(mm.tensor(rows), ones64).numpy()
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True, sharey=True)   # the same axes: compare shapes
for ax, data, title in zip(axes, (rows, after_ln, after_rms), ("input rows", "after LayerNorm", "after RMSNorm")):
    ax.scatter(data.mean(axis=1), data.std(axis=1), s=3, alpha=0.4)
    ax.set_title(title)
    ax.set_xlabel("row mean")
axes[0].set_ylabel("row standard deviation")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3 · Residual connections
#
# A stack of $L$ sub-layers either replaces its input, $x_{l+1} = f_l(x_l)$, or adds to it,
# $x_{l+1} = x_l + f_l(x_l)$. Write $\bar x_l = \partial L/\partial x_l$ and $J_l = \partial f_l/\partial x_l$.
# The chain rule gives
#
# $$\text{plain: } \bar x_0 = J_0^\top J_1^\top\cdots J_{L-1}^\top\, \bar x_L,\qquad
# \text{residual: } \bar x_0 = (I + J_0)^\top (I + J_1)^\top\cdots (I + J_{L-1})^\top\, \bar x_L .$$
#
# The plain product is a product of $L$ random-ish matrices: its size changes geometrically with depth,
# by whatever factor a typical $J_l$ scales vectors (less than 1 and the gradient vanishes, more and it
# explodes). Expanding the residual product, one of its terms is $\bar x_L$ itself: the gradient at the
# top reaches every layer unchanged, plus corrections. The residual stream is a gradient highway.
#
# The experiment: 32 GELU MLPs (minillm's `MLP`, $C = 64$, $H = 4C$, PyTorch's default uniform
# initialisation), the same weights stacked both ways, one random upstream gradient at the top. The plot
# shows $\|\bar x_l\|$ at every layer.

# %%
depth, width = 32, 64
mm.manual_seed(1)
sublayers = [MLP(width, 4 * width) for _ in range(depth)]
stack_input = rng.standard_normal((64, width)).astype(np.float32)
stack_upstream = rng.standard_normal((64, width)).astype(np.float32)

gradient_norms = {}
for kind in ("plain", "residual"):
    x = mm.tensor(stack_input, requires_grad=True)
    stream = [x]
    for mlp in sublayers:
        x = mlp(x) if kind == "plain" else x + mlp(x)
        x.retain_grad()                                          # keep dL/dx_l of this intermediate
        stream.append(x)
    x.backward(stack_upstream)
    gradient_norms[kind] = [float(np.linalg.norm(t.grad)) for t in stream]
    for mlp in sublayers:
        mlp.zero_grad()
    print(f"{kind:8s}: |dL/dx_0| = {gradient_norms[kind][0]:.2e}, |dL/dx_{depth}| = {gradient_norms[kind][-1]:.2e}, "
          f"output std {x.numpy().std():.2e}")

plt.figure(figsize=(6, 3.6))
for kind, norms in gradient_norms.items():
    plt.semilogy(range(depth + 1), np.maximum(norms, 1e-30), marker="o", ms=3, label=kind)
plt.xlabel("layer l (0 = input)")
plt.ylabel("|dL/dx_l|")
plt.title(f"gradient reaching each layer of a {depth}-layer MLP stack")
plt.legend()
plt.show()
assert gradient_norms["residual"][0] > 0.5 * gradient_norms["residual"][-1]      # the highway
assert gradient_norms["plain"][0] < 1e-6 * gradient_norms["plain"][-1]           # vanished

# %% [markdown]
# Without residuals the gradient that reaches the first layers is zero in float32 (it underflowed);
# with them it is the same order as at the top. (The forward signal shrinks the same way in the plain
# stack: each uniform-initialised layer scales its input down.)
#
# ## 4 · The feed-forward: GELU and SwiGLU
#
# ### GELU
#
# GELU weights its input by the probability that a standard normal is below it:
#
# $$\operatorname{GELU}(x) = x\,\Phi(x) = \frac x2\Big(1 + \operatorname{erf}\frac{x}{\sqrt2}\Big),\qquad
# \frac{d}{dx}\operatorname{GELU}(x) = \Phi(x) + x\,\varphi(x),\quad \varphi(x) = \frac{e^{-x^2/2}}{\sqrt{2\pi}} .$$
#
# GPT-2 uses the tanh approximation, with $k = \sqrt{2/\pi}$, $c = 0.044715$ and $u = k\,(x + c x^3)$:
#
# $$\operatorname{GELU}_{\tanh}(x) = \frac x2\big(1 + \tanh u\big),\qquad
# \frac{d}{dx}\operatorname{GELU}_{\tanh}(x) = \frac12\big(1+\tanh u\big) + \frac x2\,\big(1-\tanh^2 u\big)\,k\,(1 + 3c x^2).$$
#
# minillm's `F.gelu(x, approximate="tanh" | "none")` is fused; its backward for the tanh form recomputes
# $u$ instead of saving it (the $(N, H)$ hidden activation is the biggest per-layer array). The composed
# twin `F.gelu_composed` exists for the tanh form (erf is not a primitive op).

# %%
grid = np.linspace(-5, 5, 401)
phi = np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi)
big_phi = 0.5 * (1 + np.vectorize(math.erf)(grid / math.sqrt(2)))
k_gelu, c_gelu = math.sqrt(2 / math.pi), 0.044715
tanh_u = np.tanh(k_gelu * (grid + c_gelu * grid ** 3))
hand = {
    "none": (grid * big_phi, big_phi + grid * phi),
    "tanh": (0.5 * grid * (1 + tanh_u),
             0.5 * (1 + tanh_u) + 0.5 * grid * (1 - tanh_u ** 2) * k_gelu * (1 + 3 * c_gelu * grid ** 2)),
}
for form, (value, slope) in hand.items():
    x = mm.tensor(grid, requires_grad=True)
    y = F.gelu(x, approximate=form)
    y.sum().backward()                                           # elementwise: d sum / dx_i = gelu'(x_i)
    np.testing.assert_allclose(y.numpy(), value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, slope, rtol=1e-10, atol=1e-12)
print("F.gelu values and derivatives match the formulas, both forms")
gap = np.abs(hand["tanh"][0] - hand["none"][0])
print(f"max |GELU_tanh - GELU| on [-5, 5]: {gap.max():.1e} at x = {grid[gap.argmax()]:+.2f}")

sample = rng.standard_normal((3, 7)) * 2
np.testing.assert_allclose(F.gelu(mm.tensor(sample)).numpy(), F.gelu_composed(mm.tensor(sample)).numpy(),
                           rtol=1e-12, atol=1e-14)
assert mm.gradcheck(lambda x: F.gelu(x, approximate="tanh"), [sample])
assert mm.gradcheck(lambda x: F.gelu(x, approximate="none"), [sample])
assert mm.gradcheck(lambda x: F.gelu_composed(x), [sample])
print("gradcheck: gelu (tanh, none) and gelu_composed pass; fused == composed")

# %% [markdown]
# ### SwiGLU
#
# Llama's feed-forward gates one projection by another: with $a = xW_{\text{gate}}^\top$ and
# $b = xW_{\text{up}}^\top$ (both $(N, H)$),
#
# $$\operatorname{SwiGLU}(a, b) = \operatorname{SiLU}(a)\odot b = a\,\sigma(a)\odot b,\qquad
# \frac{\partial y}{\partial a} = b\;\sigma(a)\big(1 + a(1-\sigma(a))\big),\qquad \frac{\partial y}{\partial b} = a\,\sigma(a) .$$
#
# (From $\sigma' = \sigma(1-\sigma)$: $\frac{d}{da}\,a\sigma(a) = \sigma + a\sigma(1-\sigma)$.) Three matrices
# instead of two, so for the same parameter count the hidden width is $\tfrac23\cdot 4C$, rounded up
# (`swiglu_hidden`).

# %%
a64, b64 = rng.standard_normal((4, 6)) * 2, rng.standard_normal((4, 6))
up46 = rng.standard_normal((4, 6))
sigma = 1 / (1 + np.exp(-a64))
da_hand, db_hand = up46 * b64 * sigma * (1 + a64 * (1 - sigma)), up46 * a64 * sigma
for name, op in (("composed", F.swiglu_composed), ("fused", F.swiglu)):
    a, b = mm.tensor(a64, requires_grad=True), mm.tensor(b64, requires_grad=True)
    y = op(a, b)
    y.backward(up46)
    np.testing.assert_allclose(y.numpy(), a64 * sigma * b64, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.grad, da_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.grad, db_hand, rtol=1e-10, atol=1e-12)
    print(f"{name:9s} swiglu matches the hand derivation")
assert mm.gradcheck(F.swiglu, [a64, b64])
assert mm.gradcheck(F.swiglu_composed, [a64, b64])
print("gradcheck: swiglu and swiglu_composed pass")

print(f"\n{'C':>5} {'GELU MLP, H=4C':>18} {'SwiGLU, H=swiglu_hidden(C)':>28}")
for width_c in (64, 192, 768):
    gelu_mlp, swiglu_mlp = MLP(width_c, bias=False), SwiGLUMLP(width_c)
    print(f"{width_c:5d} {gelu_mlp.num_parameters():18,d} {swiglu_mlp.num_parameters():18,d} "
          f"(H = {swiglu_hidden(width_c)})")

silu_value = grid / (1 + np.exp(-grid))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].plot(grid, hand["none"][0], label="GELU (erf)")
axes[0].plot(grid, hand["tanh"][0], "--", label="GELU (tanh approx.)")
axes[0].plot(grid, silu_value, ":", label="SiLU = x·σ(x) (SwiGLU's gate)")
axes[0].plot(grid, np.maximum(grid, 0), lw=0.8, color="grey", label="ReLU")
axes[0].set_ylim(-1, 3)
axes[0].set_xlim(-4, 3)
axes[0].set_title("activations")
axes[0].legend(fontsize=8)
axes[1].plot(grid, hand["none"][1], label="GELU'")
axes[1].plot(grid, hand["tanh"][1], "--", label="GELU_tanh'")
axes[1].plot(grid, 1e3 * (hand["tanh"][0] - hand["none"][0]), lw=0.8, label="1000 × (GELU_tanh − GELU)")
axes[1].set_xlim(-4, 4)
axes[1].set_title("derivatives, and the approximation error")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5 · Pre-norm vs post-norm
#
# The original transformer normalises *after* the residual sum ("Add & Norm"); GPT-2 and Llama
# normalise the *input* of each sub-layer and leave the residual stream alone:
#
# $$\text{post-norm: } x_{l+1} = \operatorname{N}\!\big(x_l + f_l(x_l)\big),\qquad
# \text{pre-norm: } x_{l+1} = x_l + f_l\big(\operatorname{N}(x_l)\big)\quad(\text{and one final norm before the head}).$$
#
# The gradient of the stream, with $N'$ the norm's Jacobian from section 1 (size $r = 1/\sigma$ of the
# norm's input, times $\gamma$):
#
# $$\text{post: } \bar x_l = (I + J_l)^\top N_l'^{\top}\,\bar x_{l+1},\qquad
# \text{pre: } \bar x_l = \bar x_{l+1} + J_l^\top\,\bar x_{l+1}\quad (J_l \text{ now includes } N_l').$$
#
# In pre-norm the identity path of section 3 is intact. In post-norm every path from the loss to layer
# $l$ passes through every later norm, and each divides the gradient by the standard deviation of its
# input $x_k + f_k(x_k)$. At initialisation the branches $f_k$ are tiny (GPT-2's init), that standard
# deviation is about 1 and nothing happens; as soon as training makes the branches comparable to the
# stream, each post-norm layer divides the gradient by a factor $> 1$ and the early layers stop learning.
#
# The experiment: two character-level GPT-2-style models ($C = 32$; 8 layers and 40 steps at the small
# size, 12 layers and 150 steps at the full size) on the embedded Shakespeare corpus, the same initial
# weights and batches, AdamW at a constant learning rate of $10^{-3}$ with **no warmup**, one post-norm and
# one pre-norm. We record the loss and, at the start and the end, the gradient $\|\bar x_l\|$ at each
# block's input; for the post-norm model also each block's two $1/\sigma$ factors.

# %%
text = "".join(read_corpus(default_corpus_path()))
char_tokenizer = CharTokenizer.train(text)
char_ids = np.array(char_tokenizer.encode(text[:300_000]), dtype=np.int64)
char_frequencies = np.bincount(char_ids) / len(char_ids)
char_frequencies = char_frequencies[char_frequencies > 0]
unigram_nats = float(-(char_frequencies * np.log(char_frequencies)).sum())    # the best loss without context
print(f"{char_tokenizer.vocab_size} characters; unigram entropy {unigram_nats:.3f} nats/char")
n_layer, norm_steps = (8, 40) if SMALL else (12, 150)
context, batch = 32, 16


def char_batch(generator):
    starts = generator.integers(0, len(char_ids) - context - 1, batch)
    windows = np.stack([char_ids[s:s + context + 1] for s in starts])              # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def stream_gradients(model, inputs, targets):
    """|dL/dx_l| at each block's input, and (post-norm) each block's 1/σ of its two norm inputs."""
    x = model.tok_emb(inputs) + model.pos_emb(inputs.shape[1])                    # (B, T, C)
    inputs_of_blocks, shrink = [], []
    for block in model.blocks:
        x.retain_grad()
        inputs_of_blocks.append(x)
        if not block.pre_norm:
            with mm.no_grad():                                   # the two sums each post-norm divides
                first = x + block.attn(x)
                second = block.norm1(first)
                second = second + block.mlp(second)
            shrink.append(1 / first.numpy().std(axis=-1).mean() / second.numpy().std(axis=-1).mean())
        x = block(x)
    if model.norm_f is not None:
        x = model.norm_f(x)
    F.cross_entropy(F.linear(x, model.tok_emb.weight), targets).backward()
    model.zero_grad()
    return [float(np.linalg.norm(t.grad)) for t in inputs_of_blocks], shrink


snapshot_steps = sorted({0, 40, norm_steps})                    # when to measure the gradient profile
runs = {}
for placement in ("post", "pre"):
    mm.manual_seed(0)
    config = GPTConfig.gpt2(vocab_size=char_tokenizer.vocab_size, block_size=context, n_layer=n_layer,
                            n_head=4, n_embd=32, norm_position=placement)
    model = GPT(config)
    optimizer = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    batches = np.random.default_rng(0)
    losses, snapshots = [], {}
    for step in range(norm_steps + 1):
        if step in snapshot_steps:                               # the same probe batch every time
            snapshots[step] = stream_gradients(model, *char_batch(np.random.default_rng(99)))
        if step == norm_steps:
            break
        _, loss = model(*char_batch(batches))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    runs[placement] = dict(losses=losses, snapshots=snapshots)
    ratios = ", ".join(f"step {s}: {g[1] / g[-1]:.1e}" for s, (g, _) in snapshots.items())
    print(f"{placement + '-norm':9s}: mean loss of the last 10 steps {np.mean(losses[-10:]):.3f}; "
          f"|dL/dx| at block 1 / at the last block: {ratios}")

post_gradients, post_shrink = runs["post"]["snapshots"][40]
measured = np.array(post_gradients[1:-1]) / np.array(post_gradients[2:])
print("\npost-norm at step 40, blocks 1..L-2: measured |dx_l| / |dx_(l+1)| vs the two norms' 1/σ of block l")
print("  measured:", " ".join(f"{v:5.2f}" for v in measured))
print("  1/σ·1/σ: ", " ".join(f"{v:5.2f}" for v in post_shrink[1:-1]))

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for placement, color in (("pre", "tab:blue"), ("post", "tab:red")):
    run = runs[placement]
    for (step, (gradients, _)), style in zip(run["snapshots"].items(), (":", "-", "--")):
        axes[0].semilogy(gradients, style, color=color, marker="o", ms=3, label=f"{placement}-norm, step {step}")
    axes[1].plot(run["losses"], color=color, lw=1, label=f"{placement}-norm")
axes[0].set_xlabel("block l")
axes[0].set_ylabel("|dL/dx_l| at the block's input")
axes[0].legend(fontsize=8)
axes[1].axhline(unigram_nats, color="grey", lw=0.8, label="unigram entropy (no context)")
axes[1].set_xlabel("step")
axes[1].set_ylabel("training loss (nats/char)")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()
# at step 40 post-norm's early blocks receive far less gradient than its last one; pre-norm's do not
assert post_gradients[1] < 0.1 * post_gradients[-1]
pre_gradients = runs["pre"]["snapshots"][40][0]
assert pre_gradients[1] > 0.5 * pre_gradients[-1]

# %% [markdown]
# Read the left plot from right to left. At step 0 the two placements look alike. By step 40 the
# post-norm model's gradient loses a roughly constant factor per block (the measured ratio follows the
# product of the two norms' $1/\sigma$ printed above it; the rest is the branch Jacobians), so its first
# blocks barely move, while in the pre-norm model the gradient arrives at every block at about the same
# size. (At the full size a third snapshot, at the end, shows that the post-norm profile keeps changing
# as the gains and branches adapt: it is not a stable regime either.) The loss follows with a delay:
# both models first learn the character frequencies (the grey line) and must then learn to use context,
# which needs the early layers. At the full size the pre-norm model gets below the unigram line well before the
# post-norm one; the small size's 40 steps are too few to see that in the loss, only in the gradients.
# That is why pre-norm trains at depth without warmup, and why post-norm transformers need a warmup and
# a careful learning rate (and, at depth, tricks such as scaled initialisation).
#
# ## 6 · The block in minillm
#
# `minillm/nn/block.py` is short enough to read whole. `Block.forward` is
#
# ```python
# if self.pre_norm:
#     x = x + self.drop(self.attn(self.norm1(x), position_offset, kv_cache))
#     return x + self.drop(self.mlp(self.norm2(x)))
# x = self.norm1(x + self.drop(self.attn(x, position_offset, kv_cache)))
# return self.norm2(x + self.drop(self.mlp(x)))
# ```
#
# with `norm1`, `norm2` a `LayerNorm` or `RMSNorm`, `attn` the `CausalSelfAttention` of chapter 4 and
# `mlp` an `MLP` or `SwiGLUMLP`, all chosen by `GPTConfig`. Below, a GPT-2-style block is taken apart
# and put back together by hand, printing every shape on the way, and must give exactly `block(x)`.

# %%
mm.manual_seed(0)
walk_config = GPTConfig.gpt2(vocab_size=100, block_size=16, n_layer=2, n_head=4, n_embd=32)
walk_model = GPT(walk_config)
block = walk_model.blocks[0]
assert isinstance(block, Block)
x = mm.randn(2, 5, 32)                                           # (B, T, C)


def show(name, t):
    print(f"  {name:44s} {str(t.shape):>16}")
    return t


print("pre-norm GPT-2 block, B=2, T=5, C=32, 4 heads of D=8, H=4C=128")
h = show("x                      (B, T, C)", x)
n1 = show("norm1(x)               (B, T, C)", block.norm1(h))
q, k, v = block.attn.project_qkv(n1)
show("q = heads(q_proj(n1))  (B, n_head, T, D)", q)
show("k, v                   (B, n_kv_head, T, D)", k)
attended = show("attn: softmax(qk^T/√D)v, o_proj (B, T, C)", block.attn.attend(q, k, v))
h = show("x + attn               (B, T, C)", h + attended)
n2 = show("norm2(x)               (B, T, C)", block.norm2(h))
hidden = show("up_proj                (B, T, H)", block.mlp.up_proj(n2))
hidden = show("gelu                   (B, T, H)", F.gelu(hidden, block.mlp.approximate))
h = show("x + down_proj(...)     (B, T, C)", h + block.mlp.down_proj(hidden))
np.testing.assert_array_equal(h.numpy(), block(x).numpy())
print("the hand-assembled block equals block(x) exactly")

print(f"\n{'parameters of one block':28s} {'count':>8}")
for name, module in (("norm1 + norm2", None), ("attn (q, k, v, o)", block.attn), ("mlp (up, down)", block.mlp)):
    count = block.norm1.num_parameters() + block.norm2.num_parameters() if module is None else module.num_parameters()
    print(f"{name:28s} {count:8,d}")
print(f"{'total':28s} {block.num_parameters():8,d}   (≈ 12·C² = {12 * 32 ** 2:,d} plus biases and gains)")

# %% [markdown]
# The same walk for the whole model is chapter 4's attention inside this loop:
# token ids $(B, T)$ → embedding (+ learned positions) $(B, T, C)$ → `n_layer` blocks $(B, T, C)$ →
# final norm (pre-norm only) → head, tied to the embedding, $(B, T, V)$. Finally the block's gradients,
# by finite differences in float64: a Llama-style block (RMSNorm, RoPE, grouped-query attention,
# SwiGLU), checked with respect to its input and three of its weights at once
# (`functional_call` lets the gradcheck's leaves stand in for the parameters).

# %%
mm.manual_seed(0)
llama_config = GPTConfig.llama(vocab_size=50, block_size=8, n_layer=1, n_head=4, n_kv_head=2, n_embd=8,
                               mlp_hidden=12)
llama = GPT(llama_config, dtype=np.float64)
checked = ["blocks.0.norm1.weight", "blocks.0.attn.k_proj.weight", "blocks.0.mlp.gate_proj.weight"]
parameters = dict(llama.named_parameters())


def block_output(x, *weights):
    with functional_call(llama, dict(zip(checked, weights))):
        return llama.blocks[0](x)


block_input = rng.standard_normal((1, 4, 8))                     # (B, T, C)
print("Llama block:", [f"{name.split('.', 2)[2]} {parameters[name].shape}" for name in checked])
print("output", tuple(llama.blocks[0](mm.tensor(block_input)).shape))
assert mm.gradcheck(block_output, [block_input] + [parameters[name].numpy().copy() for name in checked])
print("gradcheck of the whole block (input and three weights): pass")

ids = rng.integers(0, walk_config.vocab_size, (2, 5))
logits, _ = walk_model(ids)
print(f"\nGPT: ids {ids.shape} -> logits {logits.shape}; "
      f"{walk_model.num_parameters():,d} parameters in {walk_config.n_layer} blocks + embeddings")
print(f"chapter run time: {time.perf_counter() - CHAPTER_STARTED:.1f} s")

# %% [markdown]
# ## Checklist
#
# | hyperparameter | typical | when it is off |
# |---|---|---|
# | `norm_position` | `pre` | post-norm at depth: early layers' gradients shrink by a factor per layer (section 5), the loss stalls or needs a long warmup and a lower learning rate |
# | `norm` | `layernorm` (GPT-2) / `rmsnorm` (Llama) | either trains; RMSNorm saves a reduction and a bias. A pretrained checkpoint needs the norm it was trained with |
# | `norm_eps` | `1e-5` (`1e-6` in some Llamas) | too large: rows with small variance are not normalised (x̂ shrinks, see the $a = 0.1$ row above); too small: a near-constant row gets a gain of up to $1/\sqrt{\epsilon}$ on its rounding noise |
# | residual branch init | `init_std / sqrt(2·n_layer)` on `o_proj`, `down_proj` | without the scaling the residual stream's variance grows with every block, so later norms divide by a larger $\sigma$ (section 1's table) and deep branches get smaller gradients |
# | `mlp`, `mlp_hidden` | `gelu` with $4C$ / `swiglu` with `swiglu_hidden(C)` | a SwiGLU with $H = 4C$ has 1.5× the feed-forward parameters; comparing models at unequal sizes misleads |
# | `gelu_approximate` | `tanh` for GPT-2 weights | loading GPT-2 weights with the exact form changes activations by up to the printed max gap: small, but logits no longer match the reference bit for bit |
#
# ## Exercises
#
# 1. Build LayerNorm's Jacobian for one row as a $C\times C$ matrix, $\partial\hat x/\partial x =
#    r\,(I - \mathbf 1\mathbf 1^\top/C - \hat x\hat x^\top/C)$, check it column by column against finite
#    differences of `layer_norm_forward`, and find its null space: which directions of $x$ does LayerNorm
#    ignore, and how does $\epsilon$ change that? *Hint:* the matrix is symmetric; `np.linalg.eigvalsh`
#    shows two eigenvalues near 0 (exactly one at 0 when $\epsilon > 0$) and the rest equal to $r$.
# 2. Repeat section 5 with `norm="rmsnorm"` and with `init_std=0.1` (larger branches from the start). Does
#    post-norm's gradient decay appear already at step 0? Predict it from the printed $1/\sigma$ factors first.
#    *Hint:* `stream_gradients(model, ...)` works for any `GPTConfig` with learned positions.
