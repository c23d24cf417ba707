# Chapter 4 of the minillm workbook: scaled dot-product attention, forward and backward, heads and groups.
# %% [markdown]
# # 4. Attention
#
# Attention is how a token reads from the others. Every position emits a **query** ("what am I
# looking for"), a **key** ("what do I hold") and a **value** ("what I hand over when chosen"). A
# query is compared with every key by a dot product; a softmax turns the scores into weights
# that sum to one; the output is the weighted average of the values. In a language model the
# comparison is **causal**: position $t$ may read positions $\le t$ only, so that predicting
# token $t+1$ cannot peek at it.
#
# In the blueprint this is the first half of the transformer block (chapter 5 wraps it with a
# norm and a residual connection). Its input is the residual stream built in chapter 3, its
# positions either already added (learned, sinusoidal) or applied to queries and keys here (RoPE).
#
# This chapter derives the forward pass, the scale $1/\sqrt{D}$, the mask, the softmax backward and
# the full attention backward; builds attention from `minillm.functional` primitives and checks it
# against the fused op the library runs; walks through multi-head and grouped-query attention; and
# ends by training a tiny model whose head learns to look back, and plotting where it looks.
#
# Shapes: $B$ batch, $T$ query positions, $S$ key positions ($S = T$ in self-attention), $C$
# model width, $H$ query heads, $H_{kv}$ key/value heads, $g = H/H_{kv}$ query heads per group,
# $D = C/H$ head size. The score matrix of 4.1 is called $S$ too (it is $T \times S$); the context
# always tells which is meant.

# %%
import math
import os
import time

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm import functional as F
from minillm.nn import GPT, CausalSelfAttention, GPTConfig
from minillm.optim import AdamW, decay_groups

mm.manual_seed(0)
rng = np.random.default_rng(0)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
print("size:", "small" if SMALL else "full")

# %% [markdown]
# ## 4.1 The forward pass, and why $1/\sqrt{D}$
#
# For one head, with queries $Q \in \mathbb{R}^{T \times D}$, keys $K \in \mathbb{R}^{S \times D}$ and
# values $V \in \mathbb{R}^{S \times D}$:
#
# $$S = \alpha\, Q K^\top + M, \qquad P = \operatorname{softmax}_{\text{rows}}(S), \qquad O = P V,
#   \qquad \alpha = \frac{1}{\sqrt{D}},$$
#
# with $P_{ij} = e^{S_{ij}} / \sum_{j'} e^{S_{ij'}}$, $M$ the mask (4.2), and the output
# $O \in \mathbb{R}^{T \times D}$: row $i$ is a convex combination of the value rows.
#
# **The scale.** Suppose the entries of a query $q$ and a key $k$ are independent with mean 0 and
# variance 1 (roughly what a normalised residual stream and well-initialised projections give).
# Then each product $q_d k_d$ has mean 0 and variance $\mathbb{E}[q_d^2]\,\mathbb{E}[k_d^2] = 1$,
# and the $D$ terms of $q \cdot k = \sum_{d=1}^{D} q_d k_d$ are independent, so
#
# $$\operatorname{Var}(q \cdot k) = D, \qquad \operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{D}}\right) = 1.$$
#
# Without the scale the scores' spread grows like $\sqrt{D}$; the softmax of scores that far apart
# is nearly one-hot, and (4.3) the gradient through a one-hot softmax is nearly zero: the
# attention pattern freezes at initialisation. Dividing by $\sqrt{D}$ keeps the scores at unit
# scale whatever the head size. Numerically:

# %%
rows = []
for d in (4, 16, 64, 256, 1024):
    q = rng.standard_normal((4096, d))
    k = rng.standard_normal((4096, d))
    dots = (q * k).sum(axis=1)                                 # 4096 independent q . k
    rows.append((d, dots.var(), (dots / math.sqrt(d)).var()))
print(f"{'D':>6} {'Var(q.k)':>10} {'Var(q.k/sqrt(D))':>18}")
for d, raw, scaled in rows:
    print(f"{d:6d} {raw:10.1f} {scaled:18.3f}")
    assert 0.85 * d < raw < 1.15 * d and 0.85 < scaled < 1.15   # 4096 samples: a few % of noise

# What that does to the softmax: T = 64 keys, rows of scores at D = 256
D_BIG, T_ROW = 256, 64
q = rng.standard_normal((T_ROW, D_BIG))
k = rng.standard_normal((T_ROW, D_BIG))
raw_scores = mm.tensor(q @ k.T)                              # (T, T), entries ~ N(0, D)
p_raw = F.softmax(raw_scores, axis=-1).numpy()
p_scaled = F.softmax(raw_scores * (1 / math.sqrt(D_BIG)), axis=-1).numpy()


