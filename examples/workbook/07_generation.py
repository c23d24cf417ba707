# Chapter 07 of the minillm workbook (percent format: sync.py writes 07_generation.ipynb from it).
# %% [markdown]
# # 07 · Generation: from logits to text
#
# A trained language model gives, for every prefix $x_{\le t}$, a vector of logits
# $\ell \in \mathbb{R}^V$ over the next token. *Generation* turns that into text, one token at a
# time: pick a token from $\mathrm{softmax}(\ell)$, append it, ask again. Two questions decide
# what comes out and how fast:
#
# 1. **How to pick** — greedy (the argmax), or sampling reshaped by a *temperature* $\tau$ and
#    truncated by *top-k* or *top-p* (nucleus) filtering.
# 2. **How not to recompute** — the *key/value cache*: the keys and values of past positions are
#    kept, so each new token costs one position of work instead of the whole prefix.
#
# In the blueprint this chapter sits after pretraining (chapter 06) and before instruction tuning
# (chapter 08, which uses the same decoding loop to read the model's answers). The library code
# is `minillm/generation/` (`sampling.py`: choosing a token; `decode.py`: the loop) and
# `minillm/nn/kv_cache.py` (the cache).

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from recipes import pretrain_tiny_model  # this folder: what chapters 07-10 share

import minillm as mm
from minillm import functional as F
from minillm.generation import candidates, draw
from minillm.nn import GPT, GPTConfig, KVCache

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# The matrices of this chapter are tiny (64 wide): one BLAS thread is as fast as two, and it does
# not stall when the machine is busy with other work (see minillm.host.set_blas_threads).
mm.host.set_blas_threads(1)
print(f"size: {'small' if SMALL else 'full'}")

# %% [markdown]
# ## A model that writes something
#
# Sampling is only interesting on a model whose distributions mean something, so we first train
# one. This is the *shared recipe* of chapters 07 and 08, `pretrain_tiny_model` in
# [`recipes.py`](recipes.py) beside this notebook (the same function, the same seed, so both chapters
# start from the same weights; each chapter trains it itself, so it runs alone in a fresh kernel;
# its loop, `fit`, is chapter 06's):
#
# - the embedded Shakespeare corpus (`minillm.data.default_corpus_path()`, what `minillm train`
#   reads by default);
# - a byte-level tokenizer with no merges: `BPETokenizer([])` maps each UTF-8 byte to its own id
#   (256 ids) plus `<|endoftext|>`, so $V = 257$ and one token is one character of this ASCII text;
# - a GPT-2-style model, 2 layers, 4 heads, $C = 64$, context $T = 128$, trained with AdamW,
#   warmup + cosine and clipping (chapter 06) on random windows.
#
# Small size: 200 steps, enough for letter frequencies, spaces and the layout of a play (names in
# capitals, short lines), though hardly for words; full size: 1500 steps, and words appear.

# %%
PRETRAIN_STEPS = 200 if SMALL else 1500
started = time.perf_counter()
model, tokenizer, pretrain_losses = pretrain_tiny_model(PRETRAIN_STEPS)
print(f"{model.num_parameters():,} parameters, {PRETRAIN_STEPS} steps in {time.perf_counter() - started:.1f} s; "
      f"loss {pretrain_losses[0]:.2f} -> {np.mean(pretrain_losses[-20:]):.2f} (ln V = {np.log(257):.2f})")
assert np.mean(pretrain_losses[-20:]) < pretrain_losses[0] - 1.5, "pretraining did not learn"

