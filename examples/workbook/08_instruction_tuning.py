# Chapter 08 of the minillm workbook (percent format: sync.py writes 08_instruction_tuning.ipynb from it).
# %% [markdown]
# # 08 · Instruction tuning: the chat template, the loss mask, SFT and LoRA
#
# A pretrained model continues text. An assistant answers: it reads a *conversation* and writes
# the next reply, then stops. Supervised fine-tuning (SFT) teaches that with ordinary next-token
# training on conversations, with two changes:
#
# 1. **a chat template** turns a list of messages into one token sequence, with *special tokens*
#    marking whose turn it is and where a turn ends;
# 2. **a loss mask** makes only the assistant's reply tokens count: the model learns to *write*
#    answers, not to imitate users.
#
# **LoRA** then does the same fine-tuning while training a small fraction of the numbers: each
# chosen weight matrix $W$ stays frozen and learns a low-rank correction $\frac{\alpha}{r} B A$.
#
# In the blueprint this is the first post-training stage, after pretraining (chapter 06) and
# generation (chapter 07, whose decoding loop reads the answers here), before preference alignment
# (chapter 09). Library code: `minillm/tokenizer/chat.py` (template and mask),
# `minillm/posttrain/` (`batches.py`, `sft.py`, `tasks.py`, `lora.py`), and
# `examples/finetune_sft.py` for the full-sized run.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from recipes import fit, pretrain_tiny_model  # this folder: what chapters 07-10 share

import minillm as mm
from minillm import functional as F
from minillm.nn import GPT, Linear, functional_call, resize_token_embeddings
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.posttrain import (
    IGNORE_INDEX,
    ChatTemplate,
    LoRALinear,
    SFTBatchSampler,
    apply_lora,
    ensure_chat_tokens,
    evaluate_tasks,
    make_eval_prompts,
    make_sft_examples,
    merge_lora,
    parameter_counts,
    render_sft_examples,
    sft_batch,
    sft_loss,
)
from minillm.posttrain.lora import lora_param_groups, train_rows_from

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# The matrices of this chapter are tiny (64 wide): one BLAS thread is as fast as two, and it does
# not stall when the machine is busy with other work (see minillm.host.set_blas_threads).
mm.host.set_blas_threads(1)
print(f"size: {'small' if SMALL else 'full'}")

# %% [markdown]
# ## The base model
#
# The shared recipe of chapters 07 and 08 (`pretrain_tiny_model` in [`recipes.py`](recipes.py),
# the same seed as in chapter 07; trained here again so that this chapter runs on its own): a
# byte-level GPT (one token per byte, plus `<|endoftext|>`: $V = 257$), 2 layers, 4 heads,
# $C = 64$, context 128, pretrained on the embedded Shakespeare corpus. Byte-level matters here: the tasks below ask the model to copy
# words out of the prompt, and with one token per character copying is copying tokens.

# %%
PRETRAIN_STEPS = 200 if SMALL else 1500
started = time.perf_counter()
model, tokenizer, pretrain_losses = pretrain_tiny_model(PRETRAIN_STEPS)
print(f"{model.num_parameters():,} parameters, {PRETRAIN_STEPS} steps in {time.perf_counter() - started:.1f} s; "
      f"loss {pretrain_losses[0]:.2f} -> {np.mean(pretrain_losses[-20:]):.2f}")

# %% [markdown]
# ## 1. The chat template
#
# minillm's format (`minillm/tokenizer/chat.py`): every message is its role marker, its content,
# and `<|end|>`, with nothing in between:
#
# `[<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> reply <|end|> <|user|> ...`
#
# Each marker is **one special-token id**, which ordinary text can never produce (content is
# encoded with `encode_ordinary`, so a user typing the characters `<|end|>` gets those characters,
# not the marker). The pretrained tokenizer has no such ids: `ensure_chat_tokens` adds them (the
# vocabulary grows from 257 to 261), and the model's embedding must grow by as many rows
# (`resize_token_embeddings`: each new row is the mean of the old rows plus a little noise, so the
# grown model predicts what it did before — chapter 03 covers embeddings).

# %%
added = ensure_chat_tokens(tokenizer)
base_vocab = model.config.vocab_size
resize_token_embeddings(model, tokenizer.vocab_size)
template = ChatTemplate(tokenizer)
print(f"added special tokens {added}: vocabulary {base_vocab} -> {tokenizer.vocab_size}; "
      f"embedding {model.tok_emb.weight.shape}")
