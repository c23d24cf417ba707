# %% [markdown]
# # 09 · Preference alignment: DPO
#
# Supervised fine-tuning (chapter 08) copies the demonstrations, mistakes included. Preference
# alignment uses a different signal: for a prompt $x$, two replies, one preferred ($y_w$, "winner")
# to the other ($y_l$, "loser"). RLHF turns such pairs into a reward model and then runs
# reinforcement learning against it; **direct preference optimisation** (DPO) shows that the same
# objective can be optimised with one supervised-looking loss on the pairs, with no reward model
# and no sampling.
#
# In the blueprint this is the last training stage: pretraining → SFT → **preference alignment**
# → evaluation and deployment (chapter 10). This chapter
#
# 1. derives the DPO loss from the KL-regularised RLHF objective, checks the optimal policy on a
#    toy distribution, and shows why the loss is $\ln 2$ at step 0;
# 2. derives the gradient, builds the loss from primitives, compares it with
#    `minillm.posttrain.dpo_loss`, and gradchecks both in float64;
# 3. teaches a tiny model a mistake with SFT (three of four demonstrators give the wrong answer),
#    then removes it with DPO, and plots what happens to the probabilities of the right and
#    the wrong answer, with and without the NLL term that minillm's DPO adds.

# %%
import math
import os
import string
import time

import matplotlib.pyplot as plt
import numpy as np
from recipes import fit  # this folder: what chapters 07-10 share

import minillm as mm
from minillm import functional as F
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule
from minillm.posttrain import (
    CHAT_SPECIAL_TOKENS,
    DEFAULT_NOISE,
    ChatTemplate,
    DPOBatchSampler,
    DPOObjective,
    SFTBatchSampler,
    dpo_batch,
    dpo_loss,
    frozen_copy,
    generate_replies,
    make_preference_pairs,
    render_preference_pairs,
    render_sft_examples,
    sequence_logprobs,
    sequence_logprobs_composed,
    sft_loss,
)
from minillm.posttrain.dpo import all_pair_logprobs, pair_logprobs
from minillm.tokenizer import CharTokenizer

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
# These matrices are tiny: split over BLAS threads they wait on each other (badly so on a busy
# machine), so one thread is faster.
mm.host.set_blas_threads(1)
SEED = 0
mm.manual_seed(SEED)
rng = np.random.default_rng(SEED)
print("size:", "small" if SMALL else "full")