# %% [markdown]
# ## 1. Temperature
#
# The model's next-token distribution is $p_i = e^{\ell_i} / \sum_j e^{\ell_j}$. Sampling at
# temperature $\tau > 0$ divides the logits first:
#
# $$p_i(\tau) = \frac{e^{\ell_i/\tau}}{\sum_{j=1}^{V} e^{\ell_j/\tau}} .$$
#
# - $\tau = 1$ is the model's own distribution.
# - $\tau \to 0$: the ratio $p_i/p_{i^*} = e^{(\ell_i - \ell_{i^*})/\tau} \to 0$ for every
#   $i \ne i^* = \arg\max \ell$, so $p(\tau)$ becomes one-hot on the argmax: **greedy decoding**
#   is the zero-temperature limit (minillm treats `temperature=0` as exactly that).
# - $\tau \to \infty$: every $\ell_i/\tau \to 0$, so $p(\tau) \to$ uniform, $1/V$ each.
#
# **Entropy grows with temperature.** Write $\beta = 1/\tau$ and $Z(\beta) = \sum_j e^{\beta \ell_j}$,
# so $\log p_i = \beta \ell_i - \log Z$ and
#
# $$H = -\sum_i p_i \log p_i = \log Z - \beta\, \mathbb{E}_p[\ell].$$
#
# Since $\frac{d \log Z}{d\beta} = \mathbb{E}_p[\ell]$ and
# $\frac{d\, \mathbb{E}_p[\ell]}{d\beta} = \mathrm{Var}_p(\ell)$ (the derivative of $p_i$ is
# $p_i(\ell_i - \mathbb{E}_p[\ell])$),
#
# $$\frac{dH}{d\beta} = \mathbb{E}_p[\ell] - \mathbb{E}_p[\ell] - \beta\,\mathrm{Var}_p(\ell) = -\beta\,\mathrm{Var}_p(\ell),
# \qquad \frac{dH}{d\tau} = \frac{dH}{d\beta}\cdot\frac{d\beta}{d\tau} = \frac{\mathrm{Var}_p(\ell)}{\tau^3} \;\ge 0 .$$
#
# So $H(\tau)$ rises monotonically from $0$ (one-hot; a unique argmax) to $\log V$ (uniform).
#
# **Its gradient.** Sampling needs no backward pass, but a temperature inside a *training* loss
# (distillation, or a learned temperature) does. From $\log p_i = \ell_i/\tau - \log Z$,
#
# $$\frac{\partial p_i}{\partial \ell_j} = \frac{1}{\tau}\, p_i\,(\delta_{ij} - p_j),
# \qquad \text{so for an upstream gradient } g:\quad \frac{\partial}{\partial \ell}\big(g \cdot p\big) = \frac{1}{\tau}\, p \odot (g - g\cdot p).$$
#
# A low temperature sharpens the gradient as much as the distribution.
#
# Below: the model's distribution after a prompt, the softmax composed in NumPy against
# `F.softmax`, the gradient formula against backward and a float64 gradcheck, then the
# distribution at three temperatures and $H(\tau)$ with the derivative formula checked against
# finite differences.

# %%
prompt_text = "ROMEO:\nI will "
prompt_ids = tokenizer.encode_ordinary(prompt_text)
with mm.no_grad():
    logits, _ = model(np.asarray([prompt_ids]))                # (1, T, V)
print("prompt", repr(prompt_text), "->", len(prompt_ids), "ids; logits", logits.shape)
last = logits.data[0, -1].astype(np.float64)                   # (V,) the next-token logits


def softmax_with_temperature(row, tau):
    """p(τ) = softmax(row / τ), computed stably (the max is subtracted; it cancels in the ratio)."""
    z = row / tau
    e = np.exp(z - z.max())
    return e / e.sum()


def entropy(p):
    """H(p) = -Σ p log p in nats (0 log 0 = 0)."""
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


# composed (NumPy) vs the library's softmax op, at a few temperatures
for tau in (0.5, 1.0, 2.0):
    ours = softmax_with_temperature(last, tau)
    library = F.softmax(mm.tensor(last / tau)).data
    assert np.allclose(ours, library, rtol=1e-12, atol=1e-15)

# the gradient of g·softmax(ℓ/τ): (1/τ) p ⊙ (g - g·p), against backward; then finite differences
tau = 0.7
upstream = np.random.default_rng(0).normal(size=last.shape)
leaf = mm.tensor(last, requires_grad=True)
(F.softmax(leaf / tau) * mm.tensor(upstream)).sum().backward()
p = softmax_with_temperature(last, tau)
assert np.allclose(leaf.grad, p * (upstream - upstream @ p) / tau, rtol=1e-10, atol=1e-15)
mm.gradcheck(lambda logits: F.softmax(logits / tau), [np.random.default_rng(1).normal(size=(3, 11))])
print("softmax(ℓ/τ): composed == F.softmax; gradient formula == backward; gradcheck passed")