print(template)

conversation = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capitalise the word: lord"},
    {"role": "assistant", "content": "Lord"},
]
ids, mask = template.render(conversation)
specials = {i: t for t, i in tokenizer.special_tokens.items()}
print(f"\n{len(ids)} ids:", ids)
print("\n pos   id  token            special  supervised")
for position, (token, supervised) in enumerate(zip(ids, mask)):
    text = specials.get(token, repr(tokenizer.decode([token]))[1:-1])
    print(f"{position:4d} {token:4d}  {text:15s}  {'yes' if token in specials else '':7s}  {'*' if supervised else ''}")
print("\nsupervised spans in [[ ]]:", template.show(ids, mask))

assert all(i >= base_vocab for i in template.marker_ids), "chat markers are new ids"
assert ids == template.render_prompt(conversation[:-1]) + template.render_reply("Lord")
assert sum(mask) == len(tokenizer.encode_ordinary("Lord")) + 1              # the reply and its <|end|>
assert template.parse_reply(template.render_reply("Lord")).text == "Lord"
assert tokenizer.encode_ordinary("<|end|>") != [template.end_id]            # text cannot forge a marker

# %% [markdown]
# ## 2. The loss mask
#
# Training on a rendered conversation of $L$ tokens is next-token prediction: the input is
# $x = (\text{ids}_0, \dots, \text{ids}_{L-2})$ and the target at position $t$ is
# $\text{ids}_{t+1}$. The mask $m$ from `render` marks the ids the model must learn to *produce*
# (the reply's content and its closing `<|end|>`; not `<|assistant|>`, which the prompt supplies
# at generation time). Target $t$ is supervised iff $m_{t+1}$; the others are set to $-100$
# (`IGNORE_INDEX`), which the cross-entropy skips. With logits $z_t \in \mathbb{R}^V$ and
# $N = \sum_t m_{t+1}$ supervised targets,
#
# $$\mathcal{L} = \frac{1}{N} \sum_{t} m_{t+1} \Big( -\log \mathrm{softmax}(z_t)_{y_t} \Big)
#   = \frac{1}{N} \sum_{t:\, m_{t+1}} \Big( \log \sum_j e^{z_{t,j}} - z_{t, y_t} \Big).$$
#
# The mean is over supervised tokens, **not** over all $B \cdot T$ positions: padding and prompt
# tokens neither add loss nor dilute it (a batch of long prompts and short answers would otherwise
# get a tiny gradient). Differentiating,
#
# $$\frac{\partial \mathcal{L}}{\partial z_{t}} = \frac{m_{t+1}}{N} \big( \mathrm{softmax}(z_t) - e_{y_t} \big),$$
#
# so a masked position gets no gradient *at its own logits*; the prompt still shapes the
# supervised positions through attention, and the gradient flows back into it that way.
#
# Below: $x, y$ built by hand and compared with `sft_batch`; the loss composed in NumPy and
# compared with `F.cross_entropy(..., ignore_index=-100)` and `sft_loss`; the gradient formula
# against the library's backward; a float64 gradcheck with masked targets; and a two-example
# batch where padding must not change the loss.

# %%
x_hand = np.asarray([ids[:-1]])                                                   # (1, L-1)
y_hand = np.asarray([[t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]])
x_lib, y_lib = sft_batch([(ids, mask)], block_size=model.config.block_size, pad_id=template.end_id)
assert np.array_equal(x_hand, x_lib) and np.array_equal(y_hand, y_lib)
print("input -> target (— = not supervised):")
print("  ".join(f"{specials.get(a, tokenizer.decode([a]))}→{'—' if b == IGNORE_INDEX else specials.get(b, tokenizer.decode([b]))}"
                for a, b in zip(x_hand[0][-8:], y_hand[0][-8:])))
print(f"x {x_lib.shape}, y {y_lib.shape}; supervised targets N = {(y_lib != IGNORE_INDEX).sum()}")

with mm.no_grad():
    logits, library_loss = model(x_lib, y_lib)                                    # (1, L-1, V)
