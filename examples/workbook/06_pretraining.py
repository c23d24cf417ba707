# Workbook chapter 6: pretraining (percent format; sync.py writes the notebook).
# %% [markdown]
# # 6 · Pretraining: the loss, the optimizer and the loop
#
# Chapters 1–5 built the data, the tokenizer and the model. Pretraining is next-token prediction on
# raw text: for every position the model outputs logits over the vocabulary, the loss is the
# cross-entropy against the token that actually follows, and an optimizer follows its gradient.
# What turns that sentence into a run that works is a handful of pieces, each small:
#
# 1. the **cross-entropy** and its gradient (softmax − one-hot), and **bits per byte**, the number
#    that compares models across tokenizers;
# 2. **AdamW**, written out from its update rule;
# 3. the **learning-rate schedule** (linear warmup, cosine decay), **gradient clipping** and
#    **gradient accumulation**;
# 4. **mixed precision** with loss scaling, and why float16 needs it;
# 5. a short real run with minillm's `Trainer` on the embedded Shakespeare corpus.
#
# Shapes: $B$ sequences of $T$ tokens, $N = B\cdot T$ scored positions, vocabulary $V$, logits $(B, T, V)$.

# %%
import json
import math
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm import amp
from minillm import functional as F
from minillm.data import (
    RandomWindowLoader,
    TokenDataset,
    bits_per_byte,
    clean_documents,
    default_corpus_path,
    prepare_dataset,
    read_corpus,
    split_train_val,
)
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, clip_grad_norm_, decay_groups
from minillm.tokenizer import END_OF_TEXT, BPETokenizer
from minillm.train import LoopSection, Trainer, evaluate_language_model
from minillm.train.pretrain import language_model_loss

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# The models of this chapter are tiny: one BLAS thread is as fast as two, and it does not stall
# when the machine is busy with other work (see minillm.host.set_blas_threads).
mm.host.set_blas_threads(1)
CHAPTER_STARTED = time.perf_counter()
mm.manual_seed(0)
rng = np.random.default_rng(0)
print("size:", "small" if SMALL else "full")

# %% [markdown]
# ## 1 · Cross-entropy
#
# For one position with logits $z \in \mathbb{R}^V$ and target token $t$, the model's distribution is
# $p = \operatorname{softmax}(z)$, $p_j = e^{z_j} / \sum_k e^{z_k}$, and the loss is the negative
# log-likelihood of the target:
#
# $$\ell(z, t) = -\log p_t = -z_t + \log\sum_k e^{z_k} = \operatorname{lse}(z) - z_t .$$
#
# Differentiate the two terms: $\partial\,\operatorname{lse}/\partial z_j = e^{z_j}/\sum_k e^{z_k} = p_j$ and
# $\partial(-z_t)/\partial z_j = -[j = t]$. So
#
# $$\boxed{\;\frac{\partial \ell}{\partial z} = p - \operatorname{onehot}(t)\;}\qquad\text{and for the mean over } N
# \text{ positions}\qquad \frac{\partial \bar\ell}{\partial z_n} = \frac{p_n - \operatorname{onehot}(t_n)}{N}.$$
#
# Every row of the gradient sums to zero, the target's entry is $p_t - 1 \in [-1, 0]$ and the others are
# $p_j \ge 0$: training pushes the target's logit up and every other logit down in proportion to how much
# probability it takes. Two numerical points the fused op (`F.cross_entropy`) takes care of:
# $\operatorname{lse}(z) = m + \log\sum_k e^{z_k - m}$ with $m = \max_k z_k$, so nothing overflows; and the
# $(N, V)$ softmax is never stored: forward keeps only $\operatorname{lse}$ per row, backward recomputes
# $p = e^{z - \operatorname{lse}}$ straight into the gradient.
#
# A useful check before any training: a freshly initialised model predicts nearly uniformly, so its loss
# is close to $\ln V$.

# %%
def cross_entropy_by_hand(z, targets):
    """Mean loss over rows and its gradient, z (N, V), targets (N,)."""
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))      # (N, 1)
    n = len(targets)
    loss = (lse[:, 0] - z[np.arange(n), targets]).mean()
    grad = np.exp(z - lse)                                           # p (N, V)
    grad[np.arange(n), targets] -= 1.0
    return loss, grad / n


n_rows, vocab = 6, 11
z64 = rng.standard_normal((n_rows, vocab)) * 3
targets = rng.integers(0, vocab, n_rows)
loss_hand, grad_hand = cross_entropy_by_hand(z64, targets)
for name, op in (("composed", F.cross_entropy_composed), ("fused", F.cross_entropy)):
    z = mm.tensor(z64, requires_grad=True)
    loss = op(z, targets)
    loss.backward()
    assert abs(loss.item() - loss_hand) < 1e-12 and np.allclose(z.grad, grad_hand, rtol=1e-10, atol=1e-14)
    print(f"{name:9s} loss {loss.item():.12f} (hand {loss_hand:.12f}); gradient matches softmax - onehot")
