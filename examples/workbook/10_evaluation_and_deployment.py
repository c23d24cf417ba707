# %% [markdown]
# # 10 · Evaluation and deployment
#
# A trained model is judged by numbers and used through files and a server. This last chapter of
# the blueprint covers both ends:
#
# 1. **Perplexity and bits per byte** on the validation split: derived from the mean negative
#    log-likelihood, computed with `minillm.train.evaluate_language_model` and again by hand from
#    the logits (they must agree).
# 2. **Multiple-choice scoring** (`minillm.train.multiple_choice`, the way HellaSwag-style
#    benchmarks are scored): summed log-probability per choice, `acc` versus `acc_norm`, and why
#    length normalisation matters; a tiny task file scored by hand and by the library; a 95% Wilson
#    interval for the accuracy.
# 3. **Deployment**: minillm's safetensors checkpoint and the Hugging Face directory written by
#    `save_pretrained`, each reloaded with identical logits; then `minillm serve` on a free local
#    port and one OpenAI-style chat completion sent with the standard library.
#
# Everything runs on a tiny GPT trained here in a few seconds on the embedded Shakespeare corpus.

# %%
import json
import math
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from importlib.util import find_spec

import matplotlib.pyplot as plt
import numpy as np
from recipes import fit  # this folder: what chapters 07-10 share

import minillm as mm
from minillm.data import RandomWindowLoader, clean_documents, default_corpus_path, read_corpus, split_train_val
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.posttrain.tasks import wilson_interval
from minillm.tokenizer import BPETokenizer
from minillm.train import evaluate_language_model, load_model, save_checkpoint
from minillm.train.multiple_choice import evaluate_multiple_choice, format_report, read_tasks

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# These matrices are tiny: split over BLAS threads they wait on each other (badly so on a busy
# machine), so one thread is faster.
mm.host.set_blas_threads(1)
SEED = 0
mm.manual_seed(SEED)
rng = np.random.default_rng(SEED)
workdir = tempfile.TemporaryDirectory()          # every file of this chapter goes here
print("size:", "small" if SMALL else "full", "| files in", workdir.name)

# %% [markdown]
# ## 0. A tiny model to evaluate
#
# The embedded corpus, cleaned, split as `minillm train` and `minillm eval` split it (the last 10%
# of the text is validation); a 512-token byte-level BPE trained on the training part; a 2-layer GPT
# of width 64 with a 64-token context, trained for a few hundred steps.

# %%
docs, _ = clean_documents(read_corpus(default_corpus_path()))
train_docs, val_docs = split_train_val(docs, 0.1)
tokenizer = BPETokenizer.train(train_docs, vocab_size=512, pattern="gpt4")
train_text, val_text = "".join(train_docs), "".join(val_docs)
train_ids = np.array(tokenizer.encode_ordinary(train_text), dtype=np.int64)
val_ids = np.array(tokenizer.encode_ordinary(val_text), dtype=np.int64)
val_bytes = len(val_text.encode("utf-8"))
print(f"train {len(train_ids):,} tokens; validation {len(val_ids):,} tokens = {val_bytes:,} bytes "
      f"({val_bytes / len(val_ids):.2f} bytes per token)")

STEPS = 300 if SMALL else 1000
BLOCK, BATCH = 64, 16 if SMALL else 32
config = GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64)
model = GPT(config)
loader = RandomWindowLoader(train_ids, batch_size=BATCH, block_size=BLOCK, seed=SEED)
schedule = CosineSchedule(1e-2, 1e-3, warmup_steps=STEPS // 10, total_steps=STEPS)   # tiny models take a high rate
optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=schedule(0), betas=(0.9, 0.95))
started = time.perf_counter()
losses = fit(optimizer, lambda step: model(*loader.next_batch())[1], STEPS, model.parameters(), schedule)
model.eval()
print(f"{model.num_parameters():,} parameters; {STEPS} steps in {time.perf_counter() - started:.1f} s; "
      f"train loss {np.mean(losses[:10]):.2f} -> {np.mean(losses[-10:]):.2f}")