taus = np.geomspace(0.05, 20, 60)
entropies = np.array([entropy(softmax_with_temperature(last, t)) for t in taus])
assert np.all(np.diff(entropies) >= -1e-12), "entropy must not decrease with temperature"
assert entropies[0] < 0.05 and abs(entropies[-1] - np.log(len(last))) < 0.05


def entropy_slope(tau):
    """dH/dτ = Var_p(ℓ) / τ³ (derived above)."""
    p = softmax_with_temperature(last, tau)
    mean = (p * last).sum()
    return float((p * (last - mean) ** 2).sum() / tau ** 3)


for tau in (0.3, 1.0, 3.0):
    h = 1e-5
    numeric = (entropy(softmax_with_temperature(last, tau + h)) - entropy(softmax_with_temperature(last, tau - h))) / (2 * h)
    assert abs(numeric - entropy_slope(tau)) <= 1e-6 + 1e-5 * abs(numeric), (tau, numeric, entropy_slope(tau))
    print(f"tau={tau}: dH/dtau finite difference {numeric:.6f}, Var/tau^3 {entropy_slope(tau):.6f}")

top = np.argsort(-last)[:15]
labels = [repr(tokenizer.decode([int(i)]))[1:-1] for i in top]
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
width = 0.27
for k, tau in enumerate((0.5, 1.0, 2.0)):
    axes[0].bar(np.arange(15) + (k - 1) * width, softmax_with_temperature(last, tau)[top], width, label=f"τ = {tau}")
axes[0].set_xticks(np.arange(15), labels)
axes[0].set_title(f"next token after {prompt_text!r}: the 15 most likely")
axes[0].set_ylabel("probability")
axes[0].legend()
axes[1].semilogx(taus, entropies, label="H(τ) of this distribution")
axes[1].axhline(np.log(len(last)), color="gray", linestyle="--", label=f"log V = {np.log(len(last)):.2f}")
axes[1].axvline(1.0, color="gray", linestyle=":", linewidth=1)
axes[1].set_xlabel("temperature τ")
axes[1].set_ylabel("entropy (nats)")
axes[1].set_title("entropy rises monotonically with τ")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Top-k and top-p (nucleus) filtering
#
# Even a good model puts a little probability on thousands of wrong tokens; sampled often enough,
# the tail is what derails a text. Truncation removes it before drawing.
#
# **Top-k.** Keep the set $K$ of the $k$ largest logits and renormalise:
# $p'_i = p_i / \sum_{j \in K} p_j$ for $i \in K$, else $0$. Renormalising after the softmax is the
# same as a softmax over the kept logits only (the $Z$ cancels):
# $\frac{e^{\ell_i}/Z}{\sum_{j\in K} e^{\ell_j}/Z} = \frac{e^{\ell_i}}{\sum_{j \in K} e^{\ell_j}}$.
#
# **Top-p** (Holtzman et al. 2020). Sort the probabilities in decreasing order,
# $p_{(1)} \ge p_{(2)} \ge \dots$, and keep the *smallest* prefix whose mass reaches $p$:
#
# $$n^* = \min\Big\{ n : \sum_{r=1}^{n} p_{(r)} \ge p \Big\}, \qquad N = \{(1), \dots, (n^*)\}.$$
#
# The most likely token is always kept ($n^* \ge 1$). Unlike a fixed $k$, the nucleus adapts: a
# confident position keeps one or two tokens, an open one keeps many.
#
# minillm's order (`minillm/generation/sampling.py`): divide by $\tau$, then top-k, softmax over
# the kept ids, then top-p on those probabilities, then draw. Below both filters are written by
# hand and compared with the library's `candidates(row, temperature, top_k, top_p)`: **the same
# candidate sets and the same probabilities**, on the model's logits and on random ones.

# %%
def top_k_by_hand(row, tau, k):
    """ids of the k largest logits of row/τ, and their renormalised probabilities."""
    z = row / tau
    keep = np.argsort(-z, kind="stable")[:k]
    p = np.exp(z[keep] - z[keep].max())
    return keep, p / p.sum()