print("rows of the gradient sum to", np.abs(grad_hand.sum(axis=1)).max(), "(zero up to rounding)")

logits_in, targets_in = rng.standard_normal((2, 3, 7)), rng.integers(0, 7, (2, 3))
assert mm.gradcheck(lambda z: F.cross_entropy(z, targets_in), [logits_in])
assert mm.gradcheck(lambda z: F.cross_entropy(z, targets_in, label_smoothing=0.1), [logits_in])
assert mm.gradcheck(lambda z: F.cross_entropy_composed(z, targets_in), [logits_in])
print("gradcheck (float64, random upstream): cross_entropy (with and without smoothing), composed twin")

huge = mm.tensor(np.array([[1000.0, 0.0, -1000.0]]))
with np.errstate(over="ignore", invalid="ignore"):
    naive = -np.log(np.exp(1000.0) / np.exp(huge.numpy()).sum())
print(f"logits [1000, 0, -1000], target 0: naive softmax gives {naive}, F.cross_entropy gives "
      f"{F.cross_entropy(huge, np.array([0])).item()}")

mm.manual_seed(0)
fresh = GPT(GPTConfig.gpt2(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32))
_, fresh_loss = fresh(rng.integers(0, 512, (4, 32)), rng.integers(0, 512, (4, 32)))
print(f"a fresh model's loss {fresh_loss.item():.3f} vs ln V = ln 512 = {math.log(512):.3f}")
assert abs(fresh_loss.item() - math.log(512)) < 0.1

# %% [markdown]
# ## 2 · Bits per byte
#
# The loss is in **nats per token** (natural log). Two conversions make it comparable across models:
#
# - nats → bits: divide by $\ln 2$ (a probability $p$ costs $-\log_2 p$ bits);
# - per token → per byte: a tokenizer with more merges packs more bytes into a token, so its per-token
#   loss is larger for the same model quality. Over a text of $N_{\text{tok}}$ scored tokens that decode to
#   $N_{\text{bytes}}$ UTF-8 bytes,
#
# $$\text{bpb} = \frac{\sum_n \ell_n}{\ln 2 \cdot N_{\text{bytes}}} = \frac{\bar\ell}{\ln 2}\cdot\frac{N_{\text{tok}}}{N_{\text{bytes}}} .$$
#
# Bits per byte is what a compressor driven by the model would spend per byte of text (arithmetic
# coding gets within a few bits of the whole text's $-\log_2$ probability), so a character-level model and
# a BPE model can be ranked by it. Perplexity $e^{\bar\ell}$ cannot: it is per token.
#
# Reference points on the embedded corpus, computed here: a uniform guess over 256 byte values costs
# 8 bits per byte; a model that knows only how often each byte occurs (no context) costs the byte
# entropy $H = -\sum_b f_b \log_2 f_b$. The trained model of section 8 must beat both.

# %%
docs, cleaning = clean_documents(read_corpus(default_corpus_path()))
corpus_bytes = "".join(docs).encode("utf-8")
counts = np.bincount(np.frombuffer(corpus_bytes, dtype=np.uint8), minlength=256)
frequencies = counts[counts > 0] / counts.sum()
byte_entropy = float(-(frequencies * np.log2(frequencies)).sum())
print(f"corpus: {len(corpus_bytes):,} bytes, {int((counts > 0).sum())} distinct byte values")
print(f"uniform over 256 bytes: 8.000 bits/byte; unigram byte entropy: {byte_entropy:.3f} bits/byte")

example_loss, example_tokens, example_bytes = 3.5, 1000, 2600
print(f"a loss of {example_loss} nats/token over {example_tokens} tokens of {example_bytes} bytes = "
      f"{example_loss / math.log(2):.3f} bits/token = "
      f"{bits_per_byte(example_loss, example_tokens, example_bytes):.3f} bits/byte")
assert abs(bits_per_byte(example_loss, example_tokens, example_bytes)
           - example_loss / math.log(2) * example_tokens / example_bytes) < 1e-12

