# Chapter 3 of the minillm workbook: token embeddings and the three ways to tell a model where tokens are.
# %% [markdown]
# # 3. Embeddings and positions
#
# A language model sees integers. The first thing it does is turn each token id into a vector of
# width $C$ by looking it up in a table, the **token embedding** $W_E$ ($V \times C$). From then on
# everything is arithmetic on vectors, and that arithmetic, attention in particular, does not know
# in which order the vectors came: permute the tokens and self-attention permutes its outputs the
# same way (checked in the first cell below; the causal mask of chapter 4 leaks a little order,
# since position $t$ sees $t+1$ tokens, but models are told positions explicitly). Order has to be
# put in by hand. This chapter builds the three ways minillm offers:
#
# - **learned absolute positions** (GPT-2): a second table $W_P$ ($T_{max} \times C$), one trained
#   row per position, added to the token embeddings;
# - **sinusoidal absolute positions** ("Attention Is All You Need"): a fixed table of sines and
#   cosines, added the same way;
# - **rotary position embedding, RoPE** (RoFormer, Llama): nothing is added; inside attention the
#   queries and keys are rotated by angles proportional to their positions, so that a query-key
#   score depends only on how far apart the two tokens are.
#
# In the blueprint this is the step between tokenization (chapter 2: text to ids) and attention
# (chapter 4): ids $(B, T)$ become the residual stream $(B, T, C)$ that every block reads and
# writes.
#
# Shapes used throughout: $B$ batch, $T$ sequence length, $C$ model width, $V$ vocabulary size,
# $H$ heads, $D = C / H$ head size.

# %%
import os

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm import functional as F
from minillm.nn import (
    Embedding,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_table,
)

mm.manual_seed(0)
rng = np.random.default_rng(0)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
print("size:", "small" if SMALL else "full")

# %%
# Attention without positions is blind to order: shuffle the tokens, and the outputs are shuffled alike.
tokens = rng.standard_normal((1, 1, 6, 4))                          # (B, H, T, D): q = k = v = the tokens
shuffle = rng.permutation(6)


def attend(x):
    return F.scaled_dot_product_attention(x, x, x).numpy()         # no causal mask


assert np.allclose(attend(mm.tensor(tokens))[:, :, shuffle], attend(mm.tensor(tokens[:, :, shuffle])), atol=1e-12)
print("attention(shuffled tokens) = shuffled attention(tokens): nothing in it knows the order")

# %% [markdown]
# ## 3.1 The token embedding is a lookup
#
# **Forward.** With ids $x \in \{0, \dots, V-1\}^{B \times T}$ and the table $W \in \mathbb{R}^{V \times C}$,
#
# $$y_{b,t,:} = W_{x_{b,t},:}, \qquad y \in \mathbb{R}^{B \times T \times C}.$$
#
# The same thing written as a matrix product makes the backward pass obvious. Let
# $O \in \{0,1\}^{N \times V}$ be the one-hot matrix of the $N = BT$ ids, $O_{n,v} = [x_n = v]$. Then
# $Y = O W$ ($N \times C$): a lookup is a product with a one-hot matrix that nobody builds.
#
# **Backward.** For $Y = OW$ the gradient with respect to $W$ is $\partial L / \partial W = O^\top G$,
# with $G = \partial L/\partial Y$ ($N \times C$). Row $v$ of $O^\top G$ is
#
# $$\frac{\partial L}{\partial W_{v,:}} = \sum_{n\,:\,x_n = v} G_{n,:},$$
#
# a **scatter-add**: every position sends its upstream row to the table row it read, and rows of
# ids that occur several times *accumulate*. Rows of ids that do not occur get zero gradient: only
# the embeddings of the tokens in the batch are pushed (an optimizer with momentum or weight decay
# still moves the others a little).
#
# Below: the lookup three ways (NumPy indexing, the one-hot product, minillm's fused
# `F.embedding`), then the backward by hand with `np.add.at` against minillm's.