def top_p_by_hand(ids, probs, top_p):
    """The smallest most-likely-first prefix of (ids, probs) whose mass reaches top_p, renormalised."""
    order = np.argsort(-probs, kind="stable")
    ids, probs = ids[order], probs[order]
    mass = np.cumsum(probs)
    n = int(np.argmax(mass >= top_p)) + 1 if mass[-1] >= top_p else len(probs)
    return ids[:n], probs[:n] / probs[:n].sum()


def filter_by_hand(row, tau, k, top_p):
    if k is not None:
        ids, probs = top_k_by_hand(row, tau, k)
    else:
        ids, probs = np.arange(len(row)), softmax_with_temperature(row, tau)
    if top_p is not None:
        ids, probs = top_p_by_hand(ids, probs, top_p)
    return ids, probs


rng = np.random.default_rng(0)
rows = [last] + [rng.normal(0, 3, size=257) for _ in range(20)]
checked = 0
for row in rows:
    for tau in (0.7, 1.0, 1.5):
        for k, top_p in ((None, None), (10, None), (50, None), (None, 0.5), (None, 0.9), (40, 0.9)):
            ours_ids, ours_p = filter_by_hand(row, tau, k, top_p)
            lib_ids, lib_p = candidates(row, tau, k, top_p)
            assert set(ours_ids.tolist()) == set(lib_ids.tolist()), (tau, k, top_p)
            ours_by_id = dict(zip(ours_ids.tolist(), ours_p))
            assert all(abs(ours_by_id[i] - q) <= 1e-12 for i, q in zip(lib_ids.tolist(), lib_p))
            checked += 1
print(f"{checked} (row, τ, k, p) cases: hand-written filters == minillm.generation.candidates")

# %% [markdown]
# How big is the nucleus? Below, one forward pass over a line of the corpus gives the
# next-token distribution at every position; for each position we count the tokens that top-p
# keeps at $p = 0.9$ (left), and show one position's sorted probabilities with the cumulative
# mass and the cut (right). A fixed $k$ would be too wide at the confident positions and too
# narrow at the open ones.

# %%
line = "Why, then, O brawling love! O loving hate!\nO any thing, of nothing first create!\n"
line_ids = tokenizer.encode_ordinary(line)
with mm.no_grad():
    line_logits, _ = model(np.asarray([line_ids]))             # (1, T, V): every position at once
line_logits = line_logits.data[0].astype(np.float64)           # (T, V)
nucleus = np.array([len(candidates(r, 1.0, None, 0.9)[0]) for r in line_logits])
print("nucleus size at p=0.9: min", nucleus.min(), "median", int(np.median(nucleus)), "max", nucleus.max())

fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
axes[0].bar(np.arange(len(line_ids)), nucleus, color="tab:blue")
axes[0].set_xticks(np.arange(len(line_ids)), [repr(c)[1:-1] for c in line], fontsize=6)
axes[0].set_ylabel("tokens kept (top-p = 0.9)")
axes[0].set_title("nucleus size of the next token, after each character of the line")
position = int(np.argmax(nucleus))
p_sorted = np.sort(softmax_with_temperature(line_logits[position], 1.0))[::-1]
cut = len(candidates(line_logits[position], 1.0, None, 0.9)[0])
axes[1].bar(np.arange(40), p_sorted[:40], color=["tab:orange" if i < cut else "lightgray" for i in range(40)])
twin = axes[1].twinx()
twin.plot(np.arange(40), np.cumsum(p_sorted)[:40], color="black")
twin.axhline(0.9, color="black", linestyle=":")
twin.set_ylim(0, 1)
twin.set_ylabel("cumulative mass")
axes[1].set_title(f"position {position}: kept {cut} ids (orange) to reach 0.9")
axes[1].set_xlabel("rank")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Drawing a token, and seeds
#
# Given the candidates $(i_1, \dots, i_N)$ and their probabilities, minillm draws by inverting the
# cumulative distribution: with $c_n = \sum_{r \le n} p_{i_r}$ and $u \sim U[0, 1)$, the token is
# $i_n$ for the first $n$ with $c_n > u \cdot c_N$ (so $P(i_n) = (c_n - c_{n-1})/c_N = p_{i_n}$).
# The uniform numbers come from a generator: `seed=` an int gives a fresh PCG64 generator, so **the
# same seed gives the same text**, whatever else the program did with random numbers. Below:
# the draw written by hand agrees with `minillm.generation.draw`; the empirical frequencies match
# the probabilities; `model.generate` with a seed is reproducible.