# %% [markdown]
# ## 1. Perplexity and bits per byte
#
# Score every validation token once: the model sees tokens $u_1..u_{t-1}$ (at most the last
# $T$ of them) and puts probability $p_\theta(u_t\mid u_{<t})$ on the true next token. With $N$
# scored tokens:
#
# $$S = \sum_{t} -\ln p_\theta(u_t\mid u_{<t}) \;\text{(nats)},\qquad
#   \bar\ell = \frac{S}{N}\;\text{(the mean NLL, the validation loss)}.$$
#
# **Perplexity** is the exponential of the mean NLL, i.e. the inverse geometric mean of the
# probabilities given to the truth:
#
# $$\mathrm{PPL} = e^{\bar\ell} = \Big(\prod_t p_\theta(u_t\mid u_{<t})\Big)^{-1/N}.$$
#
# A model that spreads probability uniformly over $k$ tokens at every step has $\mathrm{PPL} = k$:
# perplexity is the "effective number of choices"; the uniform model over the vocabulary has
# $\mathrm{PPL} = V$. It is a per-*token* number, so two models with different tokenizers cannot be
# compared by it: a tokenizer with longer tokens has fewer, harder predictions.
#
# **Bits per byte** divides the same total by the size of the text instead. $S/\ln 2$ is the total
# in bits — the length of the validation text compressed by an arithmetic coder driven by the
# model — and the text has $B$ UTF-8 bytes:
#
# $$\mathrm{bpb} = \frac{S}{B \ln 2} = \frac{\bar\ell}{\ln 2}\cdot\frac{N}{B}.$$
#
# The tokenizer only enters through $N/B$ (tokens per byte), and cancels: bpb compares any two
# models of the same text. (8 bits per byte is no compression; the table below also shows what
# zlib, a general-purpose compressor, achieves on the same bytes.)
#
# **Windows.** The split is longer than the context, so it is scored in windows of $T$ tokens:
# windows start at $0, T, 2T, \dots$; a last window aligned to the end scores only the positions no
# earlier window scored (`minillm.data.sequential_windows`). A stride below $T$ gives each token
# more left context and costs more forwards.
#
# First the library, then the same number from the logits by hand (float64 log-softmax in NumPy).

# %%
library = evaluate_language_model(model, val_ids, BLOCK, batch_size=32, num_bytes=val_bytes, prefix="")
print("evaluate_language_model:", {k: round(v, 4) if isinstance(v, float) else v for k, v in library.items()})

# by hand: the same windows, the log-softmax and the gather in NumPy
n = len(val_ids)
starts = list(range(0, n - 1 - BLOCK + 1, BLOCK))
if starts[-1] + BLOCK < n - 1:
    starts.append(n - 1 - BLOCK)                                  # the tail window, aligned to the end
total_nats, scored, scored_until = 0.0, 0, 0
position_nll = np.zeros(BLOCK)                                    # summed NLL per position in a full window
position_count = np.zeros(BLOCK)
with mm.no_grad():
    for first in range(0, len(starts), 32):
        batch_starts = starts[first:first + 32]
        windows = np.stack([val_ids[s:s + BLOCK + 1] for s in batch_starts])       # (b, T+1)
        x, y = windows[:, :-1], windows[:, 1:]                                      # (b, T)
        logits, _ = model(x)                                                        # (b, T, V)
        z = logits.data.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))                    # (b, T, V)
        nll = -np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]         # (b, T)
        if first == 0:
            print(f"shapes: windows {windows.shape} -> x, y {x.shape} -> logits {logits.shape} -> "
                  f"log-probs {log_probs.shape} -> NLL of the targets {nll.shape}")
        for row, start in enumerate(batch_starts):
            new = start + 1 + np.arange(BLOCK) > scored_until                       # positions not yet scored
            total_nats += nll[row, new].sum()
            scored += int(new.sum())
            scored_until = start + BLOCK
            if new.all():
                position_nll += nll[row]
                position_count += 1
mean_nll = total_nats / scored
by_hand = {"loss": mean_nll, "ppl": math.exp(mean_nll), "bpb": total_nats / (val_bytes * math.log(2))}
print(f"by hand: {scored:,} tokens, loss {by_hand['loss']:.4f} nats/token, perplexity {by_hand['ppl']:.2f}, "
      f"{by_hand['bpb']:.4f} bits per byte")