z = logits.data[0].astype(np.float64)                                             # (L-1, V)
log_probs = z - z.max(axis=1, keepdims=True)
log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))                 # log softmax per row
supervised = y_lib[0] != IGNORE_INDEX
composed_loss = -log_probs[supervised, y_lib[0][supervised]].mean()
with mm.no_grad():
    sft_value, info = sft_loss(model, (x_lib, y_lib))
print(f"masked-mean CE: composed {composed_loss:.6f}, model(x, y) {library_loss.item():.6f}, "
      f"sft_loss {sft_value.item():.6f} over {info['supervised_tokens']:.0f} tokens")
assert abs(composed_loss - library_loss.item()) < 1e-5 and abs(composed_loss - sft_value.item()) < 1e-5

# the gradient: (m/N)(softmax - onehot), checked against the library's backward, float64
z_leaf = mm.tensor(z, requires_grad=True)
F.cross_entropy(z_leaf, y_lib[0], ignore_index=IGNORE_INDEX).backward()
expected = np.exp(log_probs)
expected[supervised, y_lib[0][supervised]] -= 1.0
expected *= supervised[:, None] / supervised.sum()
assert np.allclose(z_leaf.grad, expected, rtol=1e-10, atol=1e-14)
assert np.all(z_leaf.grad[~supervised] == 0.0)
print("dL/dz = (m/N)(softmax - onehot): matches backward; masked rows get exactly 0")

# finite differences with a random upstream gradient, some targets masked
rng = np.random.default_rng(0)
small_targets = rng.integers(0, 7, size=6)
small_targets[[0, 3]] = IGNORE_INDEX
mm.gradcheck(lambda zz: F.cross_entropy(zz, small_targets, ignore_index=IGNORE_INDEX), [rng.normal(size=(6, 7))])
print("gradcheck of the masked cross-entropy: passed")

# padding does not dilute the mean: a batch of two examples of different lengths
short = template.render([{"role": "user", "content": "Say thou 2 times."}, {"role": "assistant", "content": "thou thou"}])
x2, y2 = sft_batch([(ids, mask), short], block_size=model.config.block_size, pad_id=template.end_id)
with mm.no_grad():
    batch_loss = sft_loss(model, (x2, y2))[0].item()
    each = [sft_loss(model, sft_batch([example], model.config.block_size, template.end_id))[0].item() for example in ((ids, mask), short)]
counts = [sum(m[1:]) for _, m in ((ids, mask), short)]
print(f"batch {x2.shape}: loss {batch_loss:.6f} = token-weighted mean of {each[0]:.4f} ({counts[0]} tokens) and "
      f"{each[1]:.4f} ({counts[1]} tokens)")
assert abs(batch_loss - (each[0] * counts[0] + each[1] * counts[1]) / sum(counts)) < 1e-5

# %% [markdown]
# ## 3. SFT on a synthetic instruction task
#
# `minillm.posttrain.tasks` makes seeded instruction data whose answers a program can check:
# words from the corpus and small numbers, eight kinds of question ("What is the first word of:
# ...", "Capitalise the word: ...", "What is 37 + 48?", ...). Training prompts and evaluation
# prompts come from disjoint word and number pools (`make_pools`), so the evaluation is on
# prompts the model never saw. Here the data is *clean* (every answer right); chapter 09 uses the
# noisy variant.
#
# The loop is the pretraining loop of chapter 06 with `sft_loss` (the masked mean above) on
# `SFTBatchSampler` batches (seeded, every example once per epoch, right-padded with `<|end|>`).
# Before and after, `evaluate_tasks` decodes greedy replies (chapter 07's `model.generate` at
# temperature 0, stopping at `<|end|>`) and scores exact match; the end-marker rate says how often a
# reply was closed properly.

# %%
SFT_STEPS = 150 if SMALL else 1500
EVAL_PER_TASK = 5 if SMALL else 40
examples = make_sft_examples(4000, seed=0)                                  # clean: no noisy_tasks
rendered = render_sft_examples(template, [example["messages"] for example in examples])
eval_prompts = make_eval_prompts(EVAL_PER_TASK, seed=0)
heldout = [template.render([{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}])
           for t in eval_prompts]
print(f"{len(rendered)} training conversations, e.g. {examples[0]['messages']}")
print(f"{len(eval_prompts)} held-out prompts ({EVAL_PER_TASK} per task)")