# %% [markdown]
# ## 1. From the RLHF objective to the DPO loss
#
# **The objective.** A policy $\pi$ (the model) answers prompts $x \sim \mathcal{D}$. A reward
# $r(x, y)$ scores replies. RLHF maximises the expected reward while staying close to a
# reference policy $\pi_\text{ref}$ (the SFT model), with the KL divergence as the leash and
# $\beta > 0$ its strength:
#
# $$\max_\pi\; \mathbb{E}_{x\sim\mathcal{D}}\Big[\,\mathbb{E}_{y\sim\pi(\cdot|x)}\big[r(x,y)\big]
#   - \beta\, \mathrm{KL}\big(\pi(\cdot|x)\,\|\,\pi_\text{ref}(\cdot|x)\big)\Big].$$
#
# **Its maximiser.** Fix $x$ and write the inner term as one sum over replies:
#
# $$J(\pi) = \sum_y \pi(y)\Big[r(y) - \beta \log\frac{\pi(y)}{\pi_\text{ref}(y)}\Big]
#          = -\beta \sum_y \pi(y) \log\frac{\pi(y)}{\pi_\text{ref}(y)\, e^{r(y)/\beta}}.$$
#
# Normalise the denominator with the partition function
# $Z(x) = \sum_y \pi_\text{ref}(y|x)\, e^{r(x,y)/\beta}$ and call the result
# $\pi^*(y|x) = \pi_\text{ref}(y|x)\, e^{r(x,y)/\beta} / Z(x)$, a probability distribution. Then
#
# $$J(\pi) = -\beta \sum_y \pi(y)\log\frac{\pi(y)}{\pi^*(y)} + \beta \log Z
#          = -\beta\, \mathrm{KL}(\pi\,\|\,\pi^*) + \beta \log Z .$$
#
# $Z$ does not depend on $\pi$ and $\mathrm{KL} \ge 0$ with equality only at $\pi = \pi^*$, so
# **the optimal policy is** $\pi^* \propto \pi_\text{ref}\, e^{r/\beta}$: the reference,
# re-weighted by the exponentiated reward. Small $\beta$ → chase the reward; large $\beta$ → stay
# at the reference.
#
# **The reward in terms of the policy.** Take logs and solve for $r$:
#
# $$r(x, y) = \beta \log\frac{\pi^*(y|x)}{\pi_\text{ref}(y|x)} + \beta \log Z(x).$$
#
# **Preferences.** The Bradley–Terry model says a human prefers $y_w$ to $y_l$ with probability
# $P(y_w \succ y_l \mid x) = \sigma\big(r(x,y_w) - r(x,y_l)\big)$, $\sigma(u) = 1/(1+e^{-u})$.
# Only a *difference* of rewards enters, so $\beta\log Z(x)$, the same for both replies of one
# prompt, **cancels**:
#
# $$P(y_w \succ y_l\mid x) = \sigma\Big(\beta \log\frac{\pi^*(y_w|x)}{\pi_\text{ref}(y_w|x)}
#      - \beta \log\frac{\pi^*(y_l|x)}{\pi_\text{ref}(y_l|x)}\Big).$$
#
# That is the whole trick: $Z$ sums over every possible reply and could never be computed, but it
# is not needed. Replace $\pi^*$ by the trainable $\pi_\theta$ and maximise the likelihood of the
# observed preferences. With the **implicit rewards**
# $\hat r_w = \beta(\log\pi_\theta(y_w|x) - \log\pi_\text{ref}(y_w|x))$,
# $\hat r_l = \beta(\log\pi_\theta(y_l|x) - \log\pi_\text{ref}(y_l|x))$ and the **margin**
# $m = \hat r_w - \hat r_l$:
#
# $$\boxed{\;\mathcal{L}_\text{DPO}(\theta) = -\,\mathbb{E}_{(x, y_w, y_l)}
#     \log\sigma\Big(\beta\big[(\log\pi_\theta(y_w|x) - \log\pi_\text{ref}(y_w|x))
#     - (\log\pi_\theta(y_l|x) - \log\pi_\text{ref}(y_l|x))\big]\Big)\;}$$
#
# where $\log\pi(y|x) = \sum_{t \in \text{reply}} \log \operatorname{softmax}(z_t)[y_t]$ sums over
# the reply's tokens only (the prompt is given, not generated).
#
# **Step 0.** Training starts from $\pi_\theta = \pi_\text{ref}$: every log-ratio is 0, $m = 0$,
# and $\mathcal{L} = -\log\sigma(0) = -\log\tfrac12 = \ln 2 \approx 0.693$, whatever the data. A first
# logged loss that is not $\ln 2$ means the reference is not a copy of the policy (or dropout is on).
#
# First a check of the maximiser on a toy problem: six candidate replies, a reference
# distribution, a reward. $\pi^*$ must beat every other distribution on $J$, and the implicit
# reward $\beta\log(\pi^*/\pi_\text{ref})$ must equal $r$ up to the constant $\beta \log Z$.

# %%
replies = ["right", "almost", "vague", "off-topic", "rude", "wrong"]
pi_ref = np.array([0.10, 0.15, 0.30, 0.20, 0.05, 0.20])
reward = np.array([2.0, 1.2, 0.3, -0.5, -2.0, -1.0])