assert scored == library["tokens"] == len(val_ids) - 1              # every target exactly once
for key in ("loss", "ppl", "bpb"):                                  # float32 logits: means agree to ~1e-6
    assert abs(by_hand[key] - library[key]) <= 1e-5 * abs(library[key]), key
assert abs(by_hand["bpb"] - by_hand["loss"] / math.log(2) * scored / val_bytes) < 1e-12

# %% [markdown]
# Baselines put the numbers in scale. The uniform model: $\bar\ell = \ln V$. The unigram model
# (token frequencies of the training split, add-one smoothed) knows which tokens are common but
# nothing of context. And the GPT again with a stride of $T/4$: more context per scored token
# (the right-hand plot below shows how much this model gains from context at all).

# %%
counts = np.bincount(train_ids, minlength=tokenizer.vocab_size) + 1.0
unigram_nll = -np.log(counts / counts.sum())[val_ids[1:]].mean()
strided = evaluate_language_model(model, val_ids, BLOCK, batch_size=32, num_bytes=val_bytes, stride=BLOCK // 4,
                                  prefix="")
rows = [("uniform over V", math.log(tokenizer.vocab_size)), ("unigram", unigram_nll),
        ("tiny GPT, stride T", library["loss"]), ("tiny GPT, stride T/4", strided["loss"])]
print(f"{'model':<22} {'loss':>7} {'ppl':>8} {'bits/byte':>9}")
for name, loss in rows:
    print(f"{name:<22} {loss:>7.3f} {math.exp(loss):>8.1f} {loss / math.log(2) * scored / val_bytes:>9.3f}")
print(f"{'zlib, level 9':<22} {'':>7} {'':>8} {8 * len(zlib.compress(val_text.encode('utf-8'), 9)) / val_bytes:>9.3f}")
assert library["loss"] < unigram_nll < math.log(tokenizer.vocab_size)

fig, axes = plt.subplots(1, 2, figsize=(12, 3.3))
axes[0].plot(losses, lw=0.8)
axes[0].axhline(library["loss"], color="tab:red", ls="--", label=f"validation loss {library['loss']:.2f}")
axes[0].set_xlabel("step")
axes[0].set_ylabel("nats / token")
axes[0].set_title("training loss")
axes[0].legend()
edges = [0, 1, 2, 4, 8, 16, 32, BLOCK]                               # log-spaced bins: one position alone is noisy
binned = [position_nll[a:b].sum() / position_count[a:b].sum() for a, b in zip(edges[:-1], edges[1:])]
axes[1].plot(range(len(binned)), binned, "o-")
axes[1].set_xticks(range(len(binned)), [f"{a + 1}" if b == a + 1 else f"{a + 1}-{b}" for a, b in zip(edges[:-1], edges[1:])])
axes[1].set_xlabel("tokens of context the prediction had")
axes[1].set_ylabel("mean NLL (nats)")
axes[1].set_title("validation loss by context length")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Multiple-choice scoring
#
# A question is a context $c$ and choices $a^{(1)}, \dots, a^{(K)}$, one of them right. The model
# does not generate; it scores. Each choice is tokenized as $x_1..x_n$ and
#
# $$\log p(a \mid c) = \sum_{i=1}^{n} \log p_\theta(x_i \mid c, x_{<i}).$$
#
# `acc` takes $\arg\max_k \log p(a^{(k)}\mid c)$. Every term of the sum is negative, so a choice
# pays for every token it has: if the model's typical cost is $\bar\ell$ nats per token,
# $\log p(a\mid c) \approx -n\,\bar\ell$, and a choice twice as long scores about twice as low
# *however well it fits*. `acc` is biased toward short choices.
#
# `acc_norm` compares the fit per unit of text instead:
# $\arg\max_k \log p(a^{(k)}\mid c) / |a^{(k)}|$ with $|a|$ the choice's length in characters (as
# lm-evaluation-harness does; characters, not tokens, so it does not depend on the tokenizer). It
# removes the first-order length effect, not all of it: the first tokens of a continuation are the
# hardest, so very short choices still pay more per character.
#
# Two details of the library: the context's trailing whitespace moves to the front of every
# choice (`" mat"` is one token in running text), and with the KV cache the context is computed
# once and its keys and values are shared by all choices.
#
# **A tiny task.** From the validation text: the context is a stretch of text ending at a word
# boundary, the right choice the next 1–5 words, the three wrong choices 1–5 consecutive words taken
# from elsewhere in the split. The lengths differ by design, so the length bias shows.