# %%
ids, probs = candidates(last, 1.0, 20, None)


def draw_by_hand(ids, probs, generator):
    cdf = np.cumsum(probs)
    u = generator.random()
    return int(ids[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(ids) - 1)])


ours = [draw_by_hand(ids, probs, np.random.default_rng(s)) for s in range(200)]
library = [draw(ids, probs, np.random.default_rng(s)) for s in range(200)]
assert ours == library

generator = np.random.default_rng(1)
n_draws = 20000
counts = {i: 0 for i in ids.tolist()}
for _ in range(n_draws):
    counts[draw(ids, probs, generator)] += 1
frequency = np.array([counts[i] for i in ids.tolist()]) / n_draws
# each frequency is a binomial mean: its standard deviation is sqrt(p (1 - p) / n); allow 5 of them
assert np.all(np.abs(frequency - probs) <= 5 * np.sqrt(probs * (1 - probs) / n_draws) + 1e-9)
print(f"{n_draws} draws: largest |frequency - p| = {np.abs(frequency - probs).max():.4f}")

seed_prompt = tokenizer.encode_ordinary("HAMLET:\n")
a = model.generate(seed_prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=7)
b = model.generate(seed_prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=7)
c = model.generate(seed_prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=8)
assert a == b and a != c
print("seed 7 twice: identical; seed 8: different")

# %% [markdown]
# ## 4. Greedy decoding, and what temperature does to a text
#
# Greedy decoding takes $x_{t+1} = \arg\max_i \ell_i(x_{\le t})$ at every step. It is deterministic
# and often *loops*: once a phrase is likely, repeating it keeps it likely. Below the loop is
# written by hand (a full forward pass per step) and compared token for token with
# `model.generate(temperature=0)`; then the same prompt is sampled at three temperatures.

# %%
greedy_prompt = tokenizer.encode_ordinary("KING LEAR:\n")
tokens = list(greedy_prompt)
with mm.no_grad():
    for _ in range(80):
        step_logits, _ = model(np.asarray([tokens[-model.config.block_size:]]))
        tokens.append(int(np.argmax(step_logits.data[0, -1])))
library_greedy = model.generate(greedy_prompt, max_new_tokens=80, temperature=0.0)
assert tokens == library_greedy
print("greedy (hand-written loop == model.generate(temperature=0)):")
print(tokenizer.decode(tokens))
for tau in (0.5, 0.9, 1.5):
    sample = model.generate(greedy_prompt, max_new_tokens=120, temperature=tau, top_p=0.95, seed=0)
    print(f"\n--- temperature {tau}, top-p 0.95, seed 0 ---")
    print(tokenizer.decode(sample))

# %% [markdown]
# ## 5. The key/value cache
#
# **Why it is exact.** Take one attention layer with input rows $h_1, \dots, h_t$ (the residual
# stream, (B, T, C)). Position $s$ computes $q_s = h_s W_q$, $k_s = h_s W_k$, $v_s = h_s W_v$ and,
# because of the causal mask,
#
# $$o_s = \sum_{r \le s} \frac{e^{q_s \cdot k_r / \sqrt{D}}}{\sum_{r' \le s} e^{q_s \cdot k_{r'}/\sqrt{D}}}\, v_r ,$$
#
# a function of $h_1, \dots, h_s$ only. Everything else in a block (LayerNorm, the MLP, the
# residual adds) acts on each position alone. So, by induction over the layers, **the row of
# position $s$ at every layer depends only on tokens $x_1, \dots, x_s$**: appending token
# $x_{t+1}$ changes no earlier row, in particular no earlier $k_r$ or $v_r$. The logits of the
# new position need $q_{t+1}$, $k_{t+1}$, $v_{t+1}$ (computed from the new token's row alone) and
# the keys and values of positions $1..t$ — which are exactly what an earlier step already
# computed. Keeping them (the *cache*) and feeding only the new token therefore gives the same
# logits as recomputing the whole prefix, up to floating-point rounding (the sums are grouped
# differently).
#
# **What it saves.** Recomputing a prefix of $t$ tokens costs about $2 N t$ FLOPs for the weights
# ($N$ parameters) plus about $4 n_\text{layer} t^2 C$ for attention (the products $QK^\top$ and
# $AV$, $2t^2C$ each per layer); with the cache a step costs about $2N + 4 n_\text{layer} t C$
# (one query against $t$ keys): the per-token cost is nearly flat in $t$ instead of growing.
# The price is memory: per layer, keys and values of shape (B, H_kv, T, D), i.e.
# $2 \cdot n_\text{layer} \cdot B \cdot H_\text{kv} \cdot T \cdot D$ numbers.
#
# **Shape walk-through**: prefill a prompt into a `KVCache`, and recompute layer 0's keys by hand
# from the embeddings to see they are what the cache holds.