def heldout_loss(model) -> float:
    """The SFT loss (masked mean) on the held-out conversations, teacher-forced, no gradients."""
    was_training = model.training
    model.eval()
    with mm.no_grad():
        value = sft_loss(model, sft_batch(heldout, model.config.block_size, template.end_id))[0].item()
    model.train(was_training)
    return value


def train_sft(model, param_groups, steps: int, lr: float, seed: int = 0):
    """AdamW on sft_loss with warmup + cosine and clipping; returns the loss per step."""
    sampler = SFTBatchSampler(rendered, batch_size=16, block_size=model.config.block_size,
                              pad_id=template.end_id, seed=seed)
    schedule = CosineSchedule(lr=lr, min_lr=lr / 10, warmup_steps=min(20, steps), total_steps=steps)
    optimizer = AdamW(param_groups, lr=schedule(0), betas=(0.9, 0.95))
    trained = [p for group in param_groups for p in group["params"]]
    model.train()
    losses = fit(optimizer, lambda step: sft_loss(model, sampler.next_batch())[0], steps, trained, schedule)
    model.eval()
    return losses


# a snapshot of the base (with its grown vocabulary), for LoRA later
base_state = {name: array.copy() for name, array in model.state_dict().items()}
before = evaluate_tasks(model, template, eval_prompts)
loss_before = heldout_loss(model)
started = time.perf_counter()
sft_losses = train_sft(model, decay_groups(model.named_parameters(), 0.1), SFT_STEPS, lr=2e-3)
sft_seconds = time.perf_counter() - started
after = evaluate_tasks(model, template, eval_prompts)
loss_after = heldout_loss(model)
print(f"SFT: {SFT_STEPS} steps in {sft_seconds:.1f} s; held-out SFT loss {loss_before:.3f} -> {loss_after:.3f}")
print(f"exact match {before['overall']:.3f} -> {after['overall']:.3f}; "
      f"replies ended by <|end|> {before['end_rate']:.3f} -> {after['end_rate']:.3f}")
assert loss_after < loss_before - 1.0
assert after["end_rate"] >= 0.5 and after["end_rate"] > before["end_rate"]

# %%
print(f"{'task':11s} {'prompt':48s} {'answer':18s} {'before SFT':22s} after SFT")
for index in range(0, len(eval_prompts), EVAL_PER_TASK):
    task = eval_prompts[index]
    print(f"{task.name:11s} {task.prompt[:48]:48s} {task.answer[:18]:18s} "
          f"{before['replies'][index][:20]!r:22s} {after['replies'][index]!r}")
print("\nexact match per task after SFT:", {name: round(after[name], 2) for name in after["mistake_rate"]})

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].plot(pretrain_losses, label="pretraining (LM loss)")
axes[0].plot(np.arange(len(sft_losses)) + len(pretrain_losses), sft_losses, label="SFT (masked mean)")
axes[0].set_xlabel("step")
axes[0].set_ylabel("cross-entropy (nats)")
axes[0].set_title("pretraining, then SFT")
axes[0].legend()
names = list(after["mistake_rate"])
axes[1].bar(np.arange(len(names)) - 0.2, [before[n] for n in names], 0.4, label="before SFT")
axes[1].bar(np.arange(len(names)) + 0.2, [after[n] for n in names], 0.4, label="after SFT")
axes[1].set_xticks(np.arange(len(names)), names, rotation=30)
axes[1].set_ylabel("held-out exact match")
axes[1].set_ylim(0, 1)
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the result.** SFT teaches the *form* first: replies become short and end with
# `<|end|>` (the end-marker rate) well before they are right. The content comes later and task by
# task; a 2-layer, 64-wide byte model finds some tasks much harder than others (exact copying of a
# word from the middle of the prompt, or two-digit arithmetic). The small size trains for seconds;
# run the full size (ten times the steps, 40 held-out prompts per task) and compare the per-task
# bars.