# %%
N_QUESTIONS = 40 if SMALL else 200
words_at = [m.start() for m in re.finditer(r"(?<=\s)\S", val_text)]          # every word start in the split


def words_from(start_index, count):
    """``count`` words of the validation text starting at word ``start_index``, single-spaced."""
    end = words_at[start_index + count] if start_index + count < len(words_at) else len(val_text)
    return " ".join(val_text[words_at[start_index]:end].split())


questions = []
while len(questions) < N_QUESTIONS:
    at = int(rng.integers(20, len(words_at) - 10))
    context = " ".join(val_text[max(0, words_at[at] - 120):words_at[at]].split()[-12:]) + " "
    choices = [words_from(at, int(rng.integers(1, 6)))]
    while len(choices) < 4:
        other = words_from(int(rng.integers(0, len(words_at) - 10)), int(rng.integers(1, 6)))
        if other not in choices:
            choices.append(other)
    order = rng.permutation(4)
    questions.append({"context": context, "choices": [choices[i] for i in order],
                      "label": int(np.argmax(order == 0))})
task_path = os.path.join(workdir.name, "next_words.jsonl")
with open(task_path, "w", encoding="utf-8") as file:
    file.write("".join(json.dumps(q) + "\n" for q in questions))
print(open(task_path, encoding="utf-8").readline())
parsed = read_tasks(task_path)                                     # the library's strict reader
print(f"{len(parsed)} questions, 4 choices each")

# %% [markdown]
# Scoring by hand: encode the context and each choice apart (whitespace moved), keep the last
# $T + 1 - m$ context tokens ($m$: the longest choice in tokens) so that every choice is scored
# after the same context inside the window, run the model on `context + choice[:-1]` and sum the
# log-probabilities at the choice's positions.

# %%
def score_by_hand(question):
    """(summed log-probability, characters) per choice, as the module docstring defines them."""
    context = question.context.rstrip()
    moved = question.context[len(context):]                                       # trailing whitespace
    choices_ids = [tokenizer.encode_ordinary(moved + choice) for choice in question.choices]
    keep = BLOCK + 1 - max(len(ids) for ids in choices_ids)                       # every choice fits the window
    context_ids = tokenizer.encode_ordinary(context)[-keep:]                      # left-truncated, as the library does
    sums, characters = [], []
    for choice, choice_ids in zip(question.choices, choices_ids):
        full = context_ids + choice_ids
        with mm.no_grad():
            logits, _ = model(np.array([full[:-1]]))                              # (1, L-1, V)
        z = logits.data[0].astype(np.float64)
        log_probs = z - z.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))             # (L-1, V)
        positions = np.arange(len(context_ids) - 1, len(full) - 1)                # where each choice token is predicted
        sums.append(float(log_probs[positions, choice_ids].sum()))
        characters.append(len(moved + choice))
    return sums, characters


hand = [score_by_hand(q) for q in parsed]
hand_pred = [int(np.argmax(s)) for s, _ in hand]
hand_pred_norm = [int(np.argmax(np.array(s) / np.array(c))) for s, c in hand]
hand_acc = np.mean([p == q.label for p, q in zip(hand_pred, parsed)])
hand_acc_norm = np.mean([p == q.label for p, q in zip(hand_pred_norm, parsed)])

result = evaluate_multiple_choice(model, tokenizer, parsed, use_cache=True)
no_cache = evaluate_multiple_choice(model, tokenizer, parsed, use_cache=False, batch_size=16)
print(format_report(result, "next_words.jsonl"))
print(f"by hand: acc {hand_acc:.4f}, acc_norm {hand_acc_norm:.4f}")
for (sums, chars), detail, detail_nc in zip(hand, result["details"], no_cache["details"]):
    assert np.allclose(sums, detail["logprobs"], atol=1e-4) and np.allclose(sums, detail_nc["logprobs"], atol=1e-4)
    assert chars == detail["characters"]