# %%
cache = KVCache.for_model(model, batch_size=1)
walk_ids = np.asarray([tokenizer.encode_ordinary("O, what a rogue")])        # (B=1, T0)
with mm.no_grad():
    prefill_logits, _ = model(walk_ids, kv_cache=cache)                      # writes positions 0..T0-1
    t0 = walk_ids.shape[1]
    x = model.tok_emb(walk_ids) + model.pos_emb(t0, 0)                       # (B, T0, C)
    h = model.blocks[0].norm1(x)                                             # (B, T0, C)
    k = model.blocks[0].attn.k_proj(h).data                                  # (B, T0, H_kv·D)
    k = k.reshape(1, t0, model.config.n_kv_head, model.config.head_dim).transpose(0, 2, 1, 3)
c = model.config
print(cache)
print(f"idx {walk_ids.shape} -> embeddings {x.shape} -> layer-0 keys {k.shape} = (B, H_kv, T0, D)")
print(f"cache.layers[0].keys {cache.layers[0].keys.shape} (B, H_kv, capacity, D), filled: {cache.length}")
print(f"prefill logits {prefill_logits.shape}")
assert np.allclose(cache.layers[0].keys[:, :, :t0], k, rtol=1e-5, atol=1e-6)
expected_bytes = 2 * c.n_layer * 1 * c.n_kv_head * c.block_size * c.head_dim * np.dtype(model.dtype).itemsize
assert cache.nbytes == expected_bytes
print(f"cache memory: 2 · n_layer · B · H_kv · capacity · D · 4 bytes = {expected_bytes:,} bytes")

# %% [markdown]
# **The equivalence, checked at every step.** The model is copied to float64 (so rounding does
# not hide a real difference). After a prefill, each step feeds one token through the cache and,
# separately, recomputes the whole prefix without a cache; the two last-position logits must agree
# to float64 rounding at every step. The recomputation also shows that the *earlier* rows do not
# change when a token is appended. Then the float32 model: cached and uncached `model.generate`
# give the same greedy tokens.

# %%
model64 = GPT(model.config, dtype=np.float64)
model64.load_state_dict(model.state_dict())
model64.eval()
check_steps = 40 if SMALL else 100
tokens = tokenizer.encode_ordinary("OTHELLO:\n")
cache = KVCache.for_model(model64, batch_size=1)
worst_new, worst_past, previous_full = 0.0, 0.0, None
with mm.no_grad():
    step_logits, _ = model64(np.asarray([tokens]), kv_cache=cache, only_last=True)   # prefill: (1, 1, V)
    for step in range(check_steps):
        tokens.append(int(np.argmax(step_logits.data[0, -1])))
        step_logits, _ = model64(np.asarray([tokens[-1:]]), kv_cache=cache)          # one new token: (1, 1, V)
        full, _ = model64(np.asarray([tokens]))                                      # the whole prefix: (1, t, V)
        worst_new = max(worst_new, float(np.abs(step_logits.data[0, -1] - full.data[0, -1]).max()))
        if previous_full is not None:                                                # earlier rows unchanged
            worst_past = max(worst_past, float(np.abs(full.data[0, :-1] - previous_full).max()))
        previous_full = full.data[0]
print(f"{check_steps} steps: max |cached - recomputed| = {worst_new:.2e}; "
      f"max change of earlier rows = {worst_past:.2e}")
assert worst_new < 1e-10 and worst_past < 1e-10