# %% [markdown]
# ## 3 · AdamW from its update rule
#
# For a parameter $\theta$ with gradient $g_t$ at its $t$-th update ($t = 1, 2, \dots$), learning rate
# $\eta$, weight decay $\lambda$:
#
# $$\begin{aligned}
# \theta &\leftarrow \theta - \eta\lambda\,\theta && \text{decoupled weight decay (first)}\\
# m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t && \text{first moment: a running mean of } g\\
# v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 && \text{second moment: a running mean of } g^2\\
# \hat m_t &= \frac{m_t}{1-\beta_1^t},\qquad \hat v_t = \frac{v_t}{1-\beta_2^t} && \text{bias correction}\\
# \theta &\leftarrow \theta - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
# \end{aligned}$$
#
# **Bias correction.** $m_0 = v_0 = 0$, so $m_t = (1-\beta_1)\sum_{s\le t}\beta_1^{t-s} g_s$: for a
# constant gradient $g$ this is $(1-\beta_1^t)\,g$, too small early on by exactly the factor that
# $\hat m_t$ divides out (likewise $v_t$). At $t = 1$: $\hat m_1 = g_1$, $\hat v_1 = g_1^2$, and the first step
# is $\eta\, g_1/(|g_1| + \epsilon) \approx \eta\,\operatorname{sign}(g_1)$: **every parameter moves by about
# $\eta$, whatever the size of its gradient.** Adam's steps have the scale of the learning rate, not of the
# gradient.
#
# **Decoupled decay.** Adam with an L2 penalty adds $\lambda\theta$ to the gradient, which then goes
# through the division by $\sqrt{\hat v}$: a weight with large, consistent gradients is barely
# regularised, and a weight whose gradient is only the penalty gets a step of size $\approx\eta$ whatever
# its magnitude. AdamW shrinks every weight by the same factor $1 - \eta\lambda$ instead.
#
# Below: the rule in NumPy, and minillm's `AdamW` on the same parameters and the same gradient
# sequence, in float64 and float32.

# %%
def adamw_by_hand(params, gradient_sequence, lr, betas, eps, weight_decay):
    """Apply the update rule above for each list of gradients in turn; returns new arrays."""
    beta1, beta2 = betas
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(gradient_sequence, start=1):
        for i, g in enumerate(grads):
            params[i] -= lr * weight_decay * params[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            params[i] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


settings = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
start_values = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
gradient_sequence = [[rng.standard_normal(p.shape) * 10.0 ** rng.integers(-4, 2) for p in start_values]
                     for _ in range(5)]
expected = adamw_by_hand(start_values, gradient_sequence, **settings)
for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-6)):
    tensors = [mm.tensor(p.astype(dtype), requires_grad=True) for p in start_values]
    optimizer = AdamW(tensors, **settings)
    for grads in gradient_sequence:
        for tensor, g in zip(tensors, grads):
            tensor.grad = g.astype(dtype)
        optimizer.step()
    for ours, theirs in zip(expected, tensors):
        np.testing.assert_allclose(theirs.numpy(), ours, rtol=rtol, atol=rtol * 1e-2)
    worst = max(np.abs(t.numpy() - e).max() for t, e in zip(tensors, expected))
    print(f"minillm AdamW == the rule by hand after 5 steps, {np.dtype(dtype).name}: max |difference| {worst:.1e}")

# the first step moves every parameter by about lr, whatever its gradient's size
tiny_and_huge = mm.tensor(np.zeros(4), requires_grad=True)
first = AdamW([tiny_and_huge], lr=1e-3, weight_decay=0.0)
tiny_and_huge.grad = np.array([1e-6, -1e-3, 1.0, -1e3])
first.step()
print("gradients", tiny_and_huge.grad, "-> first step", tiny_and_huge.numpy())
np.testing.assert_allclose(np.abs(tiny_and_huge.numpy()), 1e-3, rtol=1e-2)

# %% [markdown]
# Decoupled decay against an L2 penalty, on weights whose loss gradient is zero (only the regulariser
# acts): three weights of sizes 0.01, 1 and 100, $\eta = 10^{-2}$, $\lambda = 0.1$, for 1,000 steps. "Adam + L2"
# is minillm's `AdamW` with `weight_decay=0` fed the gradient $\lambda\theta$.

# %%
decay_steps, lam, eta = 1000, 0.1, 1e-2
initial = np.array([0.01, 1.0, 100.0])
decoupled = mm.tensor(initial.copy(), requires_grad=True)
coupled = mm.tensor(initial.copy(), requires_grad=True)
adamw, adam_l2 = AdamW([decoupled], lr=eta, weight_decay=lam), AdamW([coupled], lr=eta, weight_decay=0.0)
trajectory = {"AdamW": [], "Adam + L2": []}
for step in range(decay_steps):
    decoupled.grad = np.zeros(3)                                 # no loss gradient: decay alone
    coupled.grad = lam * coupled.numpy()                         # the L2 penalty's gradient
    adamw.step()
    adam_l2.step()
    trajectory["AdamW"].append(np.abs(decoupled.numpy()) / initial)
    trajectory["Adam + L2"].append(np.abs(coupled.numpy()) / initial)