print(f"{result['truncated']} contexts were left-truncated to fit the {BLOCK}-token window")
assert (hand_acc, hand_acc_norm) == (result["acc"], result["acc_norm"]) == (no_cache["acc"], no_cache["acc_norm"])

# %% [markdown]
# Where the length bias shows: how long is the choice each rule picks, compared with the right
# one? And the score of every choice against its length: the summed log-probability falls about
# linearly with length (the bias), the per-character score much less.

# %%
lengths = [np.array(d["characters"]) for d in result["details"]]
picked = {"label": [length[d["label"]] for length, d in zip(lengths, result["details"])],
          "acc": [length[d["predicted"]] for length, d in zip(lengths, result["details"])],
          "acc_norm": [length[d["predicted_norm"]] for length, d in zip(lengths, result["details"])]}
shortest = {rule: np.mean([length[d[key]] == length.min() for length, d in zip(lengths, result["details"])])
            for rule, key in (("label", "label"), ("acc", "predicted"), ("acc_norm", "predicted_norm"))}
for rule in picked:
    print(f"{rule:<9} mean length of the picked choice {np.mean(picked[rule]):5.1f} characters; "
          f"the shortest of the four in {shortest[rule]:.0%} of questions")

all_len = np.concatenate(lengths)
all_lp = np.concatenate([d["logprobs"] for d in result["details"]])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
axes[0].scatter(all_len, all_lp, s=8, alpha=0.6)
axes[0].set_xlabel("choice length (characters)")
axes[0].set_ylabel("summed log p (acc's score)")
axes[1].scatter(all_len, all_lp / all_len, s=8, alpha=0.6, color="tab:orange")
axes[1].set_xlabel("choice length (characters)")
axes[1].set_ylabel("log p per character (acc_norm's)")
fig.suptitle("every choice of every question")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### How sure is an accuracy? The Wilson interval
#
# $k$ right out of $n$ questions gives $\hat p = k/n$; the standard error
# $\sqrt{\hat p(1-\hat p)/n}$ (the library reports it with $n-1$, as lm-evaluation-harness does)
# leads to the "Wald" interval $\hat p \pm z\sqrt{\hat p(1-\hat p)/n}$, which behaves badly for
# small $n$ or $\hat p$ near 0 or 1 (at $\hat p = 0$ it is the single point 0). The **Wilson**
# interval instead collects every true rate $q$ that the observation does not reject at level $z$:
#
# $$|\hat p - q| \le z\sqrt{q(1-q)/n}
# \iff \Big(1+\tfrac{z^2}{n}\Big)q^2 - \Big(2\hat p+\tfrac{z^2}{n}\Big)q + \hat p^2 \le 0 ,$$
#
# a quadratic in $q$ whose roots are
#
# $$q_\pm = \frac{\hat p + \frac{z^2}{2n}}{1+\frac{z^2}{n}} \pm \frac{z}{1+\frac{z^2}{n}}
#   \sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}} .$$
#
# It is centred between $\hat p$ and $\frac12$, never leaves $[0, 1]$, and at $\hat p=0$ it is
# $[0, \frac{z^2/n}{1+z^2/n}]$. minillm has it as `minillm.posttrain.tasks.wilson_interval`
# ($z = 1.96$ for 95%).

# %%
z95 = 1.959963984540054


def wilson_by_hand(k, n, z=z95):
    roots = np.roots([1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2])       # the quadratic above
    return float(roots.min()), float(roots.max())


k_right = int(round(result["acc"] * result["questions"]))
low, high = wilson_interval(k_right, result["questions"])
print(f"acc = {k_right}/{result['questions']} = {result['acc']:.3f}, 95% Wilson interval [{low:.3f}, {high:.3f}], "
      f"chance {result['chance']:.2f}")