def entropy(p):
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


print(f"\nrows of {T_ROW} keys, D = {D_BIG}: uniform attention has entropy ln {T_ROW} = {math.log(T_ROW):.2f}")
print(f"  unscaled: largest weight {p_raw.max(axis=1).mean():.3f} on average, entropy {entropy(p_raw).mean():.3f}")
print(f"  scaled:   largest weight {p_scaled.max(axis=1).mean():.3f} on average, entropy {entropy(p_scaled).mean():.3f}")
assert p_raw.max(axis=1).mean() > 0.8 > 0.3 > p_scaled.max(axis=1).mean()

fig, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
ax.bar(np.arange(T_ROW) - 0.2, p_raw[0], width=0.4, label=r"softmax($q \cdot k$)")
ax.bar(np.arange(T_ROW) + 0.2, p_scaled[0], width=0.4, label=r"softmax($q \cdot k / \sqrt{D}$)")
ax.set_xlabel("key j")
ax.set_ylabel("weight")
ax.set_title(f"one query's attention over {T_ROW} random keys, D = {D_BIG}")
ax.legend()
plt.show()

# %% [markdown]
# ## 4.2 The causal mask
#
# A language model predicts token $t+1$ from tokens $0..t$, for every $t$ of a sequence at once.
# Position $i$ must therefore not read any key $j > i$. The additive mask
#
# $$M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}$$
#
# gives those scores $-\infty$, so $e^{S_{ij}} = 0$: after the softmax the weights above the
# diagonal are exactly zero and each row still sums to one over the keys it may see. (Computing
# softmax as $e^{S_{ij} - \max_j S_{ij}} / \sum \cdots$ is the same function and never overflows; the
# max of a row always includes the diagonal, so no row is all $-\infty$.)
#
# When the queries are the last $T$ of $S$ positions (a key/value cache holds the first $S - T$,
# chapter 7), query $i$ sits at absolute position $i + S - T$ and may see keys $j \le i + S - T$:
# the mask is aligned to the bottom-right corner. `F.causal_mask(T, S)` builds both.

# %%
print("F.causal_mask(4, 4):\n", F.causal_mask(4, 4, np.float64))
print("F.causal_mask(2, 5): two new queries after three cached keys\n", F.causal_mask(2, 5, np.float64))

scores = rng.standard_normal((4, 4))
weights = F.softmax(mm.tensor(scores + F.causal_mask(4, 4, np.float64)), axis=-1).numpy()
print("weights:\n", weights)
assert np.all(np.triu(weights, k=1) == 0) and np.allclose(weights.sum(axis=1), 1)

# Causality checked end to end: changing the future does not change the past.
Bc, Hc, Tc, Dc = 2, 3, 8, 4
qc, kc, vc = (rng.standard_normal((Bc, Hc, Tc, Dc)) for _ in range(3))
out = F.scaled_dot_product_attention(mm.tensor(qc), mm.tensor(kc), mm.tensor(vc), is_causal=True).numpy()
kc2, vc2 = kc.copy(), vc.copy()
kc2[:, :, 5:] += 10.0 * rng.standard_normal((Bc, Hc, 3, Dc))   # new keys and values at positions 5, 6, 7
vc2[:, :, 5:] += 10.0 * rng.standard_normal((Bc, Hc, 3, Dc))
out2 = F.scaled_dot_product_attention(mm.tensor(qc), mm.tensor(kc2), mm.tensor(vc2), is_causal=True).numpy()
assert np.array_equal(out[:, :, :5], out2[:, :, :5]) and not np.allclose(out[:, :, 5:], out2[:, :, 5:])
print("outputs at positions 0..4 are unchanged when keys/values at 5..7 change")

# %% [markdown]
# ## 4.3 The softmax backward
#
# For one row, $p = \operatorname{softmax}(s)$ with $p_j = e^{s_j} / Z$, $Z = \sum_k e^{s_k}$. Differentiating
# $\ln p_j = s_j - \ln Z$ gives $\partial p_j / \partial s_i = p_j(\delta_{ij} - p_i)$: the Jacobian is
# $J = \operatorname{diag}(p) - p\,p^\top$ (symmetric). With the upstream gradient
# $dp = \partial L/\partial p$,
#
# $$ds_i = \sum_j dp_j\, \frac{\partial p_j}{\partial s_i} = \sum_j dp_j\, p_j (\delta_{ij} - p_i)
#   = p_i \Big(dp_i - \sum_j p_j\, dp_j\Big).$$
#
# For a matrix of rows, with $\odot$ the elementwise product and the row sum broadcast back:
#
# $$dS = P \odot \big(dP - \operatorname{rowsum}(dP \odot P)\big).$$
#
# Three things to read off it. The $S \times S$ Jacobian of a row is never built: $O(S)$ work per row,
# not $O(S^2)$. Masked entries have $P_{ij} = 0$, hence $dS_{ij} = 0$: the mask needs no backward
# of its own. And a saturated row ($p$ one-hot at $j^*$) has $dS_i = p_i(dp_i - dp_{j^*}) = 0$ for
# every $i$: no gradient flows, which is the frozen pattern 4.1 warned about.