np.testing.assert_allclose(decoupled.numpy(), initial * (1 - eta * lam) ** decay_steps, rtol=1e-9)
for name, values in trajectory.items():
    print(f"{name:10s} |θ|/|θ₀| after {decay_steps} steps:", "  ".join(f"{v:.3g}" for v in values[-1]))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
for ax, values in zip(axes, trajectory.values()):
    values = np.array(values)
    for column, size in enumerate(initial):
        ax.semilogy(np.maximum(values[:, column], 1e-8), label=f"θ₀ = {size:g}")
    ax.set_xlabel("step")
axes[0].set_title("AdamW (the three curves coincide)")
axes[1].set_title("Adam + L2")
axes[0].set_ylabel("|θ| / |θ₀|")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# AdamW shrinks all three by the same factor $(1-\eta\lambda)^t$ (asserted above). With the L2 penalty
# through Adam the normalised step is about $\eta$ per step whatever the weight's size, so the small
# weights are driven to zero within a few hundred steps while the 100 weight keeps most of its size:
# the regularisation depends on how the weight's gradient happens to be scaled, not on a fixed rate.
#
# In a model, decay belongs on the matrices only: `decay_groups(model.named_parameters(), wd)` puts
# every parameter with `ndim >= 2` in the decaying group and biases and norm gains in a group with
# `weight_decay=0` (shrinking a gain towards 0 only shrinks activations).
#
# ## 4 · Warmup and cosine decay
#
# $$\eta(s) = \begin{cases}\eta_{\max}\,\frac{s+1}{w} & s < w \quad\text{(linear warmup)}\\[2pt]
# \eta_{\min} + \tfrac12(\eta_{\max}-\eta_{\min})\big(1+\cos(\pi r)\big),\ r = \frac{s-w}{S-w} & w \le s < S\\[2pt]
# \eta_{\min} & s \ge S\end{cases}$$
#
# Warmup keeps the first steps small while the weights are random and AdamW's moment estimates rest on
# a handful of gradients (recall that every early step moves every weight by about $\eta$, however noisy
# its gradient); the cosine then spends most of the run near the peak and anneals to $\eta_{\min}$, where
# the loss drops as the noise of the updates shrinks. minillm's schedule is a pure function of the step,
# so a resumed run needs nothing but the step number.

# %%
schedule = CosineSchedule(lr=2e-3, min_lr=2e-4, warmup_steps=50, total_steps=400)
steps = np.arange(0, 450)
rates = [schedule(int(s)) for s in steps]
assert math.isclose(schedule(0), 2e-3 / 50) and math.isclose(schedule(49), 2e-3)
assert math.isclose(schedule(400), 2e-4) and all(a >= b for a, b in zip(rates[49:], rates[50:]))
print(schedule, "| step 0:", schedule(0), "| step 49:", schedule(49), "| step 225:", round(schedule(225), 6),
      "| step 400+:", schedule(400))
plt.figure(figsize=(6, 3.2))
plt.plot(steps, rates)
plt.axvline(schedule.warmup_steps, color="grey", lw=0.8, ls=":")
plt.axvline(schedule.total_steps, color="grey", lw=0.8, ls=":")
plt.xlabel("step")
plt.ylabel("learning rate")
plt.title("CosineSchedule(lr=2e-3, min_lr=2e-4, warmup 50, total 400)")
plt.show()

# %% [markdown]
# ## 5 · Gradient clipping by the global norm
#
# Treat all gradients as one vector $g$ (every parameter's entries), $\|g\| = \sqrt{\sum_p \sum_i g_{p,i}^2}$.
# If $\|g\| > c$, scale **every** gradient by $c / (\|g\| + \epsilon)$. The direction of the update is kept,
# only its length is capped, so one bad batch (a rare token, a spike) cannot throw the weights far. With
# Adam a rescaled gradient matters less than with SGD (the moments normalise it) but it still
# limits how much one step changes $m$ and $v$. `clip_grad_norm_` returns the norm *before* clipping,
# which is the number to log: a run whose norm keeps hitting the cap is telling you something.

# %%
mm.manual_seed(0)
tiny_config = GPTConfig.llama(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)
tiny = GPT(tiny_config)
tiny_x, tiny_y = rng.integers(0, 64, (8, 16)), rng.integers(0, 64, (8, 16))
_, loss = tiny(tiny_x, tiny_y)
loss.backward()
parameters = tiny.parameters()
before = [p.grad.copy() for p in parameters]
norm_by_hand = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in before))
cap = 0.5 * norm_by_hand
returned = clip_grad_norm_(parameters, cap)
after = [p.grad for p in parameters]
flat_before = np.concatenate([g.ravel() for g in before])
flat_after = np.concatenate([g.ravel() for g in after])
print(f"global norm by hand {norm_by_hand:.6f}, returned by clip_grad_norm_ {returned:.6f}, "
      f"after clipping to {cap:.4f}: {np.linalg.norm(flat_after):.6f}")