# %%
V, C = 10, 4
W = rng.standard_normal((V, C))                        # (V, C) the table, float64
ids = np.array([[3, 1, 3, 7],
                [0, 3, 9, 1]])                         # (B, T) = (2, 4); id 3 occurs three times, id 1 twice
B, T = ids.shape

by_indexing = W[ids]                                   # (B, T, C)
one_hot = np.eye(V)[ids.reshape(-1)]                   # (N, V), N = B*T
by_product = (one_hot @ W).reshape(B, T, C)            # (N, V) @ (V, C) -> (B, T, C)
weight = mm.tensor(W, requires_grad=True)
fused = F.embedding(ids, weight)                       # minillm's Embedding op

print("ids", ids.shape, "-> table", W.shape, "-> embeddings", fused.shape)
assert np.array_equal(by_indexing, by_product)         # exact: each product sums one nonzero term
assert np.array_equal(fused.numpy(), by_indexing)
assert np.array_equal(F.embedding_composed(ids, mm.tensor(W)).numpy(), by_indexing)

# Backward with a random upstream gradient G (B, T, C)
G = rng.standard_normal((B, T, C))
fused.backward(G)

grad_by_hand = np.zeros_like(W)                        # (V, C)
np.add.at(grad_by_hand, ids.reshape(-1), G.reshape(-1, C))   # scatter-add: repeated ids accumulate
assert np.allclose(weight.grad, grad_by_hand, rtol=1e-12, atol=1e-14)
assert np.allclose(weight.grad, one_hot.T @ G.reshape(-1, C), rtol=1e-12, atol=1e-14)   # = O^T G

# The classic bug: fancy-index assignment does NOT accumulate; each repeated id keeps one row only.
wrong = np.zeros_like(W)
wrong[ids.reshape(-1)] += G.reshape(-1, C)
print("row 3 (id used 3 times): scatter-add", grad_by_hand[3], " fancy +=", wrong[3])
assert not np.allclose(wrong[3], grad_by_hand[3])
unused = sorted(set(range(V)) - set(ids.reshape(-1).tolist()))
print("rows of unused ids get zero gradient:", unused)
assert np.all(weight.grad[unused] == 0)

# %% [markdown]
# The float64 finite-difference check: `mm.gradcheck` perturbs every entry of the table by
# $\pm\varepsilon$, compares $(L(W+\varepsilon e_i) - L(W-\varepsilon e_i))/2\varepsilon$ with the
# analytic gradient, for $L = \sum y \odot g$ with a random upstream $g$. The ids include repeats,
# the case where a wrong scatter would fail.

# %%
ids_repeated = np.array([[5, 5, 2], [2, 5, 0]])       # id 5 three times, id 2 twice
table = rng.standard_normal((6, 3))
assert mm.gradcheck(lambda w: F.embedding(ids_repeated, w), [table])
assert mm.gradcheck(lambda w: F.embedding_composed(ids_repeated, w), [table])
print("gradcheck passed: F.embedding and F.embedding_composed, repeated ids included")

# The module wraps the op: Embedding(V, C) holds the (V, C) Parameter and calls F.embedding.
emb = Embedding(V, C, dtype=np.float64)
print(emb, "weight", emb.weight.shape, "->", emb(ids).shape)
assert np.array_equal(emb(ids).numpy(), emb.weight.numpy()[ids])

# %% [markdown]
# ## 3.2 Learned absolute positions
#
# GPT-2 adds a second table, one row per position:
#
# $$h^{(0)}_{b,t,:} = W_E[x_{b,t}] + W_P[t], \qquad W_P \in \mathbb{R}^{T_{max} \times C}.$$
#
# $W_P[t]$ is a $(T, C)$ slice broadcast over the batch, so its gradient is the upstream gradient
# summed over the batch: $\partial L/\partial W_P[t] = \sum_b G_{b,t,:}$ (rows $\ge T$ get nothing: a
# model trained only on short sequences never trains its later positions, which is why a learned
# table cannot be used beyond the length it was trained for).
#
# `LearnedPositionalEmbedding.forward(T, position_offset)` returns rows
# `offset .. offset+T-1`; the offset is what a key/value cache uses when it feeds token number
# 17 alone (chapter 7).