# %%
s = rng.standard_normal((3, 5))                               # 3 rows of 5 scores
dP = rng.standard_normal((3, 5))                              # random upstream gradient
s_leaf = mm.tensor(s, requires_grad=True)
p = F.softmax(s_leaf, axis=-1)                                # minillm's fused softmax (hand-written backward)
p.backward(dP)
P = p.numpy()

dS_formula = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
dS_jacobian = np.stack([(np.diag(row) - np.outer(row, row)) @ g for row, g in zip(P, dP)])   # J^T dp, J symmetric
assert np.allclose(dS_formula, dS_jacobian, rtol=1e-12, atol=1e-14)
assert np.allclose(s_leaf.grad, dS_formula, rtol=1e-12, atol=1e-14)
print("softmax backward: formula = full Jacobian = minillm's, max |diff|",
      np.abs(s_leaf.grad - dS_formula).max())

assert mm.gradcheck(lambda x: F.softmax(x, axis=-1), [s])
assert mm.gradcheck(lambda x: F.softmax_composed(x, axis=-1), [s])
print("gradcheck passed: F.softmax and F.softmax_composed")

saturated = F.softmax(mm.tensor(np.array([[40.0, 0.0, 0.0, 0.0]])), axis=-1).numpy()
print("a saturated row", saturated, "-> dS =", saturated * (dP[:1, :4] - (dP[:1, :4] * saturated).sum()))

# %% [markdown]
# ## 4.4 The attention backward
#
# Chain the three steps of the forward pass backwards, for one head, given $dO = \partial L/\partial O$
# ($T \times D$):
#
# 1. $O = PV$ is a matrix product: $\; dV = P^\top dO \;$ ($S \times D$) and $\; dP = dO\, V^\top \;$ ($T \times S$).
# 2. The softmax (4.3): $\; dS = P \odot (dP - \delta)$, with $\delta_i = \sum_j P_{ij}\, dP_{ij}$.
# 3. $S = \alpha QK^\top + M$ ($M$ constant): $\; dQ = \alpha\, dS\, K \;$ ($T \times D$) and
#    $\; dK = \alpha\, dS^\top Q \;$ ($S \times D$).
#
# One more identity saves work. Substituting $dP = dO\,V^\top$,
#
# $$\delta_i = \sum_j P_{ij} \sum_d dO_{id} V_{jd} = \sum_d dO_{id} \underbrace{\sum_j P_{ij} V_{jd}}_{O_{id}}
#   = \sum_d dO_{id}\, O_{id},$$
#
# a row sum over $D$ instead of over $S$ (FlashAttention's trick; minillm's fused op uses it).
# Dropout on the weights (training only) multiplies $P$ by a fixed mask in the forward pass and
# $dP$ by the same mask backwards; this chapter runs without it.
#
# Below, these five lines in NumPy, against the gradients minillm's fused op produces.

# %%
def attention_backward_by_hand(q, k, v, d_out, causal=True):
    """dQ, dK, dV for O = softmax(alpha Q K^T + M) V, shapes (B, H, T, D) (one K/V head per query head)."""
    t, s, d = q.shape[-2], k.shape[-2], q.shape[-1]
    alpha = 1 / math.sqrt(d)
    scores = alpha * q @ k.swapaxes(-1, -2) + (F.causal_mask(t, s, q.dtype) if causal else 0)   # (B, H, T, S)
    P = np.exp(scores - scores.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)                                                         # (B, H, T, S)
    out = P @ v                                                                                # (B, H, T, D)
    dV = P.swapaxes(-1, -2) @ d_out                                                            # (B, H, S, D)
    dP = d_out @ v.swapaxes(-1, -2)                                                            # (B, H, T, S)
    delta = (d_out * out).sum(axis=-1, keepdims=True)                                          # (B, H, T, 1)
    assert np.allclose(delta, (dP * P).sum(axis=-1, keepdims=True), rtol=1e-10, atol=1e-12)   # the identity
    dS = P * (dP - delta)                                                                      # (B, H, T, S)
    return alpha * dS @ k, alpha * dS.swapaxes(-1, -2) @ q, dV                                 # dQ, dK, dV