def objective(pi, beta):
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref) for one prompt."""
    return float(pi @ reward - beta * np.sum(pi * np.log(pi / pi_ref)))


def optimal_policy(beta):
    """pi* = pi_ref exp(r / beta) / Z."""
    weights = pi_ref * np.exp(reward / beta)
    return weights / weights.sum(), weights.sum()


beta_toy = 0.5
pi_star, Z = optimal_policy(beta_toy)
best = objective(pi_star, beta_toy)
others = [objective(q, beta_toy) for q in rng.dirichlet(np.ones(6), size=2000)]
print(f"J(pi*) = {best:.4f};  best of 2000 random policies: {max(others):.4f};  beta log Z = {beta_toy * np.log(Z):.4f}")
assert best >= max(others) and abs(best - beta_toy * np.log(Z)) < 1e-12          # J(pi*) = beta log Z
implicit = beta_toy * np.log(pi_star / pi_ref)
assert np.allclose(implicit + beta_toy * np.log(Z), reward, atol=1e-12)           # r = beta log(pi*/pi_ref) + beta log Z
# Bradley-Terry from implicit rewards: Z cancels in every difference
for w, lose in [(0, 5), (1, 2), (3, 4)]:
    assert abs((implicit[w] - implicit[lose]) - (reward[w] - reward[lose])) < 1e-12

fig, ax = plt.subplots(figsize=(8, 3.2))
width = 0.18
ax.bar(np.arange(6) - 1.5 * width, pi_ref, width, label=r"$\pi_\mathrm{ref}$", color="gray")
for k, beta in enumerate([2.0, 0.5, 0.2]):
    ax.bar(np.arange(6) + (k - 0.5) * width, optimal_policy(beta)[0], width, label=rf"$\pi^*$, $\beta$={beta}")
ax.set_xticks(range(6), [f"{name}\nr={value:+.1f}" for name, value in zip(replies, reward)])
ax.set_ylabel("probability")
ax.set_title(r"the optimal policy $\pi^* \propto \pi_\mathrm{ref}\, e^{r/\beta}$: smaller $\beta$ chases the reward")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The loss and its gradient
#
# For a batch of $B$ pairs with sequence log-probs $\ell_w^{(b)} = \log\pi_\theta(y_w^{(b)}|x^{(b)})$,
# $\ell_l^{(b)}$ and the reference's $\ell_{w,\text{ref}}^{(b)}$, $\ell_{l,\text{ref}}^{(b)}$
# (constants: the reference is frozen), all of shape (B,):
#
# $$m_b = \beta\big[(\ell_w^{(b)} - \ell_{w,\text{ref}}^{(b)}) - (\ell_l^{(b)} - \ell_{l,\text{ref}}^{(b)})\big],
# \qquad \mathcal{L} = -\frac1B \sum_b \log\sigma(m_b).$$
#
# Since $\frac{d}{du}\log\sigma(u) = 1 - \sigma(u) = \sigma(-u)$:
#
# $$\frac{\partial\mathcal{L}}{\partial \ell_w^{(b)}} = -\frac{\beta}{B}\,\sigma(-m_b),\qquad
#   \frac{\partial\mathcal{L}}{\partial \ell_l^{(b)}} = +\frac{\beta}{B}\,\sigma(-m_b).$$
#
# One step down the chain, through $\ell = \sum_{t} \log\operatorname{softmax}(z_t)[y_t]$ over the
# reply positions $t$ (logits $z_t$ of shape (V,)): $\partial \ell / \partial z_t = e_{y_t} - p_t$ with
# $p_t = \operatorname{softmax}(z_t)$. So on the chosen reply the gradient is the SFT
# (cross-entropy) gradient scaled by $\beta\,\sigma(-m_b)$, and on the rejected reply the same with
# the opposite sign — "unlearning". The weight $\sigma(-m_b)$ is near 1 for pairs the implicit
# reward still orders wrongly and near 0 for pairs already ordered with a wide margin: DPO spends
# its gradient where the model disagrees with the preference.
#
# (minillm computes $-\log\sigma$ with the stable `F.logsigmoid`: $\log\sigma(u) = \min(u, 0) -
# \log(1 + e^{-|u|})$, which never overflows.) The composed version below uses only
# $\log$, $\exp$ and arithmetic; then `dpo_loss`, the library's; they must agree, the step-0
# loss must be $\ln 2$, and both must pass a float64 finite-difference gradcheck with a random
# upstream gradient.

# %%
def dpo_loss_composed(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """-mean log sigma(m) from primitives: -log sigma(m) = log(1 + exp(-m)) (fine for moderate m)."""
    margin = ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)) * beta       # (B,)
    return F.mean(F.log(F.exp(-margin) + 1.0))


B_pairs, beta = 6, 0.1
ref_c, ref_r = rng.normal(-8, 2, B_pairs), rng.normal(-8, 2, B_pairs)          # (B,) reference log-probs
pol_c = mm.tensor(ref_c.copy(), requires_grad=True)                             # policy = reference
pol_r = mm.tensor(ref_r.copy(), requires_grad=True)
loss0, stats0 = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
print(f"step 0: dpo_loss = {loss0.item():.12f}, ln 2 = {math.log(2):.12f}, margins {stats0['margin']}")
assert abs(loss0.item() - math.log(2)) < 1e-12

# away from step 0: composed vs library, values and gradients
pol_c = mm.tensor(ref_c + rng.normal(0, 3, B_pairs), requires_grad=True)
pol_r = mm.tensor(ref_r + rng.normal(0, 3, B_pairs), requires_grad=True)
lib, stats = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
lib.backward()
grads_lib = pol_c.grad.copy(), pol_r.grad.copy()
pol_c.grad = pol_r.grad = None
composed = dpo_loss_composed(pol_c, pol_r, mm.tensor(ref_c), mm.tensor(ref_r), beta)
composed.backward()
margin = stats["margin"]
sigma_neg = 1 / (1 + np.exp(margin))                                            # sigma(-m)
by_hand = -beta * sigma_neg / B_pairs, beta * sigma_neg / B_pairs               # the derived gradient
print(f"loss: library {lib.item():.15f}  composed {composed.item():.15f}")
print("dL/dl_w  library :", np.round(grads_lib[0], 6))
print("dL/dl_w  by hand :", np.round(by_hand[0], 6))
assert abs(lib.item() - composed.item()) < 1e-12
for g_lib, g_comp, g_hand in zip(grads_lib, (pol_c.grad, pol_r.grad), by_hand):
    assert np.allclose(g_lib, g_comp, rtol=1e-10, atol=1e-15) and np.allclose(g_lib, g_hand, rtol=1e-10, atol=1e-15)

# float64 finite-difference gradchecks (random upstream gradient inside mm.gradcheck)
assert mm.gradcheck(lambda a, b: dpo_loss(a, b, ref_c, ref_r, beta)[0], [pol_c.data, pol_r.data])
assert mm.gradcheck(lambda a, b: dpo_loss_composed(a, b, mm.tensor(ref_c), mm.tensor(ref_r), beta), [pol_c.data, pol_r.data])
print("gradchecks passed: dpo_loss and its composed twin")

# %% [markdown]
# The sequence log-prob $\log\pi(y|x)$ comes from the logits (B, T, V) and targets (B, T) that
# hold the reply's next tokens and $-100$ everywhere else. minillm has a fused version
# (`sequence_logprobs`: the fused cross-entropy with `reduction="none"`, summed over T) and a
# composed twin (`log_softmax` and a gather). Below: both against NumPy by hand, and the whole
# chain logits → sequence log-probs → DPO loss gradchecked in float64.

# %%
Bq, Tq, Vq = 3, 7, 11
logits_np = rng.normal(size=(2 * Bq, Tq, Vq))                                    # (2B, T, V): chosen rows, then rejected
targets = rng.integers(0, Vq, size=(2 * Bq, Tq))                                 # (2B, T)
for row, start in enumerate([3, 4, 2, 5, 3, 1]):
    targets[row, :start] = -100                                                  # prompt positions: not scored
targets[1, -1] = -100                                                            # a shorter reply: padding
logp = logits_np - logits_np.max(-1, keepdims=True)
logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))                        # log softmax, (2B, T, V)
rows, cols = np.nonzero(targets != -100)
by_hand_seq = np.zeros(2 * Bq)
np.add.at(by_hand_seq, rows, logp[rows, cols, targets[rows, cols]])
fused = sequence_logprobs(mm.tensor(logits_np), targets).data
twin = sequence_logprobs_composed(mm.tensor(logits_np), targets).data
print("log pi(y|x) by hand:", np.round(by_hand_seq, 6))
assert np.allclose(fused, by_hand_seq, rtol=1e-12) and np.allclose(twin, by_hand_seq, rtol=1e-12)

ref_seq = by_hand_seq + rng.normal(0, 0.5, 2 * Bq)                                # a reference that differs a little


def chain(z):
    seq = sequence_logprobs(z, targets)                                          # (2B,)
    return dpo_loss(seq[:Bq], seq[Bq:], ref_seq[:Bq], ref_seq[Bq:], beta=0.5)[0]


assert mm.gradcheck(chain, [logits_np])
print("gradcheck passed: logits -> sequence_logprobs -> dpo_loss")

# %% [markdown]
# A look at the loss and its gradient weight as functions of the margin: the loss is $\ln 2$ at
# $m=0$ and falls like $e^{-m}$ for a large margin; the weight $\sigma(-m)$ halves at $m = 0$.

# %%
m_grid = np.linspace(-6, 6, 241)
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(m_grid, np.logaddexp(0, -m_grid), label=r"loss $-\log\sigma(m)$")
ax.plot(m_grid, 1 / (1 + np.exp(m_grid)), label=r"gradient weight $\sigma(-m)$")
ax.axhline(math.log(2), color="gray", lw=0.8, ls=":")
ax.annotate(r"$\ln 2$ at step 0", (0, math.log(2)), (1.0, 1.6), arrowprops=dict(arrowstyle="->"))
ax.set_xlabel(r"margin $m = \hat r_w - \hat r_l$")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. A taught mistake, then DPO
#
# **The data.** minillm's post-training tasks (`minillm.posttrain.tasks`) come with a correct
# answer and one systematic, plausible mistake each. The three tasks of `DEFAULT_NOISE`, the ones
# `examples/finetune_sft.py` teaches wrongly on purpose:
# `larger` (mistake: the smaller number), `word_count` (one too many) and `last_word` (the
# second-to-last word). We take a handful of prompts and let four demonstrators answer each one,
# **three of them with the mistake**. SFT imitates them, so it should learn
# $P(\text{mistake}) \approx 3/4$, $P(\text{right}) \approx 1/4$ for each prompt — and greedy
# decoding then gives the mistake.
#
# **The model.** Characters as tokens (the printable ASCII set plus the four chat markers), a
# 2-layer GPT of width 64, trained from scratch in seconds. At this size and budget it memorises
# its prompts rather than learning the tasks: the numbers below are about *these* prompts.
# `examples/align_dpo.py` runs the same experiment at a larger scale with held-out prompts.

# %%
N_PROMPTS = 12 if SMALL else 24
SFT_STEPS = 150 if SMALL else 300
DPO_STEPS = 30 if SMALL else 80
BLOCK = 64

tokenizer = CharTokenizer(list(string.printable[:95]), special_tokens=list(CHAT_SPECIAL_TOKENS))
template = ChatTemplate(tokenizer)


def fits(pair):
    ids, _ = template.render([{"role": "user", "content": pair.prompt},
                              {"role": "assistant", "content": max(pair.chosen, pair.rejected, key=len)}])
    return len(ids) <= BLOCK + 1


pairs = [p for p in make_preference_pairs(4 * N_PROMPTS, seed=SEED, tasks=list(DEFAULT_NOISE)) if fits(p)][:N_PROMPTS]
conversations = [[{"role": "user", "content": p.prompt}, {"role": "assistant", "content": reply}]
                 for p in pairs for reply in (p.rejected, p.rejected, p.rejected, p.chosen)]
print(f"{len(pairs)} prompts, {len(conversations)} demonstrations (3 wrong + 1 right each)")
for p in pairs[:4]:
    print(f"  {p.meta['task']:<10} {p.prompt!r:<50} right {p.chosen!r:<8} taught {p.rejected!r}")
ids, mask = template.render(conversations[0])
print("\nrendered, [[trained on]]:", template.show(ids, mask))

# %% [markdown]
# **SFT** with minillm's `sft_loss` (mean cross-entropy over the reply tokens and their
# `<|end|>`; chapter 08), AdamW, warmup + cosine, clipping.

# %%
mm.manual_seed(SEED)
config = GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64)
model = GPT(config)
print(f"{model.num_parameters():,} parameters")
sft_batches = SFTBatchSampler(render_sft_examples(template, conversations), batch_size=16, block_size=BLOCK,
                              pad_id=template.end_id, seed=SEED)
schedule = CosineSchedule(3e-3, 3e-4, warmup_steps=10, total_steps=SFT_STEPS)
optimizer = AdamW(model.parameters(), lr=schedule(0), weight_decay=0.0)
started = time.perf_counter()
sft_curve = fit(optimizer, lambda step: sft_loss(model, sft_batches.next_batch())[0], SFT_STEPS,
                model.parameters(), schedule)
print(f"SFT: {SFT_STEPS} steps in {time.perf_counter() - started:.1f} s, loss {sft_curve[0]:.2f} -> {sft_curve[-1]:.3f}")
# The floor of this loss is not 0: 3 of 4 demonstrations disagree with the 4th.

rendered_pairs = render_preference_pairs(template, pairs)


def right_wrong_logprobs(net):
    """(log pi(right|x), log pi(wrong|x)) per prompt, each (N,), in eval mode."""
    chosen, rejected = all_pair_logprobs(net, rendered_pairs, BLOCK, template.end_id)
    return np.array(chosen), np.array(rejected)


def greedy_report(net, label):
    texts = [reply.text for reply in generate_replies(net, template, [p.prompt for p in pairs])]
    right = np.mean([t == p.chosen for t, p in zip(texts, pairs)])
    wrong = np.mean([t == p.rejected for t, p in zip(texts, pairs)])
    print(f"{label:<18} greedy replies: right {right:.2f}, the taught mistake {wrong:.2f};  e.g. {texts[:4]}")
    return right, wrong


sft_right, sft_wrong = right_wrong_logprobs(model)
print(f"after SFT: mean P(right) {np.exp(sft_right).mean():.3f}, mean P(mistake) {np.exp(sft_wrong).mean():.3f}")
greedy_sft = greedy_report(model, "after SFT")
assert np.exp(sft_wrong).mean() > 2 * np.exp(sft_right).mean(), "SFT should have learned the majority's mistake"

# %% [markdown]
# **DPO.** Pairs: the same prompts, chosen = the right answer, rejected = the taught mistake. The
# reference is a frozen copy of the SFT model (`frozen_copy`); `DPOObjective` computes both
# models' sequence log-probs in one (2B, T) forward each and returns the loss and the logged
# diagnostics. Shape walk-through of one batch first.

# %%
walk = dpo_batch(rendered_pairs[:4], BLOCK, template.end_id)
print({key: value.shape for key, value in walk.items()}, "(B, T) each; y is -100 off the reply")
with mm.no_grad():
    stacked = np.concatenate([walk["chosen_x"], walk["rejected_x"]])
    logits_walk, _ = model(stacked)
    chosen_lp, rejected_lp = pair_logprobs(model, walk)
print(f"stacked x {stacked.shape} -> logits {logits_walk.shape} (2B, T, V) -> sequence log-probs "
      f"{chosen_lp.shape} + {rejected_lp.shape}")
print("reply tokens scored per chosen row:", (walk["chosen_y"] != -100).sum(1), "(content + <|end|>)")

# %% [markdown]
# Plain DPO only asks for a wider margin, and a margin widens just as well when *both* log-probs
# fall, the rejected one faster. On small data that is what tends to happen, and the right
# answer's probability can end lower than it started. minillm's `DPOObjective` therefore has an
# optional NLL term on the chosen replies (as in RPO, Pang et al. 2024):
# $\mathcal{L} = \mathcal{L}_\text{DPO} + \alpha\cdot\frac{1}{N_w}\sum_{\text{chosen tokens}} -\log\pi_\theta(y_t|\dots)$.
# We run both, $\alpha = 0$ (plain DPO) and $\alpha = 1$ (`examples/align_dpo.py`'s default),
# from the same SFT model, $\beta = 0.1$.

# %%
sft_state = {name: array.copy() for name, array in model.state_dict().items()}
BETA = 0.1


def run_dpo_loop(nll_alpha):
    policy = GPT(config)
    policy.load_state_dict({name: array.copy() for name, array in sft_state.items()})
    reference = frozen_copy(policy)
    objective = DPOObjective(reference, beta=BETA, nll_alpha=nll_alpha)
    batches = DPOBatchSampler(rendered_pairs, batch_size=len(rendered_pairs), block_size=BLOCK,
                              pad_id=template.end_id, seed=SEED)
    opt = AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    history = []

    def dpo_step(step):
        loss, metrics = objective(policy, batches.next_batch())
        if step == 0:
            print(f"alpha={nll_alpha}: first dpo_loss {metrics['dpo_loss']:.6f} (ln 2 = {math.log(2):.6f})")
            assert abs(metrics["dpo_loss"] - math.log(2)) < 1e-5
        history.append(metrics)
        return loss

    fit(opt, dpo_step, DPO_STEPS, policy.parameters())          # no schedule: a constant rate
    return policy, history


mm.manual_seed(SEED)
started = time.perf_counter()
policies, histories = {}, {}
for alpha in (0.0, 1.0):
    policies[alpha], histories[alpha] = run_dpo_loop(alpha)
print(f"DPO: 2 runs x {DPO_STEPS} steps in {time.perf_counter() - started:.1f} s")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for alpha, style in ((0.0, "--"), (1.0, "-")):
    h = histories[alpha]
    axes[0].plot([m["dpo_loss"] for m in h], style, label=rf"$\alpha$={alpha:g}")
    axes[1].plot([m["reward_margin"] for m in h], style, label=rf"margin, $\alpha$={alpha:g}")
    axes[1].plot([m["reward_accuracy"] for m in h], style, alpha=0.5, label=rf"reward accuracy, $\alpha$={alpha:g}")
    axes[2].plot([m["chosen_logp"] for m in h], style, color="tab:green", label=rf"right (chosen), $\alpha$={alpha:g}")
    axes[2].plot([m["rejected_logp"] for m in h], style, color="tab:red", label=rf"mistake (rejected), $\alpha$={alpha:g}")
axes[0].axhline(math.log(2), color="gray", lw=0.8, ls=":")
axes[0].set_title("DPO loss (starts at ln 2)")
axes[1].set_title("mean margin and reward accuracy")
axes[2].set_title(r"policy $\log\pi(y|x)$, batch mean")
for ax in axes:
    ax.set_xlabel("DPO step")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# Before and after, prompt by prompt: the probability of the right answer and of the taught
# mistake (sequence probabilities $e^{\log\pi(y|x)}$, reply and `<|end|>` included), then greedy
# replies and the reward accuracy (share of pairs with $\hat r_w > \hat r_l$) on these pairs.

# %%
results = {"after SFT": (sft_right, sft_wrong)}
for alpha in (0.0, 1.0):
    results[f"DPO alpha={alpha:g}"] = right_wrong_logprobs(policies[alpha])

fig, axes = plt.subplots(1, 2, figsize=(13, 3.4), sharey=True)
x_pos = np.arange(len(pairs))
for k, (label, (lp_right, lp_wrong)) in enumerate(results.items()):
    axes[0].bar(x_pos + (k - 1) * 0.27, np.exp(lp_right), 0.27, label=label)
    axes[1].bar(x_pos + (k - 1) * 0.27, np.exp(lp_wrong), 0.27, label=label)
axes[0].set_title("P(right answer | prompt)")
axes[1].set_title("P(taught mistake | prompt)")
for ax in axes:
    ax.set_xticks(x_pos, [p.meta["task"][:6] for p in pairs], rotation=60, fontsize=7)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

print(f"{'model':<16} {'mean P(right)':>13} {'mean P(mistake)':>15} {'reward acc':>10} {'mean margin':>11}")
for label, (lp_right, lp_wrong) in results.items():
    margins = BETA * ((lp_right - sft_right) - (lp_wrong - sft_wrong))        # implicit rewards vs the SFT reference
    print(f"{label:<16} {np.exp(lp_right).mean():>13.3f} {np.exp(lp_wrong).mean():>15.3f} "
          f"{(margins > 0).mean():>10.2f} {margins.mean():>11.3f}")
greedy_after = {alpha: greedy_report(policies[alpha], f"after DPO a={alpha:g}") for alpha in (0.0, 1.0)}

after_right, after_wrong = results["DPO alpha=1"]
assert (BETA * ((after_right - sft_right) - (after_wrong - sft_wrong)) > 0).all(), "every pair should be ordered right"
assert np.exp(after_right).mean() > np.exp(sft_right).mean() > np.exp(after_wrong).mean()
assert greedy_after[1.0][0] > greedy_sft[0] and greedy_after[1.0][1] < greedy_sft[1]

# %% [markdown]
# What to look for in the table and plots: the reward accuracy and the fall of the taught
# mistake's probability, in both runs; and the right answer's probability, which is where the two
# runs part. Plain DPO ($\alpha=0$) can widen the margin by pushing the right answer down as well
# (watch its green dashed curve), and then greedy decoding gives the right answer for few prompts;
# with the NLL term the right answer's probability rises and greedy decoding switches to it (the
# asserts above check this for $\alpha = 1$). The reward accuracy is what DPO optimises; what a
# user sees is the greedy reply.
#
# ## Checklist
#
# | hyperparameter | typical | when it is off |
# |---|---|---|
# | $\beta$ (KL strength) | 0.1 (0.01–0.5) | too small: the policy drifts far from the reference, log-probs of *both* replies sink, outputs degrade (repetition, no `<|end|>`); too large: margins stay near 0, loss stays near $\ln 2$, nothing changes |
# | learning rate | well below pretraining's (`examples/align_dpo.py`: 2e-4 at its scale; billion-parameter models: around 1e-6) | too high: the chosen log-prob collapses in a few steps, reward accuracy hits 1 while generations get worse |
# | NLL weight $\alpha$ | 0 (plain) or ~1 (RPO) | 0 on small/narrow data: the right answer's probability falls with the wrong one's, greedy accuracy drops |
# | reference model | the exact SFT weights, eval mode | first logged loss $\neq \ln 2$: the reference is a different model, or dropout is on |
# | pair quality | chosen really better | noisy labels put a ceiling on reward accuracy; identical chosen/rejected give zero gradient |
# | steps / epochs | about one epoch | many epochs over few pairs: margins grow without bound (the loss never stops rewarding them), overfitting |
#
# Things to log every step: `dpo_loss` (starts at $\ln 2$), `reward_accuracy`, `reward_margin`,
# and the chosen and rejected log-probs separately — a falling chosen log-prob is the early warning.
#
# ## Exercises
#
# 1. **$\beta$.** Rerun the DPO cell with $\beta \in \{0.01, 1.0\}$ (α = 0). Plot the chosen and
#    rejected log-probs. *Hint:* the gradient weight is $\beta\sigma(-m)$ and $m$ is $\beta$ times the
#    log-ratio gap: how many nats of gap does it take to reach $m = 3$ at each $\beta$?
# 2. **IPO instead of DPO.** Replace $-\log\sigma(m)$ by the squared loss
#    $(m/\beta - 1/(2\beta))^2$ (Azar et al. 2023), composed from `F` ops, and gradcheck it.
#    *Hint:* unlike $-\log\sigma$ it has a minimum at a finite margin; check whether the right
#    answer's log-prob still falls with α = 0.