# %%
T_MAX = 8
pos = LearnedPositionalEmbedding(T_MAX, C, dtype=np.float64)
tok = Embedding(V, C, dtype=np.float64)
h0 = tok(ids) + pos(T)                                 # (B, T, C) + (T, C): broadcast over the batch
print("token embeddings", tok(ids).shape, "+ positions", pos(T).shape, "->", h0.shape)
assert np.array_equal(pos(3, position_offset=5).numpy(), pos.weight.numpy()[5:8])

G = rng.standard_normal(h0.shape)
h0.backward(G)
assert np.allclose(pos.weight.grad[:T], G.sum(axis=0), rtol=1e-12, atol=1e-14)   # summed over B
assert np.all(pos.weight.grad[T:] == 0)                                          # unused rows
print("position-table gradient: rows 0..T-1 = sum over the batch; rows T.. = 0")

# The composition, gradchecked in float64 with respect to both tables
tables = [rng.standard_normal((V, C)), rng.standard_normal((T_MAX, C))]
assert mm.gradcheck(lambda we, wp: F.embedding(ids, we) + F.getitem(wp, slice(0, T)), tables)
print("gradcheck passed: token embedding + learned positions")

# %% [markdown]
# ## 3.3 Sinusoidal positions
#
# Vaswani et al. (2017, section 3.5) use a fixed table instead. With $i = 0, \dots, C/2 - 1$ and the
# frequencies $\omega_i = 10000^{-2i/C}$,
#
# $$PE[p, 2i] = \sin\!\left(\frac{p}{10000^{2i/C}}\right) = \sin(p\,\omega_i), \qquad
#   PE[p, 2i+1] = \cos\!\left(\frac{p}{10000^{2i/C}}\right) = \cos(p\,\omega_i).$$
#
# Each pair of columns is a clock hand turning at its own speed: column pair 0 turns by one radian
# per position (period $2\pi$), the last pair by $10000^{-(C-2)/C}$ radians, a little over
# $10^{-4}$ for large $C$ (a period of tens of thousands of positions). Nothing is learned, so any
# length can be computed.
#
# **Why this form.** Two properties follow from the angle-addition formulas.
#
# 1. *A shift is a linear map.* For every offset $k$,
#    $$\begin{pmatrix} PE[p+k, 2i] \\ PE[p+k, 2i+1] \end{pmatrix} =
#      \begin{pmatrix} \cos k\omega_i & \sin k\omega_i \\ -\sin k\omega_i & \cos k\omega_i \end{pmatrix}
#      \begin{pmatrix} PE[p, 2i] \\ PE[p, 2i+1] \end{pmatrix},$$
#    a rotation that depends on $k$ but not on $p$: a layer can learn "look $k$ back" once for all
#    positions.
# 2. *The dot product depends only on the offset.*
#    $$PE[p] \cdot PE[q] = \sum_{i} \big(\sin p\omega_i \sin q\omega_i + \cos p\omega_i \cos q\omega_i\big)
#      = \sum_{i} \cos\big((p - q)\,\omega_i\big).$$
#    At $p = q$ it is $C/2$, the largest value; it falls off (not monotonically) as $|p - q|$ grows.
#
# First the table by hand, entry by entry from the formula, then minillm's.

# %%
P_MAX, C_PE = (64, 32) if SMALL else (256, 128)