Ba, Ha, Ta, Da = 2, 3, 6, 4
qa, ka, va = (rng.standard_normal((Ba, Ha, Ta, Da)) for _ in range(3))
d_out = rng.standard_normal((Ba, Ha, Ta, Da))
leaves = [mm.tensor(a, requires_grad=True) for a in (qa, ka, va)]
F.scaled_dot_product_attention(*leaves, is_causal=True).backward(d_out)
for name, mine, theirs in zip(("dQ", "dK", "dV"), attention_backward_by_hand(qa, ka, va, d_out), leaves):
    print(f"{name} {mine.shape}: max |by hand - fused| = {np.abs(mine - theirs.grad).max():.1e}")
    assert np.allclose(mine, theirs.grad, rtol=1e-10, atol=1e-12)   # float64, same math, other order

# %% [markdown]
# ## 4.5 Composed, then fused
#
# The composed version is the forward pass written with differentiable primitives of
# `minillm.functional`; autograd derives its backward from theirs (matmul, multiply, add, max,
# exp, sum, divide). It materialises every intermediate, $S$, $e^{S - \max}$, $P$, each $(B, H, T, S)$,
# and keeps them all for the backward pass.
#
# The fused op `F.scaled_dot_product_attention` (what `CausalSelfAttention` calls) does the same
# arithmetic in one `Function` with the hand-written backward of 4.4: the softmax computed in
# place, long causal sequences split into query blocks that stop at their last visible key (less
# of the masked upper triangle is computed at all), grouped-query heads broadcast rather than
# copied, and on a GPU no $(T, S)$ weights saved at all (the row log-sum-exp is enough to
# recompute them). minillm also keeps `F.scaled_dot_product_attention_composed`,
# its own composed twin, which its tests hold the fused op to.
#
# Checks: forward agreement in float32 at a realistic size (tolerance: float32 rounding,
# $\sim 10^{-7}$ relative, grown over the $D$- and $S$-term sums) and in float64 (to $10^{-12}$), gradient
# agreement in float64, and float64 finite-difference gradchecks of both with a random upstream
# gradient.

# %%
def attention_composed(q, k, v, causal=True):
    """softmax(Q K^T / sqrt(D) + M) V from minillm.functional primitives; q, k, v (B, H, T|S, D) Tensors."""
    b, h, t, d = q.shape
    s = k.shape[2]
    scores = F.matmul(q, F.swapaxes(k, -1, -2)) * (1 / math.sqrt(d))       # (B, H, T, S)
    if causal:
        scores = scores + F.causal_mask(t, s, q.dtype)                      # (T, S) broadcast, constant
    shifted = scores - F.max(scores, axis=-1, keepdims=True)                # stable: the row max becomes 0
    e = F.exp(shifted)                                                      # masked entries: e^-inf = 0
    weights = e / F.sum(e, axis=-1, keepdims=True)                          # (B, H, T, S), rows sum to 1
    return F.matmul(weights, v)                                             # (B, H, T, D)


B4, H4, T4, D4 = (2, 4, 64, 32) if SMALL else (4, 8, 256, 64)
q32, k32, v32 = (rng.standard_normal((B4, H4, T4, D4)).astype(np.float32) for _ in range(3))
print(f"q, k, v: (B, H, T, D) = {q32.shape}")
ours = attention_composed(mm.tensor(q32), mm.tensor(k32), mm.tensor(v32)).numpy()
fused = F.scaled_dot_product_attention(mm.tensor(q32), mm.tensor(k32), mm.tensor(v32), is_causal=True).numpy()
twin = F.scaled_dot_product_attention_composed(mm.tensor(q32), mm.tensor(k32), mm.tensor(v32), is_causal=True).numpy()
exact = attention_composed(*(mm.tensor(a.astype(np.float64)) for a in (q32, k32, v32))).numpy()
for name, y in (("composed (this cell)", ours), ("fused", fused), ("library's composed twin", twin)):
    error = np.abs(y - exact).max()
    print(f"  float32 {name:24s} max |y - float64 reference| = {error:.1e}")
    assert error < 1e-5                    # outputs are O(1): float32 rounding over D + S terms
assert np.allclose(fused, ours, rtol=1e-5, atol=1e-6)

# float64: forward and all three gradients, composed vs fused, with one random upstream gradient
B6, H6, T6, D6 = 2, 3, 7, 5
arrays = [rng.standard_normal((B6, H6, T6, D6)) for _ in range(3)]
upstream = rng.standard_normal((B6, H6, T6, D6))
results = {}
for name, fn in (("composed", attention_composed),
                 ("fused", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))):
    leaves = [mm.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*leaves)
    y.backward(upstream)
    results[name] = [y.numpy()] + [t.grad for t in leaves]