prompt = tokenizer.encode_ordinary("MACBETH:\n")
with_cache = model.generate(prompt, max_new_tokens=100, temperature=0.0, use_cache=True)
without = model.generate(prompt, max_new_tokens=100, temperature=0.0, use_cache=False)
assert with_cache == without
print("float32 greedy, 100 tokens: cached == recomputed")

# %% [markdown]
# **What it costs.** We time each token of `model.stream` with and without the cache, for a
# longer context. Timing does not depend on the weights, so this uses an untrained model with a
# 4-layer, 128-wide body and a longer window (the trained one above has only 128 positions).
# Without the cache a step runs the whole window through the model, so its time grows with the
# position; with it, a step runs one position and reads the cached keys, so it stays nearly flat.
# (These are wall-clock times on whatever machine runs this: expect noise.)

# %%
mm.manual_seed(0)
timing_model = GPT(GPTConfig.gpt2(vocab_size=257, block_size=256 if SMALL else 512, n_layer=4, n_head=4, n_embd=128))
timing_model.eval()
n_new = timing_model.config.block_size - 1


def per_token_seconds(use_cache):
    times, last_time = [], time.perf_counter()
    for _ in timing_model.stream([0], n_new, temperature=0.0, use_cache=use_cache):
        now = time.perf_counter()
        times.append(now - last_time)
        last_time = now
    return np.array(times)


cached_times = per_token_seconds(True)
uncached_times = per_token_seconds(False)
quarter = n_new // 4
print(f"{n_new} tokens: cached {cached_times.sum():.2f} s, recomputed {uncached_times.sum():.2f} s")
print(f"mean ms/token over the first and last quarter: cached {1e3 * cached_times[:quarter].mean():.2f} -> "
      f"{1e3 * cached_times[-quarter:].mean():.2f}, recomputed {1e3 * uncached_times[:quarter].mean():.2f} -> "
      f"{1e3 * uncached_times[-quarter:].mean():.2f}")

plt.figure(figsize=(8, 3.6))
plt.plot(1e3 * uncached_times, label="recompute the window (use_cache=False)", alpha=0.8)
plt.plot(1e3 * cached_times, label="KV cache (use_cache=True)", alpha=0.8)
plt.xlabel("position of the new token")
plt.ylabel("ms per token")
plt.title("per-token cost: growing without the cache, flat with it")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Checklist
#
# | knob | typical | what goes wrong when it is off |
# |---|---|---|
# | temperature τ | 0.7–1.0 | too low: the same phrase over and over (greedy loops, seen above); too high: spelling falls apart, the entropy climbs towards $\log V$ |
# | top-k | 40–100 | too small: bland, repetitive text (the nucleus is often wider); too large or off: rare junk tokens now and then derail a sample |
# | top-p | 0.9–0.95 | too small: close to greedy; 1.0: no truncation, the tail is sampled |
# | seed | fixed in tests and evaluations | `seed=None` draws from the global generator: a rerun gives another text, and a result cannot be reproduced |
# | KV cache | on | off: each token costs the whole window (growing per-token time, as plotted); a cache bug shows as logits that drift from a recomputation — check them as above |
# | cache memory | $2\,n_\text{layer} B H_\text{kv} T D$ numbers | runs out at long contexts or large batches; grouped-query attention (fewer $H_\text{kv}$) shrinks it |
# | context overflow | `overflow="slide"` | a sequence longer than `block_size` must drop its oldest tokens (and re-prefill the cache); learned positions beyond the table do not exist |
#
# ## Exercises
#
# 1. **Min-p sampling.** Keep the tokens whose probability is at least $m \cdot p_\text{max}$
#    (after temperature) and renormalise. Write it like `top_p_by_hand`, and plot the number of
#    kept tokens per position of the line above for $m = 0.1$ next to the nucleus sizes. *Hint:*
#    unlike top-p it needs no sort; how does it behave on a flat distribution?
# 2. **A cache for one layer, by hand.** Using `model.blocks[0].attn.project_qkv` and
#    `F.scaled_dot_product_attention`, run layer 0 on a prefix with growing NumPy arrays of keys
#    and values (append one position per step) and check its output against the layer run on the
#    whole prefix. *Hint:* a single query needs no mask (`is_causal=False`): it may see every
#    cached key.