for k, n_q in [(k_right, result["questions"]), (0, 10), (3, 10), (10, 10), (57, 200)]:
    assert np.allclose(wilson_interval(k, n_q), wilson_by_hand(k, n_q), atol=1e-9)


def coverage(n_q, q, interval):
    """P(the interval of a Binomial(n, q) draw contains q), summed exactly over k."""
    return sum(math.comb(n_q, k) * q ** k * (1 - q) ** (n_q - k)
               for k in range(n_q + 1) if interval(k, n_q)[0] <= q <= interval(k, n_q)[1])


def wald(k, n_q, z=z95):
    p = k / n_q
    half = z * math.sqrt(p * (1 - p) / n_q)
    return p - half, p + half


q_grid = np.linspace(0.01, 0.99, 99)
n_q = result["questions"]
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(q_grid, [coverage(n_q, q, wilson_interval) for q in q_grid], label="Wilson")
ax.plot(q_grid, [coverage(n_q, q, wald) for q in q_grid], label="Wald", alpha=0.7)
ax.axhline(0.95, color="gray", ls=":")
ax.set_xlabel("true accuracy q")
ax.set_ylabel("coverage")
ax.set_title(f"how often a nominal 95% interval holds the truth, n = {n_q} questions")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Deployment: files that reload to the same model
#
# **minillm's checkpoint** (`save_checkpoint`, what `minillm train` writes): one safetensors file
# with the weights, the model config, the tokenizer and, during training, the optimizer state and
# the data position; no pickle, checked field by field on load (`load_model`). The weights are
# stored in their own dtype, so the reloaded model computes *identical* logits, not just close ones.
#
# **The Hugging Face directory** (`model.save_pretrained`, the `minillm export` command):
# `config.json`, `model.safetensors` in the GPT-2 (or Llama) tensor layout, `generation_config.json`
# and the tokenizer files. `GPT.from_pretrained` and `load_model` read it back; `transformers`'
# `AutoModelForCausalLM` loads it too.

# %%
probe = np.array([tokenizer.encode_ordinary("ROMEO:\nWhat light through yonder window")], dtype=np.int64)
with mm.no_grad():
    reference_logits = model(probe)[0].data.copy()                               # (1, T, V)

checkpoint_path = os.path.join(workdir.name, "tiny.safetensors")
save_checkpoint(checkpoint_path, model=model, step=STEPS, tokenizer=tokenizer)
reloaded, reloaded_tokenizer, checkpoint = load_model(checkpoint_path)
with mm.no_grad():
    assert np.array_equal(reloaded(probe)[0].data, reference_logits)
assert reloaded_tokenizer.encode_ordinary(val_text[:2000]) == tokenizer.encode_ordinary(val_text[:2000])
print(f"checkpoint {os.path.getsize(checkpoint_path):,} bytes, step {checkpoint.step}: identical logits, same tokenizer")

hf_dir = os.path.join(workdir.name, "tiny-hf")
written = model.save_pretrained(hf_dir, tokenizer=tokenizer)
for name in sorted(written):
    print(f"  {name:<28} {os.path.getsize(os.path.join(hf_dir, name)):>9,} bytes")
with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as file:
    hf_config = json.load(file)
print(json.dumps({k: v for k, v in hf_config.items()
                  if k in ("architectures", "model_type", "n_layer", "n_head", "n_embd", "n_positions", "vocab_size")}))
from_hf = GPT.from_pretrained(hf_dir)
via_loader, hf_tokenizer, _ = load_model(hf_dir)
with mm.no_grad():
    assert np.array_equal(from_hf(probe)[0].data, reference_logits)
    assert np.array_equal(via_loader(probe)[0].data, reference_logits)
assert hf_tokenizer.encode_ordinary(val_text[:2000]) == tokenizer.encode_ordinary(val_text[:2000])
print("Hugging Face directory: identical logits through GPT.from_pretrained and load_model")

# %% [markdown]
# The same directory in PyTorch, when `transformers` and `torch` are installed (the `reference`
# extra); float32 on both sides, different kernels, so close rather than identical.