for label, a, b in zip(("output", "dQ", "dK", "dV"), results["composed"], results["fused"]):
    print(f"  float64 {label:6s} max |composed - fused| = {np.abs(a - b).max():.1e}")
    assert np.allclose(a, b, rtol=1e-10, atol=1e-12)

# finite differences (2 forwards per input element: keep these tiny)
tiny = [rng.standard_normal((1, 2, 4, 3)) for _ in range(3)]
assert mm.gradcheck(attention_composed, tiny)
assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tiny)
assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False), tiny)
print("gradcheck passed: composed and fused attention, causal and not, w.r.t. q, k and v")

# %% [markdown]
# ## 4.6 Multi-head and grouped-query attention
#
# One head computes one weighted average per position, i.e. it can follow one relation at a time.
# **Multi-head attention** runs $H$ heads side by side on slices of width $D = C/H$: the
# projections produce $C$ columns each, viewed as $H$ heads, every head attends independently, and
# the $H$ outputs are concatenated back to $C$ and mixed by an output projection $W_O$:
#
# $$\text{MHA}(X) = \big[\,\text{head}_1 \,\|\, \cdots \,\|\, \text{head}_H\,\big]\, W_O^\top, \qquad
#   \text{head}_h = \operatorname{softmax}\!\Big(\frac{Q_h K_h^\top}{\sqrt{D}} + M\Big) V_h .$$
#
# The cost of $H$ heads of width $C/H$ equals one head of width $C$; what is gained is $H$
# separate patterns.
#
# **Grouped-query attention** (Llama 2/3) keeps $H$ query heads but only $H_{kv}$ key/value
# heads: query head $h$ reads key/value head $\lfloor h / g \rfloor$, $g = H/H_{kv}$. The $k$ and $v$
# projections shrink from $C \times C$ to $C \times H_{kv} D$, and so does the key/value cache at
# generation time (chapter 7), the memory that limits long contexts. $H_{kv} = H$ is ordinary
# MHA, $H_{kv} = 1$ multi-query attention. GQA is exactly MHA with each key/value head's
# projection *repeated* $g$ times, so it is a constraint on MHA, not a different mechanism; the
# checks below show both statements.
#
# The shape walk-through, through `CausalSelfAttention` step by step:

# %%
Bm, Tm, Cm, Hm, Hkv = 2, 6, 32, 8, 2
Dm, g = Cm // Hm, Hm // Hkv
mm.manual_seed(1)
attn = CausalSelfAttention(Cm, Hm, n_kv_head=Hkv, dtype=np.float64)
x = mm.tensor(rng.standard_normal((Bm, Tm, Cm)))
print(attn)
print(f"x                 {x.shape}   (B, T, C)")
q_flat, k_flat = attn.q_proj(x), attn.k_proj(x)
print(f"q_proj(x)         {q_flat.shape}   (B, T, H*D),     H = {Hm}, D = {Dm}")
print(f"k_proj(x)         {k_flat.shape}    (B, T, H_kv*D),  H_kv = {Hkv}: g = {g} query heads per key/value head")
q, k, v = attn.project_qkv(x)
print(f"q (heads)         {q.shape} (B, H, T, D)     view of q_proj(x) reshaped (B, T, H, D), transposed")
print(f"k, v (heads)      {k.shape} (B, H_kv, T, D)")
print("query head -> key/value head:", {h: h // g for h in range(Hm)})
y_heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print(f"attention         {y_heads.shape} (B, H, T, D)")
merged = F.reshape(F.transpose(y_heads, (0, 2, 1, 3)), (Bm, Tm, Cm))
print(f"heads merged      {merged.shape}    (B, T, C)")
y = attn.o_proj(merged)
print(f"o_proj            {y.shape}    (B, T, C)")
assert np.allclose(y.numpy(), attn(x).numpy(), rtol=1e-12, atol=1e-14)

# The fused op broadcasts K/V over the group; the composed twin copies them with repeat_kv. Same numbers.
k_rep = F.repeat_kv(k, g)
print(f"repeat_kv(k, {g})   {k_rep.shape} (B, H, T, D): head h is k head h // g")
assert np.array_equal(k_rep.numpy()[:, 5], k.numpy()[:, 5 // g])
assert np.allclose(F.scaled_dot_product_attention_composed(q, k, v, is_causal=True).numpy(),
                   y_heads.numpy(), rtol=1e-12, atol=1e-14)
assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    [rng.standard_normal((1, 4, 3, 2)), rng.standard_normal((1, 2, 3, 2)),
                     rng.standard_normal((1, 2, 3, 2))])
print("gradcheck passed: fused GQA (4 query heads over 2 key/value heads); dK, dV sum over each group")

# %% [markdown]
# Two claims, asserted. First, the module equals the textbook definition written as a loop over
# heads, where head $h$ is single-head attention of $Q_h$ against $K_{\lfloor h/g \rfloor}, V_{\lfloor h/g \rfloor}$;
# with $H_{kv} = H$ the loop is plain multi-head attention (every head its own keys and values).
# Second, a GQA module equals an MHA module whose $k$/$v$ projections are the GQA ones with each
# head's rows repeated $g$ times.

# %%
def attention_loop_over_heads(module, x):
    """CausalSelfAttention by the definition: one single-head attention per query head, concatenated, W_O."""
    b, t, c = x.shape
    h, h_kv, d = module.n_head, module.n_kv_head, module.head_dim
    group = h // h_kv
    q = module.q_proj(x).numpy().reshape(b, t, h, d)
    k = module.k_proj(x).numpy().reshape(b, t, h_kv, d)
    v = module.v_proj(x).numpy().reshape(b, t, h_kv, d)
    heads = []
    for head in range(h):
        kv = head // group                                                   # the shared key/value head
        scores = q[:, :, head] @ k[:, :, kv].swapaxes(-1, -2) / math.sqrt(d) + F.causal_mask(t, t, x.dtype)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)                       # (B, T, T)
        heads.append(weights @ v[:, :, kv])                                  # (B, T, D)
    return module.o_proj(mm.tensor(np.concatenate(heads, axis=-1))).numpy()  # (B, T, H*D) -> (B, T, C)


for n_kv in (Hm, 2, 1):
    mm.manual_seed(2)
    module = CausalSelfAttention(Cm, Hm, n_kv_head=n_kv, dtype=np.float64)
    difference = np.abs(module(x).numpy() - attention_loop_over_heads(module, x)).max()
    kind = {Hm: "MHA", 1: "MQA"}.get(n_kv, "GQA")
    print(f"n_kv_head = {n_kv} ({kind}): module vs loop over heads, max |diff| = {difference:.1e}")
    assert difference < 1e-12

# GQA = MHA with repeated key/value projections
gqa = attn
mha = CausalSelfAttention(Cm, Hm, n_kv_head=Hm, dtype=np.float64)
state = {name: value.copy() for name, value in gqa.state_dict().items()}
for proj in ("k_proj", "v_proj"):
    w = state[f"{proj}.weight"].reshape(Hkv, Dm, Cm)                         # (H_kv, D, C)
    state[f"{proj}.weight"] = np.repeat(w, g, axis=0).reshape(Hm * Dm, Cm)   # (H*D, C): head h <- h // g
    state[f"{proj}.bias"] = np.repeat(state[f"{proj}.bias"].reshape(Hkv, Dm), g, axis=0).reshape(-1)
mha.load_state_dict(state)
assert np.allclose(mha(x).numpy(), gqa(x).numpy(), rtol=1e-12, atol=1e-14)
print("GQA (8 query heads, 2 key/value heads) = MHA with each key/value head repeated 4 times")

print(f"\nper layer, C = {Cm}, H = {Hm}, T = 1024 positions cached, float32:")
print(f"{'H_kv':>5} {'attention params':>17} {'KV cache per sequence':>22}")
for n_kv in (Hm, 2, 1):
    params = CausalSelfAttention(Cm, Hm, n_kv_head=n_kv).num_parameters()
    cache = 2 * n_kv * Dm * 1024 * 4                                         # k and v, (H_kv, T, D) each
    print(f"{n_kv:5d} {params:17,d} {cache / 1024:19.0f} KiB")

# %% [markdown]
# ## 4.7 What a trained head looks at
#
# A random head attends almost uniformly (4.1). Training shapes it. To see a crisp pattern in a
# few seconds, train a one-layer model on a **copy task**: each sequence is $N$ random tokens
# followed by the same $N$ tokens again,
#
# $$a_0\, a_1 \cdots a_{N-1}\; a_0\, a_1 \cdots a_{N-1}.$$
#
# The first half is unpredictable noise (its targets are ignored, `-100`). In the second half,
# the token after position $t$ is the one at $t + 1 - N$: the model can predict it only if some
# head at query $t$ attends to key $t - (N - 1)$, exactly $N - 1$ positions back, and copies that
# token's value through. With learned positions, the query and key projections have to learn to
# match position $t$ with position $t - N + 1$; the loss can only fall once they have.

# %%
VOCAB, N_COPY = 16, (8 if SMALL else 12)
T_COPY = 2 * N_COPY - 1                        # inputs a_0..a_{N-1} a_0..a_{N-2}; targets shifted by one
STEPS, BATCH = (60, 32) if SMALL else (200, 64)
mm.manual_seed(0)
data_rng = np.random.default_rng(0)
config = GPTConfig.gpt2(vocab_size=VOCAB, block_size=T_COPY, n_layer=1, n_head=2, n_embd=32)
model = GPT(config)
optimizer = AdamW(decay_groups(model.named_parameters(), 0.0), lr=1e-2, betas=(0.9, 0.95))
print(f"{model.num_parameters():,} parameters: 1 layer, {config.n_head} heads of {config.head_dim}, "
      f"T = {T_COPY}, vocabulary {VOCAB}")


def copy_batch(batch_size):
    """x (B, 2N-1) inputs and y (B, 2N-1) next-token targets; only the second half's targets count."""
    first = data_rng.integers(0, VOCAB, size=(batch_size, N_COPY))
    sequence = np.concatenate([first, first], axis=1)                        # (B, 2N)
    x, y = sequence[:, :-1], sequence[:, 1:].copy()
    y[:, :N_COPY - 1] = -100                                                 # unpredictable: ignored
    return x, y


# %% [markdown]
# To look inside, recompute the block's attention from its public pieces: the embeddings, the
# first norm, `project_qkv`, then $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$. The assert confirms it is the
# computation the model runs (these weights times $V$, merged and through $W_O$, give the
# attention layer's output). The number that matters is the weight each copying query
# $t \ge N-1$ puts on its source key $t - N + 1$; before training it is close to what a uniform
# spread over the $t+1$ visible keys would give.

# %%
def attention_maps(model, ids):
    """The weights (B, H, T, T) of the first block's heads for ids (B, T), from public pieces."""
    block = model.blocks[0]
    t = ids.shape[1]
    with mm.no_grad():
        h = model.tok_emb(ids) + model.pos_emb(t)                            # (B, T, C)
        q, k, v = block.attn.project_qkv(block.norm1(h))                     # (B, H, T, D) each
        scores = F.matmul(q, F.swapaxes(k, -1, -2)) * (1 / math.sqrt(q.shape[-1])) + F.causal_mask(t, t, q.dtype)
        weights = F.softmax(scores, axis=-1)                                 # (B, H, T, T)
        rebuilt = F.reshape(F.transpose(F.matmul(weights, v), (0, 2, 1, 3)), h.shape)
        assert np.allclose(block.attn.o_proj(rebuilt).numpy(), block.attn(block.norm1(h)).numpy(), atol=1e-5)
    return weights.numpy()


queries = np.arange(N_COPY - 1, T_COPY)                                      # positions whose target is a copy


def weight_on_source(maps):
    """(H,): the mean weight that copying queries t put on key t - N + 1, over sequences and t."""
    return maps[:, :, queries, queries - (N_COPY - 1)].mean(axis=(0, 2))


x_eval, _ = copy_batch(256)
print(f"before training: weight on the copy source per head {weight_on_source(attention_maps(model, x_eval))}; "
      f"uniform attention would give {np.mean(1 / (queries + 1)):.3f}")

# %% [markdown]
# Train, keeping a snapshot of the attention maps on the same 256 held-out sequences every few
# steps, to watch the pattern form.

# %%
SNAPSHOTS = [0, 10, 20, 30, 40, STEPS]                                       # steps at which to record the maps
losses, snapshots, started = [], {}, time.perf_counter()
for step in range(STEPS + 1):
    if step in SNAPSHOTS:
        snapshots[step] = attention_maps(model, x_eval)                      # (256, H, T, T)
    if step == STEPS:
        break
    x_batch, y_batch = copy_batch(BATCH)
    _, loss = model(x_batch, y_batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
print(f"{STEPS} steps in {time.perf_counter() - started:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.4f} "
      f"(chance: ln {VOCAB} = {math.log(VOCAB):.3f})")
assert losses[-1] < 0.2 * math.log(VOCAB)

maps = snapshots[STEPS]                                                      # the trained model's (256, H, T, T)
on_source = weight_on_source(maps)
for head, weight in enumerate(on_source):
    print(f"head {head}: average weight on the key {N_COPY - 1} back (the copy source) = {weight:.3f}")
assert on_source.max() > 0.5

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), layout="constrained",
                         gridspec_kw={"width_ratios": [1.25, 1, 1, 1]})
axes[0].plot(losses)
axes[0].axhline(math.log(VOCAB), color="0.6", ls="--", label=f"chance, ln {VOCAB}")
axes[0].set_yscale("log")
axes[0].set_xlabel("step")
axes[0].set_title("training loss (copied half)")
axes[0].legend()
tokens = [str(t) for t in x_eval[0]]
for head in range(config.n_head):
    ax = axes[1 + head]
    ax.imshow(maps[0, head], cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(T_COPY), tokens, fontsize=7)
    ax.set_yticks(range(T_COPY), tokens, fontsize=7)
    ax.set_title(f"head {head}, one sequence")
    ax.set_xlabel("key (token id)")
    ax.set_ylabel("query (token id)")
im = axes[3].imshow(maps[:, int(on_source.argmax())].mean(axis=0), cmap="Blues", vmin=0, vmax=1)
axes[3].plot(queries - (N_COPY - 1), queries, "r.", ms=3, label="copy source")
axes[3].set_title(f"head {int(on_source.argmax())}, mean of 256 sequences")
axes[3].set_xlabel("key position")
axes[3].set_ylabel("query position")
axes[3].legend(loc="lower right", fontsize=7)
fig.colorbar(im, ax=axes[1:], shrink=0.8, label="attention weight")
plt.show()

# %%
best = int(on_source.argmax())
fig, axes = plt.subplots(1, len(SNAPSHOTS), figsize=(2.8 * len(SNAPSHOTS), 3.4), layout="constrained")
for ax, step in zip(axes, SNAPSHOTS):
    ax.imshow(snapshots[step][:, best].mean(axis=0), cmap="Blues", vmin=0, vmax=1)
    ax.set_title(f"step {step}: {weight_on_source(snapshots[step])[best]:.2f} on source", fontsize=9)
    ax.set_xlabel("key position")
axes[0].set_ylabel("query position")
fig.suptitle(f"head {best}, mean of 256 sequences, as training proceeds")
plt.show()

# %% [markdown]
# Read the maps row by row: query $t$'s row shows where position $t$ looked. In the second half
# the copying head puts its weight on a stripe $N-1$ positions left of the diagonal: on the
# earlier occurrence of the token that comes next. In the first half there is nothing to copy,
# and the weights go wherever they do no harm (those targets are ignored). The snapshots show the
# stripe forming in the same steps in which the loss leaves $\ln V$: until the head finds the
# source, nothing downstream can predict the copy.
#
# ## Checklist
#
# | hyperparameter | what it does | when it is off |
# |---|---|---|
# | scale $\alpha$ (default $1/\sqrt{D}$) | keeps the scores at unit variance | $\alpha = 1$ with large $D$: one-hot attention from the first step, tiny gradients to $W_Q, W_K$, loss stalls; too small: uniform attention that averages everything |
# | `n_head` $H$ (with $D = C/H$) | how many separate patterns per layer | $D$ too small (e.g. $< 16$): each head's dot product is noisy and RoPE has few frequencies; too few heads: one layer cannot follow several relations (syntax and copying) at once |
# | `n_kv_head` $H_{kv}$ | key/value heads shared by groups of $g = H/H_{kv}$ query heads | must divide $H$ (an error otherwise); $H_{kv} = 1$ saves the most cache but can cost quality; converting a checkpoint with the wrong $H_{kv}$ mis-assigns every key head |
# | causal mask | forbids reading the future | missing in a language model: training loss collapses towards zero (the target is visible) while generation is garbage; a wrong alignment with a KV cache: cached and uncached outputs disagree |
# | `dropout` on the weights | regularisation (training only) | left on at evaluation: noisy, pessimistic losses and non-deterministic generation; on a small model with little data it mostly slows learning |
# | softmax arithmetic | $e^{S - \max S}$, accumulated in float32 or wider | without the max subtraction $e^{S}$ overflows (at $S > 88$ in float32, $> 11$ in float16): inf/NaN losses |
# | `block_size` $T$ | the longest context; attention's work grows as $T^2$ | the host path saves the $(B, H, T, T)$ weights for backward, so its memory grows as $T^2$ too (the GPU path saves a row log-sum-exp and recomputes them); doubling $T$ costs more than doubling $B$ |
#
# ## Exercises
#
# 1. **Break the scale.** Retrain the copy task with the scores multiplied by $\sqrt{D}$ instead of
#    divided (pass `scale=` to `F.scaled_dot_product_attention` in a copy of `CausalSelfAttention.attend`,
#    or test on the bare op first). Plot both loss curves and the mean attention entropy of the
#    copying head over training. *Hint:* the softmax backward of 4.3 shows why the curve stays flat.
# 2. **Induction needs two layers.** Replace the fixed copy with a variable one: a random token
#    $a$ somewhere in the first half is followed by $b$; later $a$ appears again and the target is
#    $b$. Show that `n_layer=1` cannot learn it but `n_layer=2` can, and plot both layers' maps:
#    one head should attend to "the previous token", a later one to "the token after the earlier
#    copy of me". *Hint:* give the model RoPE (`pos="rope"`) so both patterns are offsets.