# %% [markdown]
# ## 4. LoRA
#
# **The idea** (Hu et al. 2021). Fine-tuning changes each weight matrix $W \in \mathbb{R}^{d_\text{out}
# \times d_\text{in}}$ by some $\Delta W$. LoRA restricts the change to rank $r \ll \min(d_\text{in},
# d_\text{out})$ and freezes $W$:
#
# $$W' = W + \frac{\alpha}{r} B A, \qquad A \in \mathbb{R}^{r \times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out} \times r},$$
#
# $$y = x W'^{\top} + b = x W^\top + b + \frac{\alpha}{r}\,(x A^\top) B^\top \qquad (x: (\dots, d_\text{in})).$$
#
# The second form is what runs: $x A^\top$ is (…, r), cheap, and $BA$ is never formed during
# training. **Parameters trained per matrix:** $r(d_\text{in} + d_\text{out})$ instead of
# $d_\text{in} d_\text{out}$. **Why $\alpha / r$:** with $A$'s entries of fixed size, the update
# $x A^\top B^\top$ sums $r$ terms; dividing by $r$ keeps its scale roughly independent of the rank,
# so the learning rate need not be retuned when $r$ changes.
#
# **Why $B$ starts at zero.** With $B = 0$, $\Delta W = 0$: the adapted model is *exactly* the base
# model at step 0, so fine-tuning starts from what pretraining learned. $A$ must not also be zero.
# Write $s = \alpha/r$, $G = \partial \mathcal{L} / \partial y$ (…, $d_\text{out}$) and $u = x A^\top$:
#
# $$\frac{\partial \mathcal{L}}{\partial B} = s\, G^\top u, \qquad \frac{\partial \mathcal{L}}{\partial A} = s\, (G B)^\top x .$$
#
# At $B = 0$: $\partial\mathcal{L}/\partial A = 0$ but $\partial\mathcal{L}/\partial B = s\, G^\top x A^\top \ne 0$
# when $A \ne 0$ — so $B$ moves first, and then $A$. Had both started at zero, both gradients would
# be zero forever. (minillm draws $A \sim U(-1/\sqrt{d_\text{in}}, 1/\sqrt{d_\text{in}})$ like a
# Linear's weight.)
#
# **Merging.** After training, $W \leftarrow W + s B A$ gives a plain Linear that computes the same
# function with no extra cost at inference (`merge_lora`).
#
# First the layer itself: the composed formula against `LoRALinear`, the gradient at $B = 0$, and a
# float64 gradcheck through the module's own forward (`functional_call` swaps its parameters for
# the gradcheck's inputs).

# %%
mm.manual_seed(1)
base_linear = Linear(12, 10, dtype=np.float64)
lora_layer = LoRALinear(base_linear, rank=3, alpha=6.0)
print(lora_layer)
print(f"W {lora_layer.weight.shape} (frozen: requires_grad={lora_layer.weight.requires_grad}), "
      f"A {lora_layer.lora_A.shape}, B {lora_layer.lora_B.shape}, scale alpha/r = {lora_layer.scale}")
x_small = mm.tensor(np.random.default_rng(2).normal(size=(4, 5, 12)))           # (B, T, d_in)

# step 0: B = 0, so the layer is its base Linear, exactly; A gets no gradient, B does
y0 = lora_layer(x_small)
assert np.array_equal(y0.data, base_linear(x_small).data)
(y0 * mm.tensor(np.random.default_rng(3).normal(size=y0.shape))).sum().backward()
assert np.all(lora_layer.lora_A.grad == 0) and np.abs(lora_layer.lora_B.grad).max() > 0
print("B = 0: output == base output; dL/dA = 0, dL/dB != 0")

# give B values (as after some training), then compare the composed formula and check gradients
lora_layer.lora_B.data = np.random.default_rng(4).normal(0, 0.1, size=lora_layer.lora_B.shape)
W, b, A, B_ = (p.data for p in (lora_layer.weight, lora_layer.bias, lora_layer.lora_A, lora_layer.lora_B))
composed = x_small.data @ W.T + b + lora_layer.scale * (x_small.data @ A.T) @ B_.T
assert np.allclose(lora_layer(x_small).data, composed, rtol=1e-12, atol=1e-12)
assert np.allclose(lora_layer.delta_weight(), lora_layer.scale * B_ @ A, rtol=1e-12, atol=1e-15)
assert np.allclose(x_small.data @ (W + lora_layer.delta_weight()).T + b, composed, rtol=1e-12, atol=1e-12)


def lora_forward(x, w, a, b_matrix):
    with functional_call(lora_layer, {"weight": w, "lora_A": a, "lora_B": b_matrix}):
        return lora_layer(x)


mm.gradcheck(lora_forward, [x_small.data, W, A, B_])
print("composed == LoRALinear == merged weight; gradcheck (x, W, A, B) in float64: passed")