# %%
if find_spec("transformers") and find_spec("torch"):
    import torch
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        torch_logits = hf_model(torch.tensor(probe)).logits.numpy()
    difference = np.abs(torch_logits - reference_logits).max()
    print(f"transformers {type(hf_model).__name__}: max |logit difference| {difference:.2e}")
    assert difference < 1e-4
else:
    print("skipped: transformers/torch are not installed (pip install -e '.[reference]')")

# %% [markdown]
# ## 4. Serving: `minillm serve`
#
# `minillm serve --model CHECKPOINT` puts the model behind an OpenAI-compatible HTTP API
# (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, streamed or not) with continuous
# batching: requests join and leave one running decode batch. For a model without chat markers in
# its tokenizer (like this one) a chat request is answered in plain mode: the messages are joined
# as text and the reply stops at a blank line.
#
# Below: the server as a subprocess on a free port of 127.0.0.1 (`--port 0`), one chat completion
# sent with `urllib` (no proxy; nothing leaves this machine), the JSON answer, and the server
# stopped.

# %%
if not (find_spec("starlette") and find_spec("uvicorn")):
    print("skipped: serving needs starlette and uvicorn (pip install -e '.[serve]')")
else:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mm.__file__)))   # so the subprocess imports this minillm
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    server = subprocess.Popen([sys.executable, "-m", "minillm", "serve", "--model", checkpoint_path, "--port", "0",
                               "--served_name", "tiny-shakespeare"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    try:
        banner = lines.get(timeout=120)
        print(banner.strip())
        url = re.search(r"http://[\d.]+:\d+", banner)
        assert url, f"unexpected first line from the server: {banner!r}"
        request = urllib.request.Request(
            url.group(0) + "/v1/chat/completions", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "tiny-shakespeare", "max_tokens": 40, "temperature": 0.8, "seed": 0,
                             "messages": [{"role": "user", "content": "ROMEO:"}]}).encode())
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(request, timeout=120) as response:
            answer = json.load(response)
        print(json.dumps(answer, indent=2))
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] <= 40
    finally:
        server.terminate()
        print("server stopped, exit status", server.wait(timeout=30))

# %%
workdir.cleanup()

# %% [markdown]
# ## Checklist
#
# | setting | what to use | what goes wrong when it is off |
# |---|---|---|
# | evaluation split | held out, same cleaning and tokenizer as training | validation loss below training loss, or too good to be true: leakage (duplicates across the split, chapter 01) |
# | metric across tokenizers | bits per byte | perplexity of a 512-token and a 50k-token model compared directly: the one with longer tokens looks worse per token |
# | window stride | $T$ (fast) or below (more context) | reported loss depends on it; a number without its stride and context length is not comparable |
# | eval mode, `no_grad` | always | dropout on during evaluation: noisy, higher loss; gradients kept: memory grows |
# | multiple choice | report `acc` and `acc_norm`, and chance | `acc` alone on choices of unequal length rewards the shortest choice, not understanding |
# | number of questions | enough for a narrow interval | with 40 questions (the small size) the 95% Wilson interval is about 0.3 wide: two models 5 points apart are not distinguishable |
# | export dtype | float32 unless the consumer wants float16/bfloat16 | a float16/bfloat16 export rounds every weight: the reloaded logits are no longer identical; compare with a tolerance, not equality |
# | serving | `--host 127.0.0.1` by default, `--max-batch` for throughput | binding 0.0.0.0 exposes the model to the network; too large a batch raises latency per request |
#
# ## Exercises
#
# 1. **Bits per byte across tokenizers.** Train the same GPT with a character-level tokenizer
#    (`minillm.tokenizer.CharTokenizer.train(train_text)`) for the same number of *bytes* seen, and
#    compare its perplexity and bits per byte with the BPE model's. *Hint:* only one of the two
#    numbers is a fair comparison; check that $N/B$ is 1 for the character model on this ASCII text.
# 2. **A harder multiple choice.** Make the wrong choices the same length as the right one (in
#    words), then compare `acc` and `acc_norm` again; then try the "unconditional" normalisation
#    $\log p(a\mid c) - \log p(a\mid \text{a neutral context})$. *Hint:* with equal lengths the two
#    accuracies should move closer; the unconditional version removes how common a choice is in
#    general.