assert math.isclose(returned, norm_by_hand, rel_tol=1e-6)
np.testing.assert_allclose(flat_after, flat_before * cap / (norm_by_hand + 1e-6), rtol=1e-5, atol=1e-9)
cosine = flat_after @ flat_before / np.linalg.norm(flat_after) / np.linalg.norm(flat_before)
print(f"direction kept: cosine(before, after) = {cosine:.7f}")
tiny.zero_grad()

# %% [markdown]
# ## 6 · Gradient accumulation
#
# The loss of a batch is the mean over its $N$ positions, and the gradient is linear in the loss. Split
# the batch into $k$ micro-batches of equal size $N/k$ with losses $\bar\ell_1,\dots,\bar\ell_k$:
#
# $$\bar\ell = \frac1N\sum_n \ell_n = \frac1k\sum_{j=1}^k \bar\ell_j
# \quad\Longrightarrow\quad \nabla\bar\ell = \sum_{j=1}^k \nabla\Big(\frac{\bar\ell_j}{k}\Big).$$
#
# So `backward()` on each $\bar\ell_j / k$, letting the gradients add up in `.grad`, and one optimizer step,
# is the big batch's step with $1/k$ of the activation memory. Two caveats: micro-batches must be equal in
# scored tokens (with padding or masks, weight each by its token count instead of $1/k$); and anything that
# is not a sum over examples (batch statistics) would break the identity (a transformer has none; dropout
# draws other masks for other batch shapes, so with dropout the two agree in expectation only). The
# `Trainer` does exactly this with `loop.grad_accum_steps`. In float32 the two differ only by the order of
# summation.

# %%
_, loss = tiny(tiny_x, tiny_y)                                   # one batch of 8 sequences
loss.backward()
big_batch = {name: p.grad.copy() for name, p in tiny.named_parameters()}
tiny.zero_grad()
k = 4
for j in range(k):                                               # 4 micro-batches of 2 sequences
    rows = slice(2 * j, 2 * j + 2)
    _, micro_loss = tiny(tiny_x[rows], tiny_y[rows])
    (micro_loss * (1.0 / k)).backward()                          # gradients add up in .grad