# %% [markdown]
# Now the model. We restart from the base snapshot (pretrained, vocabulary grown, *before* SFT) and
# adapt every Linear inside the blocks (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `up_proj`,
# `down_proj`) at rank 4. Everything else is frozen, except the rows of the four new chat tokens
# in the embedding: pretraining never trained them, and adapters alone cannot give `<|user|>` and
# `<|assistant|>` distinct meanings (`train_rows_from` lets only those rows move). At step 0 the
# adapted model must give the base model's logits.

# %%
RANK, ALPHA = 4, 8.0
lora_model = GPT(model.config)
lora_model.load_state_dict(base_state)
lora_model.eval()
probe = np.asarray([template.render_prompt([{"role": "user", "content": eval_prompts[0].prompt}])])
with mm.no_grad():
    base_logits = lora_model(probe)[0].data
adapted_names = apply_lora(lora_model, rank=RANK, alpha=ALPHA)
row_numbers = train_rows_from(lora_model.tok_emb.weight, base_vocab)
with mm.no_grad():
    step0_logits = lora_model(probe)[0].data
assert np.array_equal(step0_logits, base_logits), "B = 0: the adapted model is the base model"
print(f"adapted {len(adapted_names)} layers, e.g. {adapted_names[:3]}; step-0 logits == base logits (exactly)")

full_counts = parameter_counts(model)
lora_counts = parameter_counts(lora_model, [(lora_model.tok_emb.weight, row_numbers)])
print(f"\n{'layer':28s} {'d_in x d_out':>12s} {'full':>7s} {'LoRA r=' + str(RANK):>9s}")
for name, module in list(lora_model.named_modules()):
    if isinstance(module, LoRALinear) and name.startswith("blocks.0"):
        full = module.in_features * module.out_features
        print(f"{name:28s} {module.in_features:>5d} x {module.out_features:<4d} {full:7,d} "
              f"{RANK * (module.in_features + module.out_features):9,d}")
print(f"\nwhole model: full fine-tuning trains {full_counts['trainable']:,} numbers; LoRA trains "
      f"{lora_counts['trainable']:,} ({100 * lora_counts['fraction']:.1f}%: adapters + {row_numbers} new embedding entries)")

ranks = [1, 2, 4, 8, 16, 32]
per_rank = [sum(r * (m.in_features + m.out_features) for m in lora_model.modules() if isinstance(m, LoRALinear))
            for r in ranks]
adapted_full = sum(m.in_features * m.out_features for m in lora_model.modules() if isinstance(m, LoRALinear))
assert per_rank[ranks.index(RANK)] == lora_counts["trainable"] - row_numbers

# %%
LORA_STEPS = 150 if SMALL else 1500
started = time.perf_counter()
lora_losses = train_sft(lora_model, lora_param_groups(lora_model, 0.0, row_trained=[lora_model.tok_emb.weight]),
                        LORA_STEPS, lr=5e-3)
lora_seconds = time.perf_counter() - started
lora_after = evaluate_tasks(lora_model, template, eval_prompts)
lora_loss = heldout_loss(lora_model)
assert np.array_equal(lora_model.tok_emb.weight.data[:base_vocab], base_state["tok_emb.weight"][:base_vocab]), \
    "the pretrained embedding rows stay frozen"
print(f"LoRA: {LORA_STEPS} steps in {lora_seconds:.1f} s; held-out SFT loss {loss_before:.3f} -> {lora_loss:.3f} "
      f"(full SFT: {loss_after:.3f}); exact match {lora_after['overall']:.3f}, end rate {lora_after['end_rate']:.3f}")
assert lora_loss < loss_before - 0.5

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].plot(sft_losses, label=f"full fine-tuning ({full_counts['trainable']:,} numbers)", alpha=0.8)
axes[0].plot(lora_losses, label=f"LoRA r={RANK} ({lora_counts['trainable']:,} numbers)", alpha=0.8)
axes[0].set_xlabel("SFT step")
axes[0].set_ylabel("masked-mean cross-entropy")
axes[0].set_title("the same SFT, two ways")
axes[0].legend()
axes[1].semilogy(ranks, per_rank, "o-", label="LoRA adapters r (d_in + d_out)")
axes[1].axhline(adapted_full, color="gray", linestyle="--", label="the same matrices, full: d_in d_out")
axes[1].set_xscale("log", base=2)
axes[1].set_xlabel("rank r")
axes[1].set_ylabel("trained numbers")
axes[1].set_title("trainable parameters of the adapted matrices")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the comparison.** LoRA rests on the observation that fine-tuning a *large* pretrained
# model needs only a low-rank change of its weights. This base model is tiny and knows little, so
# the tasks ask for new abilities more than a small adjustment, and rank-4 adapters need not match
# full fine-tuning here: compare the two held-out losses printed above (exercise 2 varies the
# rank). What LoRA buys in any case is memory: every block matrix is frozen, so only the adapters
# and the embedding (of which only the four new rows move) get gradients and AdamW moments.