by_hand = np.zeros((P_MAX, C_PE))
for p in range(P_MAX):
    for i in range(C_PE // 2):
        by_hand[p, 2 * i] = np.sin(p / 10000 ** (2 * i / C_PE))
        by_hand[p, 2 * i + 1] = np.cos(p / 10000 ** (2 * i / C_PE))

library = sinusoidal_table(P_MAX, C_PE, dtype=np.float64)
print("table", library.shape, " max |by hand - minillm| =", np.abs(by_hand - library).max())
assert np.allclose(by_hand, library, rtol=0, atol=1e-12)     # the same float64 formula, different order

sin_module = SinusoidalPositionalEmbedding(P_MAX, C_PE, dtype=np.float64)
assert sin_module.num_parameters() == 0                      # a buffer, nothing to train
assert np.array_equal(sin_module(5, position_offset=10).numpy(), library[10:15])

fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
im = ax.imshow(library, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
ax.set_xlabel("column (even: sin, odd: cos; frequency falls to the right)")
ax.set_ylabel("position p")
ax.set_title(f"Sinusoidal position table PE ({P_MAX} x {C_PE})")
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# Both properties, checked numerically. The shift: rotate every column pair of row $p$ by
# $k\omega_i$ and get row $p+k$. The dot product: the $(p, q)$ matrix of $PE[p]\cdot PE[q]$ is
# constant along every diagonal $p - q = k$ and equals $\sum_i \cos(k\omega_i)$ there.

# %%
omega = 10000.0 ** (-np.arange(0, C_PE, 2) / C_PE)         # (C/2,)
k = 5
sin_p, cos_p = library[:-k, 0::2], library[:-k, 1::2]        # (P-k, C/2) each
shifted = np.empty_like(library[:-k])
shifted[:, 0::2] = np.cos(k * omega) * sin_p + np.sin(k * omega) * cos_p
shifted[:, 1::2] = -np.sin(k * omega) * sin_p + np.cos(k * omega) * cos_p
assert np.allclose(shifted, library[k:], atol=1e-10)
print(f"PE[p + {k}] = R({k}) PE[p] for every p: the shift is one fixed rotation")

gram = library @ library.T                                   # (P, P): PE[p] . PE[q]
offsets = np.arange(-(P_MAX - 1), P_MAX)
predicted = np.array([np.cos(d * omega).sum() for d in offsets])
for d, value in zip(offsets, predicted):
    assert np.allclose(np.diagonal(gram, offset=-d), value, atol=1e-9)   # every p with p - q = d
print(f"PE[p].PE[q] depends on p - q only (checked on all {len(offsets)} diagonals); at 0 it is C/2 =",
      gram[0, 0])

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
im = left.imshow(gram, cmap="viridis", interpolation="nearest")
left.set_title("PE[p] . PE[q]: constant along diagonals")
left.set_xlabel("q")
left.set_ylabel("p")
fig.colorbar(im, ax=left)
for p0, marker, size in ((0, "o", 7), (P_MAX // 4, "s", 4), (P_MAX // 2, "x", 5)):
    q = np.arange(P_MAX)
    right.plot(q - p0, gram[p0], marker, ms=size, mfc="none", label=f"p = {p0}")
right.plot(offsets, predicted, "k-", lw=0.8, label=r"$\sum_i \cos(k\,\omega_i)$")
right.set_xlabel("offset k = q - p")
right.set_title("the same curve from every starting position")
right.legend()
plt.show()

# %% [markdown]
# ## 3.4 Rotary position embedding (RoPE)
#
# Absolute positions, learned or sinusoidal, are *added* to the content, and attention sees their
# offset only through whatever the projections make of the sum. RoPE puts the offset directly into
# the score. Split a head vector $x \in \mathbb{R}^D$ into $D/2$ pairs, give pair $i$ the frequency
# $\theta_i = \theta^{-2i/D}$ ($\theta = 10000$ by default), and at position $p$ rotate the pair by
# the angle $p\,\theta_i$:
#
# $$R(\alpha) = \begin{pmatrix} \cos\alpha & -\sin\alpha \\ \sin\alpha & \cos\alpha \end{pmatrix}, \qquad
#   \begin{pmatrix} y_a \\ y_b \end{pmatrix} = R(p\,\theta_i)\begin{pmatrix} x_a \\ x_b \end{pmatrix}.$$
#
# **Why the score depends on the offset only.** Rotations compose by adding angles and
# $R(\alpha)^\top = R(-\alpha)$. For one pair, a query $u$ at position $m$ and a key $w$ at position $n$,
#
# $$\big(R(m\theta_i)\,u\big)^\top \big(R(n\theta_i)\,w\big) = u^\top R(-m\theta_i) R(n\theta_i)\, w
#   = u^\top R\big((n - m)\,\theta_i\big)\, w,$$
#
# which involves $n - m$ only. Summing over the $D/2$ pairs,
# $\tilde q_m \cdot \tilde k_n = q^\top \mathcal{R}_{n-m}\, k$ with the block-diagonal rotation
# $\mathcal{R}_{n-m}$: shift both tokens by the same amount and the score does not change. Norms are preserved too ($R$ is orthogonal), so
# RoPE changes directions only.
#
# **Backward.** $y = \mathcal{R}_p x$ is linear with an orthogonal matrix, so
# $\partial L/\partial x = \mathcal{R}_p^\top\, \partial L/\partial y = \mathcal{R}_{-p}\, \partial L/\partial y$:
# the same rotation by the opposite angle. The fused `F.rope` hand-writes exactly that backward.
#
# **Which components form a pair.** The RoFormer paper pairs neighbours $(x_{2i}, x_{2i+1})$.
# minillm, like GPT-NeoX and Hugging Face's Llama, pairs $(x_i, x_{i + D/2})$: the first half of the
# vector holds the "$a$" components, the second half the "$b$" components:
#
# $$y_i = x_i \cos p\theta_i - x_{i+D/2} \sin p\theta_i, \qquad
#   y_{i+D/2} = x_{i+D/2} \cos p\theta_i + x_i \sin p\theta_i, \qquad i < D/2.$$
#
# The two layouts are the same rotation with the components permuted; what matters is that
# training and inference (and a checkpoint converted from elsewhere) agree on one.
#
# First the rotation on a single pair, position by position.

# %%
D_ROPE, P_ROPE = 16, (32 if SMALL else 64)
cos_table, sin_table = F.rope_tables(D_ROPE, P_ROPE, theta=10000.0, dtype=np.float64)   # (P, D/2) each
print("rope tables: cos", cos_table.shape, "sin", sin_table.shape, "(one angle per position and pair)")
angles = np.arange(P_ROPE)[:, None] * 10000.0 ** (-np.arange(0, D_ROPE, 2) / D_ROPE)     # (P, D/2)
assert np.allclose(cos_table, np.cos(angles), atol=1e-15) and np.allclose(sin_table, np.sin(angles), atol=1e-15)

# Where does pair i live? Put 1 in component i, rotate by one position, see which components move.
half = D_ROPE // 2
for i in (0, 1, half - 1):
    unit = np.zeros((1, 2, D_ROPE))                        # (..., T=2, D): positions 0 and 1
    unit[:, :, i] = 1.0
    rotated = F.rope(mm.tensor(unit), cos_table, sin_table).numpy()[0, 1]   # position 1
    print(f"e_{i} at position 1 -> nonzero components {np.flatnonzero(np.abs(rotated) > 1e-12).tolist()}")
    assert set(np.flatnonzero(np.abs(rotated) > 1e-12)) <= {i, i + half}

# A fixed vector at positions 0..P-1: each pair (x_i, x_{i+D/2}) walks around a circle at its own speed
x = rng.standard_normal(D_ROPE)
walk = F.rope(mm.tensor(np.tile(x, (P_ROPE, 1))), cos_table, sin_table).numpy()   # (P, D)
assert np.allclose(np.linalg.norm(walk, axis=1), np.linalg.norm(x))               # rotations keep the norm
print("degrees turned per position, pair by pair:", np.degrees(angles[1]).round(3))
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
for ax, i in zip(axes, (0, 2, 4)):
    radius = np.hypot(x[i], x[i + half])
    circle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(radius * np.cos(circle), radius * np.sin(circle), "-", color="0.85", lw=1)
    points = ax.scatter(walk[:, i], walk[:, i + half], c=np.arange(P_ROPE), cmap="viridis", s=20)
    ax.set_aspect("equal")
    ax.set_title(f"pair ({i}, {i + half}): {np.degrees(angles[1, i]):.3g} deg / position")
    ax.set_xlabel(f"y_{i}")
    ax.set_ylabel(f"y_{i + half}")
fig.colorbar(points, ax=axes, label="position p", shrink=0.8)
plt.show()

# %% [markdown]
# Now the property RoPE exists for. Take one query vector $q$ and one key vector $k$, place the
# query at position $m$ and the key at position $n$ for every $(m, n)$, rotate both, and record
# $\tilde q_m \cdot \tilde k_n$. The matrix must be constant along each diagonal $n - m = $ const.
# Without rotation (left) the score is the same everywhere, since nothing tells positions apart;
# with it (middle) the score is a function of the offset, the same from every starting position
# (right).

# %%
q_vec, k_vec = rng.standard_normal(D_ROPE), rng.standard_normal(D_ROPE)
q_rot = F.rope(mm.tensor(np.tile(q_vec, (P_ROPE, 1))), cos_table, sin_table).numpy()   # (P, D): q at every m
k_rot = F.rope(mm.tensor(np.tile(k_vec, (P_ROPE, 1))), cos_table, sin_table).numpy()   # (P, D): k at every n
scores = q_rot @ k_rot.T                                                               # (m, n)

for offset in range(-(P_ROPE - 1), P_ROPE):
    diagonal = np.diagonal(scores, offset=offset)          # all (m, n) with n - m = offset
    assert np.allclose(diagonal, diagonal[0], atol=1e-10)
print(f"q.k after RoPE depends on n - m only: all {2 * P_ROPE - 1} diagonals constant to 1e-10")

# the score at offset n - m equals q^T R_(n-m) k: rotate k alone by the offset
by_offset = np.array([q_vec @ F.rope(mm.tensor(np.tile(k_vec, (d + 1, 1))), cos_table, sin_table).numpy()[d]
                      for d in range(P_ROPE)])
assert np.allclose(by_offset, scores[0, :], atol=1e-10)

fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
plain = np.full((P_ROPE, P_ROPE), q_vec @ k_vec)
for ax, matrix, title in ((axes[0], plain, "no positions: q.k"), (axes[1], scores, "RoPE: q_m . k_n")):
    im = ax.imshow(matrix, cmap="RdBu", vmin=-np.abs(scores).max(), vmax=np.abs(scores).max())
    ax.set_title(title)
    ax.set_xlabel("key position n")
    ax.set_ylabel("query position m")
fig.colorbar(im, ax=axes[:2])
for m0 in (0, P_ROPE // 3, P_ROPE // 2):
    n = np.arange(m0, P_ROPE)
    axes[2].plot(n - m0, scores[m0, m0:], ".-", label=f"m = {m0}")
axes[2].set_xlabel("offset n - m")
axes[2].set_title("one curve, whatever m")
axes[2].legend()
plt.show()

# %% [markdown]
# ### RoPE by hand, against minillm's
#
# The composed version below builds the block rotation $\mathcal{R}_p$ explicitly, a $(D, D)$
# matrix per position with $\cos$ on the diagonal and $\mp\sin$ at $(i, i+D/2)$ and $(i+D/2, i)$,
# and applies it with a batched matrix product ($O(D^2)$ per vector instead of the fused op's
# $O(D)$, but every step is visible). Then three checks:
#
# - forward: hand-written $=$ `F.rope` $=$ `F.rope_composed` $=$ `RotaryEmbedding` (float64, to rounding);
# - backward: float64 gradchecks of the hand-written version and the fused op, with a random
#   upstream gradient, at a nonzero `position_offset`;
# - layout: the interleaved RoFormer layout is the half-split one conjugated by a permutation.

# %%
def rotation_matrices(positions, head_dim, theta=10000.0):
    """R_p (P, D, D) for the half-split layout: pair (i, i + D/2) rotated by p * theta^(-2i/D)."""
    half = head_dim // 2
    freqs = theta ** (-np.arange(0, head_dim, 2) / head_dim)        # (D/2,)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * freqs   # (P, D/2)
    R = np.zeros((len(positions), head_dim, head_dim))
    i = np.arange(half)
    R[:, i, i] = np.cos(angle)                    # y_i       = cos * x_i - sin * x_{i+D/2}
    R[:, i, i + half] = -np.sin(angle)
    R[:, i + half, i] = np.sin(angle)             # y_{i+D/2} = sin * x_i + cos * x_{i+D/2}
    R[:, i + half, i + half] = np.cos(angle)
    return R


def rope_by_hand(x, position_offset=0):
    """x (..., T, D) Tensor -> y (..., T, D): y[..., t, :] = R_(offset + t) x[..., t, :]."""
    t, d = x.shape[-2:]
    R = rotation_matrices(np.arange(position_offset, position_offset + t), d)   # (T, D, D)
    column = F.reshape(x, x.shape + (1,))                                        # (..., T, D, 1)
    return F.reshape(F.matmul(mm.tensor(R), column), x.shape)                    # (T, D, D) @ (..., T, D, 1)


Bq, Hq, Tq, OFFSET = 2, 3, 5, 7
xq = rng.standard_normal((Bq, Hq, Tq, D_ROPE))                                   # (B, H, T, D) queries
rotary = RotaryEmbedding(D_ROPE, P_ROPE, dtype=np.float64)
outputs = {
    "by hand": rope_by_hand(mm.tensor(xq), OFFSET).numpy(),
    "F.rope": F.rope(mm.tensor(xq), cos_table, sin_table, OFFSET).numpy(),
    "F.rope_composed": F.rope_composed(mm.tensor(xq), cos_table, sin_table, OFFSET).numpy(),
    "RotaryEmbedding": rotary(mm.tensor(xq), OFFSET).numpy(),
}
print("x", xq.shape, "-> y", outputs["F.rope"].shape, f"(positions {OFFSET}..{OFFSET + Tq - 1})")
for name, y in outputs.items():
    difference = np.abs(y - outputs["by hand"]).max()
    print(f"  {name:16s} max |y - by hand| = {difference:.1e}")
    assert difference < 1e-13          # the same float64 products, summed in a different order

small_x = rng.standard_normal((1, 2, 3, 8))                  # few elements: 2 forwards per element
small_cos, small_sin = F.rope_tables(8, 16, dtype=np.float64)
assert mm.gradcheck(lambda x: rope_by_hand(x, position_offset=4), [small_x])
assert mm.gradcheck(lambda x: F.rope(x, small_cos, small_sin, position_offset=4), [small_x])
assert mm.gradcheck(lambda x: F.rope_composed(x, small_cos, small_sin, position_offset=4), [small_x])
print("gradcheck passed: RoPE by hand, F.rope (fused, hand-written backward), F.rope_composed")

# the fused backward is the inverse rotation: dL/dx = R_p^T dL/dy
x_leaf = mm.tensor(small_x, requires_grad=True)
upstream = rng.standard_normal(small_x.shape)
F.rope(x_leaf, small_cos, small_sin, position_offset=4).backward(upstream)
R_small = rotation_matrices(np.arange(4, 7), 8)                                  # (T, D, D)
assert np.allclose(x_leaf.grad, np.einsum("tji,bhtj->bhti", R_small, upstream), atol=1e-14)

# interleaved (RoFormer) layout = permute to half-split, rotate, permute back
interleave = np.concatenate([np.arange(0, D_ROPE, 2), np.arange(1, D_ROPE, 2)])   # (x0, x2, ..) then (x1, x3, ..)
unscramble = np.argsort(interleave)
R_interleaved = rotation_matrices(np.arange(P_ROPE), D_ROPE)[:, unscramble][:, :, unscramble]
assert np.allclose(R_interleaved[3, 0:2, 0:2], [[np.cos(3.0), -np.sin(3.0)], [np.sin(3.0), np.cos(3.0)]])
print("interleaved layout: pair (0, 1) at position 3 is rotated by 3 rad, as in the RoFormer paper")

# %% [markdown]
# ## Checklist
#
# | hyperparameter | what it does | when it is off |
# |---|---|---|
# | `n_embd` $C$ (embedding width) | the width of every token vector and of the residual stream | too small: distinct tokens crowd together and the loss plateaus high; too large for the data: the $V \times C$ table (the largest matrix of a small model) overfits and most of its rows barely move, since only ids in the batch get gradient |
# | `vocab_size` $V$ | rows of the token table (and of the tied output head) | ids $\ge V$ are an error; a $V$ much larger than the tokenizer's wastes memory and leaves untrained rows that sampling may still pick |
# | `block_size` $T_{max}$ | rows of the learned position table; length of the sinusoidal/RoPE tables | learned positions cannot go beyond it (the rows do not exist); sinusoidal and RoPE tables can be computed for any length, but a model run past the length it was trained at meets positions (or offsets) it has never seen, and its loss rises |
# | `pos` | `learned` (GPT-2), `sinusoidal`, `rope` (Llama) | changing it means retraining: a learned checkpoint does not load into a sinusoidal/RoPE model (it has a `pos_emb.weight` parameter the other lacks), and sinusoidal vs RoPE load without complaint (neither has position parameters) but produce garbage, a loss far above the trained value |
# | `rope_theta` $\theta$ | the slowest RoPE frequency, $\theta^{-(D-2)/D}$ | too small: even the slowest pair wraps around within the context, so far-apart tokens alias to near ones; raising it (e.g. 500000 in Llama 3) is how long-context models stretch the range |
# | RoPE pairing | half-split $(i, i+D/2)$ here, interleaved $(2i, 2i+1)$ in RoFormer | weights trained with one layout and run with the other: attention scrambles; no error is raised, the loss just jumps |
# | `init_std` (0.02) | scale of the initial embeddings | $N(0, 1)$ embeddings (PyTorch's `Embedding` default) dwarf the residual branches at the start; GPT re-initialises them to 0.02 |
#
# ## Exercises
#
# 1. **Extrapolation.** Train two tiny models (chapter 6's loop) with `pos="learned"` and
#    `pos="rope"` at `block_size=64`, then evaluate the RoPE one on sequences of 128 tokens (build it
#    with `block_size=128` and load the weights). How does the loss on positions 64..127 compare
#    with positions 0..63? Why can the learned model not even be asked?
#    *Hint:* `GPT.load_state_dict` needs matching shapes; for RoPE the tables are buffers, not
#    parameters, so a longer `block_size` loads the same state.
# 2. **RoPE's long-range decay.** For random $q, k$ the expected score is zero, but for $q = k$ the
#    score $\tilde q_m \cdot \tilde k_n$ decays (with ripples) as $|n - m|$ grows. Plot it for
#    $\theta = 100$, $10^4$ and $10^6$ with $D = 64$ over 2048 positions and explain the shapes
#    from the frequencies $\theta_i$.
#    *Hint:* with $q = k$ the score is $\sum_i \|q_{\text{pair } i}\|^2 \cos((n-m)\theta_i)$.