worst = 0.0
for name, p in tiny.named_parameters():
    scale = np.abs(big_batch[name]).max()
    np.testing.assert_allclose(p.grad, big_batch[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    worst = max(worst, float(np.abs(p.grad - big_batch[name]).max() / scale))
print(f"{k} accumulated micro-batches == one batch of 8: worst difference {worst:.1e} of the largest gradient entry "
      f"(float32 rounding)")
tiny.zero_grad()

# %% [markdown]
# ## 7 · Mixed precision and loss scaling
#
# float16 has 5 exponent bits: the largest value is 65504, the smallest normal number $2^{-14} \approx 6.1\cdot
# 10^{-5}$ and the smallest subnormal $2^{-24} \approx 6.0\cdot10^{-8}$; anything smaller rounds to zero, and
# subnormals keep fewer significant bits the smaller they get. Gradients of activations are small: from
# section 1, the gradient of the mean loss with respect to the logits is $(p - \operatorname{onehot})/N$,
# whose typical entry at the start of training is about $1/(V N)$. A realistic batch puts it below
# float16's range:

# %%
half = np.finfo(np.float16)
print(f"float16: max {half.max}, smallest normal {half.tiny:.3g}, smallest subnormal {2.0 ** -24:.3g}")
print(f"{'V':>7} {'N tokens/batch':>15} {'typical 1/(V·N)':>16} {'in float16':>11} {'× 2^16 in float16':>18}")
for v_size, n_tokens in ((512, 1024), (50257, 1024), (50257, 524288)):
    typical = 1.0 / (v_size * n_tokens)
    print(f"{v_size:7d} {n_tokens:15,d} {typical:16.3g} {float(np.float16(typical)):11.3g} "
          f"{float(np.float16(typical * 2 ** 16)) / 2 ** 16:18.3g}")

# %% [markdown]
# The fix is **loss scaling**: multiply the loss by $S$ before backward, so every gradient is $S$ times
# larger while it passes through float16, and divide the float32 parameter gradients by $S$ before the
# optimizer step. Too large an $S$ overflows instead (inf), so minillm's `amp.GradScaler` adjusts $S$: on
# an inf/NaN gradient it skips the step and halves $S$; after `growth_interval` clean steps it doubles it.
#
# The experiment: float16 logits $(N, V) = (8192, 1024)$ ($N = 4096$ at the small size) and `F.cross_entropy`
# under `amp.autocast("fp16")`, which computes in float32 inside and hands back a **float16 gradient**,
# exactly as in a mixed-precision model. For several $S$: how many entries of $\partial(S\bar\ell)/\partial z$ are zero (flushed) or infinite,
# and how far the unscaled gradient is from the float32 one.

# %%
scale_rows, scale_vocab = (4096, 1024) if SMALL else (8192, 1024)
logits16 = (rng.standard_normal((scale_rows, scale_vocab)) * 2).astype(np.float16)
labels = rng.integers(0, scale_vocab, scale_rows)
reference = mm.tensor(logits16.astype(np.float32), requires_grad=True)
F.cross_entropy(reference, labels).backward()                     # the float32 gradient
exact = reference.grad
print(f"N = {scale_rows}, V = {scale_vocab}: float32 gradient entries span "
      f"{np.abs(exact).min():.2g} .. {np.abs(exact).max():.2g}")
print(f"{'scale S':>8} {'zero in fp16':>13} {'inf':>6} {'median rel. error':>18}")
outcomes = {}
for exponent in (0, 8, 16, 24, 32):
    scale = 2.0 ** exponent
    z16 = mm.tensor(logits16, requires_grad=True)
    with amp.autocast("fp16"):
        loss16 = F.cross_entropy(z16, labels)                    # float32 loss
    with np.errstate(over="ignore", invalid="ignore"):
        (loss16 * scale).backward()
    g16 = z16.grad                                               # float16, like every activation gradient
    assert g16.dtype == np.float16
    unscaled = g16.astype(np.float32) / scale
    zeros, infs = float(np.mean(g16 == 0)), int(np.isinf(g16).sum())
    finite = np.isfinite(unscaled)
    error = np.median(np.abs(unscaled[finite] - exact[finite]) / np.abs(exact[finite])) if finite.any() else np.nan
    outcomes[exponent] = (zeros, infs, error)
    print(f"{'2^' + str(exponent):>8} {zeros:13.3%} {infs:6d} {error:18.1e}")
assert outcomes[0][0] > 0.01 and outcomes[16][0] < 1e-4 and outcomes[32][1] > 0

# %% [markdown]
# With $S = 1$ a share of the gradient is exactly zero and the rest has few significant bits; at $2^{16}$
# (the `GradScaler` default) only the very smallest entries flush (those below $2^{-24}/S$, far too small to
# matter) and the typical relative error is float16's rounding ($\sim 2^{-11}$);
# at $2^{32}$ the target entries ($\approx -1/N \cdot S$) exceed 65504 and become inf, which is what the
# scaler detects and backs off from.
#
# The whole loop with minillm's pieces, on the tiny model: `autocast` around the forward,
# `scaler.scale(loss).backward()`, `unscale_` (divide by $S$ and look for inf/NaN), clip, `step`
# (skipped on overflow), `update`. Starting from a deliberately large $S = 2^{28}$ (with $N = 128$ positions
# the logits' gradient alone reaches $S/128$, and other activation gradients are larger), and with
# `growth_interval=4` so that growth shows within a few steps, the table shows both directions.

# %%
mm.manual_seed(0)
amp_model = GPT(tiny_config)
amp_optimizer = AdamW(decay_groups(amp_model.named_parameters(), 0.1), lr=3e-3)
scaler = amp.GradScaler(init_scale=2.0 ** 28, growth_interval=4)
print(f"{'step':>4} {'loss (fp16)':>12} {'loss (fp32)':>12} {'scale S':>9} {'overflow':>9} {'taken':>6}")
for step in range(12 if SMALL else 30):
    with mm.no_grad():
        _, loss32 = amp_model(tiny_x, tiny_y)                    # the same weights in float32, for comparison
    with amp.autocast("fp16"):
        _, loss = amp_model(tiny_x, tiny_y)
    scale_used = scaler.get_scale()
    with np.errstate(over="ignore", invalid="ignore"):
        scaler.scale(loss).backward()
    overflow = scaler.unscale_(amp_optimizer)
    if not overflow:
        clip_grad_norm_(amp_model.parameters(), 1.0)
    taken = scaler.step(amp_optimizer)
    scaler.update()
    amp_optimizer.zero_grad()
    print(f"{step:4d} {loss.item():12.7f} {loss32.item():12.7f} {'2^%d' % round(math.log2(scale_used)):>9} "
          f"{str(overflow):>9} {str(taken):>6}")
    assert abs(loss.item() - loss32.item()) < 0.02 * loss32.item()
print(scaler)
assert scaler.skipped_steps > 0 and all(np.isfinite(p.numpy()).all() for p in amp_model.parameters())

# %% [markdown]
# Each overflow costs one skipped step and halves $S$; once $S$ fits, steps are taken and the fp16 loss
# follows the float32 one within float16's rounding; after `growth_interval` clean steps the scaler tries
# a doubled $S$ again, and backs off again if it overflows: $S$ hovers at the largest value that fits. The `Trainer` runs exactly this sequence when
# `loop.precision="fp16"` (`minillm train --precision fp16`); bfloat16 (`"bf16"`) has float32's exponent
# range and needs no scaler. On the host float16 is emulated (NumPy has no fast float16 matrix product),
# so it is slower than float32 here: this section is about the numerics, not speed.
#
# ## 8 · A short real run
#
# Everything together with minillm's `Trainer`: the embedded corpus cleaned and split, a byte-level BPE
# tokenizer trained on the training split (chapter 2), token shards in a temporary folder, a small
# Llama-style model, `AdamW` over `decay_groups`, the `CosineSchedule`, clipping at 1.0, and evaluation in
# bits per byte on the held-out tail of the corpus. (`minillm train` runs the same pipeline,
# `minillm.train.pretrain.run_pretraining`, with larger defaults.)

# %%
if SMALL:
    run = dict(vocab=512, n_layer=2, n_embd=64, block=64, batch=16, steps=400, eval_batches=8)
else:
    run = dict(vocab=1024, n_layer=4, n_embd=128, block=128, batch=16, steps=400, eval_batches=0)
workdir = tempfile.TemporaryDirectory()
train_docs, _ = split_train_val(docs, 0.1)
started = time.perf_counter()
tokenizer = BPETokenizer.train(train_docs, vocab_size=run["vocab"], special_tokens=[END_OF_TEXT], verbose=False)
prepare_dataset(docs, tokenizer, os.path.join(workdir.name, "data"), val_fraction=0.1,
                eot_token_id=tokenizer.special_tokens[END_OF_TEXT])
dataset = TokenDataset(os.path.join(workdir.name, "data"))
train_tokens, val_tokens = dataset.tokens("train"), dataset.tokens("val")
print(f"tokenizer + shards in {time.perf_counter() - started:.1f} s: {dataset}")
print(f"validation: {dataset.num_tokens('val'):,} tokens, {dataset.num_bytes('val'):,} bytes "
      f"({dataset.num_bytes('val') / dataset.num_tokens('val'):.2f} bytes/token)")

mm.manual_seed(1337)
config = GPTConfig.llama(vocab_size=tokenizer.vocab_size, block_size=run["block"], n_layer=run["n_layer"],
                         n_head=4, n_kv_head=2, n_embd=run["n_embd"])
model = GPT(config)
schedule = CosineSchedule(lr=3e-3, min_lr=3e-4, warmup_steps=run["steps"] // 10, total_steps=run["steps"])
optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=schedule(0), betas=(0.9, 0.99))
loop = LoopSection(max_steps=run["steps"], batch_size=run["batch"], out_dir=os.path.join(workdir.name, "run"),
                   eval_interval=max(1, run["steps"] // 4), eval_batches=run["eval_batches"], log_interval=1,
                   progress=False, sample_tokens=0, seed=1337)
loader = RandomWindowLoader(train_tokens, run["batch"], run["block"], seed=1337)


def evaluate(model):
    return evaluate_language_model(model, val_tokens, run["block"], run["batch"],
                                   num_bytes=dataset.num_bytes("val"), max_batches=loop.eval_batches)


trainer = Trainer(model, optimizer, schedule, loop, language_model_loss, loader, evaluate=evaluate, grad_clip=1.0,
                  tokens_per_batch=run["batch"] * run["block"])
print(f"model: {model.num_parameters():,} parameters; {run['steps']} steps of {run['batch']}×{run['block']} tokens")
started = time.perf_counter()
records = trainer.fit()
train_seconds = time.perf_counter() - started
train_records = [r for r in records if r["kind"] == "train"]
eval_records = [r for r in records if r["kind"] == "eval"]
print(f"trained in {train_seconds:.1f} s ({len(train_records)} steps); the evaluations above are "
      + (f"estimates from the first {loop.eval_batches} validation batches" if loop.eval_batches else "on the whole split"))
print("files the trainer wrote:", sorted(os.listdir(loop.out_dir)))
with open(os.path.join(loop.out_dir, "metrics.jsonl"), encoding="utf-8") as metrics:
    print("one line of metrics.jsonl:", json.loads(metrics.readline()))

# %% [markdown]
# The loss curve and the learning rate the schedule gave each step, from the trainer's records:

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].plot([r["step"] for r in train_records], [r["loss"] for r in train_records], lw=1, label="training loss")
axes[0].plot([r["step"] for r in eval_records], [r["val_loss"] for r in eval_records], "o-", label="validation loss")
axes[0].axhline(math.log(tokenizer.vocab_size), color="grey", lw=0.8, ls=":", label="ln V")
axes[0].set_xlabel("step")
axes[0].set_ylabel("nats / token")
axes[0].legend()
axes[1].plot([r["step"] for r in train_records], [r["lr"] for r in train_records])
axes[1].set_xlabel("step")
axes[1].set_ylabel("learning rate")
axes[1].set_title("warmup + cosine, as used")
plt.tight_layout()
plt.show()

# %% [markdown]
# Finally bits per byte on the **whole** validation split, by the library and by the formula of
# section 2, against the two reference points:

# %%
final = evaluate_language_model(model, val_tokens, run["block"], run["batch"], num_bytes=dataset.num_bytes("val"))
by_formula = bits_per_byte(final["val_loss"], final["val_tokens"], dataset.num_bytes("val"))
assert math.isclose(final["val_bpb"], by_formula, rel_tol=1e-9)
print(f"validation loss {final['val_loss']:.4f} nats/token over {final['val_tokens']:,} tokens, "
      f"perplexity {final['val_ppl']:.1f}")
print(f"bits per byte: {final['val_bpb']:.4f} (formula: {by_formula:.4f}); unigram bytes {byte_entropy:.3f}; "
      "uniform 8.000")
assert final["val_bpb"] < byte_entropy < 8.0
sample = model.generate(np.array([tokenizer.encode("ROMEO:\n")]), max_new_tokens=40, temperature=0.8, top_k=40, seed=0)
print("a sample:", repr(tokenizer.decode([int(i) for i in sample[0]])))
workdir.cleanup()
print(f"chapter run time: {time.perf_counter() - CHAPTER_STARTED:.1f} s")

# %% [markdown]
# ## Checklist
#
# | hyperparameter | typical here | when it is off |
# |---|---|---|
# | peak learning rate `optim.lr` | `2e-3`–`3e-3` for these small models (lower for larger ones) | too high: the loss spikes or goes NaN (the `Trainer` stops and names the last good checkpoint); too low: a slow, straight-line loss curve |
# | `warmup_steps` | 5–10 % of the run | none: early steps of size $\approx\eta$ on random weights, spikes, post-norm models stall; too long: wasted steps at low rate |
# | `min_lr` | `lr / 10` | 0: the last part of the run barely moves; equal to `lr`: no annealing, a higher final loss |
# | `betas` | `(0.9, 0.95)`–`(0.9, 0.99)` | $\beta_2$ near 1 (0.999) with spiky gradients: $v$ adapts slowly, so a sudden large gradient makes a step several times the usual size |
# | `weight_decay` | `0.1` on matrices only (`decay_groups`) | on gains and biases: activations shrink; far too high: underfitting |
# | `grad_clip` | `1.0` | too low: nearly every step is clipped, which reweights the steps inside AdamW's moments and flattens the `grad_norm` signal you monitor; off: one bad batch can derail the run |
# | `grad_accum_steps` | 1, or what memory needs | micro-batches of unequal token counts averaged with $1/k$: a biased gradient |
# | `precision` | `fp32` on the host; `bf16`/`fp16` on a GPU | fp16 without a scaler: gradients flush to zero (the loss stops improving silently); a scale that keeps overflowing: many skipped steps (`skipped` in the metrics) |
# | batch tokens $B\cdot T$ | as many as fit | too few: noisy gradients, a jagged loss curve |
#
# ## Exercises
#
# 1. Implement label smoothing by hand: derive $\partial\ell/\partial z$ for the target distribution
#    $(1-\varepsilon)\operatorname{onehot}(t) + \varepsilon/V$ and check it against
#    `F.cross_entropy(z, t, label_smoothing=ε)`. *Hint:* the loss is
#    $\operatorname{lse}(z) - (1-\varepsilon) z_t - \varepsilon\,\overline{z}$, so the gradient is
#    $p - (1-\varepsilon)\operatorname{onehot}(t) - \varepsilon/V$.
# 2. Rerun section 8 with `warmup_steps=0` and a peak learning rate of `1e-2`, and compare the first 50 steps
#    of the loss and the `grad_norm` of the records with the run above; then restore the warmup and keep
#    `1e-2`. *Hint:* section 3: every early step moves every weight by about $\eta$, whatever its gradient.