# %% [markdown]
# **Merging.** `merge_lora` folds each adapter into its weight ($W \leftarrow W + \frac{\alpha}{r}BA$)
# and puts plain Linears back; the merged model has the base model's parameter names and shapes,
# and must give the adapted model's logits (to float32 rounding: $xW'^\top$ and
# $xW^\top + s(xA^\top)B^\top$ add the same numbers in a different order).

# %%
with mm.no_grad():
    adapted_logits = lora_model(probe)[0].data
merge_lora(lora_model)
with mm.no_grad():
    merged_logits = lora_model(probe)[0].data
difference = float(np.abs(merged_logits - adapted_logits).max())
print(f"merged: {sum(isinstance(m, LoRALinear) for m in lora_model.modules())} LoRA layers left, "
      f"{lora_model.num_parameters():,} parameters (base: {model.num_parameters():,}); "
      f"max |merged - adapted| logit = {difference:.2e}")
assert not any(isinstance(m, LoRALinear) for m in lora_model.modules())
assert sorted(lora_model.state_dict()) == sorted(base_state)
assert np.allclose(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
merged_after = evaluate_tasks(lora_model, template, eval_prompts)
assert merged_after["replies"] == lora_after["replies"], "the merged model answers as the adapted one did"
print("greedy replies of the merged model == those of the adapted model")

# %% [markdown]
# ## Checklist
#
# | knob | typical | what goes wrong when it is off |
# |---|---|---|
# | the loss mask | assistant content + its `<|end|>` | mask off (train on everything): the model learns to write the user's turns too and to continue past its reply; `<|end|>` left out of the mask: replies never stop (end-marker rate stays near 0) |
# | the mean over supervised tokens | $1/N$, $N$ = supervised targets | a mean over $B \cdot T$: the effective learning rate depends on prompt length and padding |
# | chat markers as special tokens | one id each, `encode_ordinary` for content | markers encoded as text: a user can forge turn boundaries; new ids without embedding rows: an index error, or (rows never trained) the model cannot tell the roles apart |
# | SFT learning rate | below pretraining's peak | too high: the pretrained knowledge is overwritten (held-out loss rises after a dip; the text degrades); too low: the format (ending with `<|end|>`) is never learned |
# | SFT steps / epochs | a few epochs at most | too many on small data: the training loss keeps falling while held-out exact match stalls or drops (memorised answers) |
# | LoRA rank r | 4–16 | too small: the loss plateaus above full fine-tuning's; larger r costs memory and rarely helps a narrow task |
# | LoRA α | ≈ 2r | the update is scaled by α/r: too large behaves like too high a learning rate (spikes), too small like too low |
# | LoRA learning rate | several times full fine-tuning's | the adapters start at zero and are few: full fine-tuning's rate learns slowly |
# | B = 0 at the start | always | a random B changes the model before training: step 0 no longer equals the base (checked above) |
# | new token rows | trained (only they) | frozen at their initial values: `<|user|>`/`<|assistant|>` stay nearly identical and the format is learned poorly |
#
# ## Exercises
#
# 1. **Train on everything.** Replace the mask by all-True (train on `x = ids[:-1]`, `y = ids[1:]`
#    without `-100`) and rerun the SFT cell. Compare the end-marker rate and the held-out loss
#    *on the reply tokens*. *Hint:* `sft_batch` takes `(ids, mask)`: pass `[True] * len(ids)`.
# 2. **Rank sweep.** Run the LoRA cell with r = 1, 4 and 16 (α = 2r) and plot the final held-out
#    loss against the number of trained numbers, with full fine-tuning as a reference point. Then
#    adapt only `q_proj` and `v_proj` (`apply_lora(..., targets=["q", "v"])`, the original paper's
#    choice): how much of the gain remains?
