"""DPO: logsigmoid, sequence log-probs, the loss (gradcheck), step 0, one step, and the run."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm.functional import logsigmoid, logsigmoid_composed
from minillm.nn import GPT, GPTConfig
from minillm.optim import SGD
from minillm.posttrain import ChatTemplate, dpo_batch, render_preference_pairs
from minillm.posttrain.dpo import (
    DPOObjective,
    dpo_loss,
    frozen_copy,
    pair_logprobs,
    run_dpo,
    sequence_logprobs,
    sequence_logprobs_composed,
)
from minillm.posttrain.sft import run_sft
from minillm.posttrain.stage import DPOConfig
from minillm.train.checkpoint import load_model
from tests.posttrain.test_sft import make_pretrained, small_sft_config

RNG = np.random.Generator(np.random.PCG64(11))


# ------------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------------

def test_logsigmoid_matches_the_formula_and_its_twin():
    x = np.linspace(-20, 20, 41)
    expected = -np.log1p(np.exp(-x))
    fused = logsigmoid(mm.tensor(x)).data
    np.testing.assert_allclose(fused, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logsigmoid_composed(mm.tensor(x)).data, expected, rtol=1e-12, atol=1e-12)
    assert logsigmoid(mm.tensor(np.float32([1.0]))).dtype == np.float32


def test_logsigmoid_is_stable_at_extreme_inputs():
    x = mm.tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]), requires_grad=True)
    # no overflow, 0/0 or log(0) anywhere, forward or backward (underflow to 0 is the right answer)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y = logsigmoid(x)
        y.sum().backward()
    np.testing.assert_allclose(y.data, [-1000.0, -50.0, -math.log(2), -math.exp(-50), 0.0], rtol=1e-12)
    np.testing.assert_allclose(x.grad, [1.0, 1.0, 0.5, math.exp(-50), 0.0], rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("op", [logsigmoid, logsigmoid_composed])
def test_logsigmoid_passes_gradcheck(op):
    assert mm.gradcheck(op, [RNG.standard_normal((3, 4)) * 4])


def _logits_and_targets(b=3, t=5, v=7, seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    logits = rng.standard_normal((b, t, v))
    targets = rng.integers(0, v, (b, t))
    targets[:, :2] = -100                       # a prompt: not scored
    targets[1, 4] = -100                        # padding
    return logits, targets


def test_sequence_logprobs_sum_the_reply_tokens_and_match_the_twin():
    logits, targets = _logits_and_targets()
    got = sequence_logprobs(mm.tensor(logits), targets).data
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [sum(logp[b, t, targets[b, t]] for t in range(5) if targets[b, t] != -100) for b in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(sequence_logprobs_composed(mm.tensor(logits), targets).data, expected, rtol=1e-10)


@pytest.mark.parametrize("op", [sequence_logprobs, sequence_logprobs_composed])
def test_sequence_logprobs_pass_gradcheck(op):
    logits, targets = _logits_and_targets(seed=1)
    assert mm.gradcheck(lambda z: op(z, targets), [logits])


@pytest.mark.parametrize("nll_alpha", [0.0, 0.7])
def test_the_dpo_loss_passes_gradcheck_through_the_sequence_log_probs(nll_alpha):
    chosen_logits, chosen_targets = _logits_and_targets(seed=2)
    rejected_logits, rejected_targets = _logits_and_targets(seed=3)
    ref_chosen, ref_rejected = RNG.standard_normal(3) - 8, RNG.standard_normal(3) - 8
    n_chosen = int((chosen_targets != -100).sum())

    def fn(lc, lr):
        pc, pr = sequence_logprobs(lc, chosen_targets), sequence_logprobs(lr, rejected_targets)
        loss, _ = dpo_loss(pc, pr, ref_chosen, ref_rejected, beta=0.5)
        return loss + (-F.sum(pc) * (1.0 / n_chosen)) * nll_alpha

    assert mm.gradcheck(fn, [chosen_logits, rejected_logits])


def test_dpo_loss_values_follow_the_formula():
    pc, pr = mm.tensor(np.array([-3.0, -5.0])), mm.tensor(np.array([-4.0, -2.0]))
    rc, rr = np.array([-3.5, -4.0]), np.array([-3.0, -3.0])
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.2)
    margin = 0.2 * ((pc.data - rc) - (pr.data - rr))
    np.testing.assert_allclose(stats["margin"], margin)
    assert loss.item() == pytest.approx(np.mean(np.log1p(np.exp(-margin))))
    with pytest.raises(ValueError, match=r"beta=0; expected a number > 0"):
        dpo_loss(pc, pr, rc, rr, beta=0)


# ------------------------------------------------------------------------------------------------
# the objective on a model
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def policy_and_batch(char_chat):
    template = ChatTemplate(char_chat)
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=char_chat.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    pairs = [("abc", "xyz", "xy"), ("ba", "c", "cc"), ("zz z", "a b", "b a")]
    from minillm.posttrain import PreferencePair
    rendered = render_preference_pairs(template, [PreferencePair(*p) for p in pairs])
    return model, dpo_batch(rendered, block_size=32, pad_id=template.end_id)


def test_at_step_zero_the_loss_is_ln2_and_the_margin_zero(policy_and_batch):
    model, batch = policy_and_batch
    objective = DPOObjective(frozen_copy(model), beta=0.1, nll_alpha=0.0)
    loss, metrics = objective(model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6) and metrics["reward_accuracy"] == 0.0
    assert metrics["chosen_logp"] < 0 and metrics["rejected_logp"] < 0
    assert set(metrics) == {"dpo_loss", "nll", "reward_margin", "reward_accuracy", "chosen_reward",
                            "rejected_reward", "chosen_logp", "rejected_logp"}


def test_one_step_moves_the_margin_the_right_way(policy_and_batch):
    model, batch = policy_and_batch
    objective = DPOObjective(frozen_copy(model), beta=0.1)
    optimizer = SGD(model.parameters(), lr=0.5)
    loss, _ = objective(model, batch)
    loss.backward()
    optimizer.step()
    after, metrics = objective(model, batch)
    assert metrics["reward_margin"] > 1e-4 and after.item() < math.log(2)
    assert metrics["reward_accuracy"] == 1.0


def test_the_reference_is_a_frozen_independent_copy(policy_and_batch):
    model, batch = policy_and_batch
    reference = frozen_copy(model)
    assert all(not p.requires_grad for p in reference.parameters()) and not reference.training
    before = pair_logprobs(reference, batch)[0].data.copy()
    for p in model.parameters():
        p.data = p.data + 0.1
    np.testing.assert_array_equal(pair_logprobs(reference, batch)[0].data, before)


def test_the_nll_term_is_the_mean_chosen_token_nll(policy_and_batch):
    model, batch = policy_and_batch
    reference = frozen_copy(model)
    plain, metrics = DPOObjective(reference, beta=0.1, nll_alpha=0.0)(model, batch)
    with_nll, _ = DPOObjective(reference, beta=0.1, nll_alpha=2.0)(model, batch)
    chosen, _ = pair_logprobs(model, batch)
    n = int((batch["chosen_y"] != -100).sum())
    assert metrics["nll"] == pytest.approx(-chosen.data.sum() / n, rel=1e-5)
    assert with_nll.item() == pytest.approx(plain.item() + 2.0 * metrics["nll"], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo_start")
    checkpoint = make_pretrained(tmp / "pre.safetensors")
    summary = run_sft(small_sft_config(tmp, checkpoint, eval_per_task=0, max_steps=2), log=lambda m: None)
    return summary["model"]


def small_dpo_config(tmp_path, checkpoint, **overrides) -> DPOConfig:
    values = dict(checkpoint=checkpoint, out_dir=os.fspath(tmp_path / "dpo"), max_steps=3, lr=1e-3, warmup_steps=1,
                  batch_size=4, eval_interval=3, log_interval=1, eval_per_task=1, eval_pairs=8, n_sft=16, n_dpo=32,
                  max_new_tokens=3, progress=False)
    values.update(overrides)
    return DPOConfig.create(values)


def test_dpo_run_logs_the_preference_metrics_and_saves_a_loadable_model(sft_model, tmp_path):
    cfg = small_dpo_config(tmp_path, sft_model)
    summary = run_dpo(cfg, log=lambda m: None)
    records = [json.loads(line) for line in open(os.path.join(cfg.loop.out_dir, "metrics.jsonl"), encoding="utf-8")]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert train[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)       # policy = reference at step 0
    for key in ("reward_margin", "reward_accuracy", "chosen_logp", "rejected_logp", "nll"):
        assert all(math.isfinite(r[key]) for r in train), key
    assert summary["before"]["heldout_reward_accuracy"] == 0.0                 # margins are exactly 0 before
    assert {"heldout_reward_accuracy", "heldout_prefers_chosen", "exact_match", "end_rate"} <= set(summary["after"])
    model, tokenizer, checkpoint = load_model(summary["model"])
    assert checkpoint.extra["stage"] == "dpo" and model.config.vocab_size == tokenizer.vocab_size


def test_dpo_with_lora_and_resume(sft_model, tmp_path):
    straight = run_dpo(small_dpo_config(tmp_path / "a", sft_model, lora_rank=2, eval_per_task=0, eval_pairs=0),
                       log=lambda m: None)
    assert straight["parameters"]["fraction"] < 0.5 and os.path.exists(straight["adapters"])
    paused = run_dpo(small_dpo_config(tmp_path / "b", sft_model, lora_rank=2, eval_per_task=0, eval_pairs=0),
                     log=lambda m: None, stop_at=1)
    resumed = run_dpo(small_dpo_config(tmp_path / "b", sft_model, lora_rank=2, eval_per_task=0, eval_pairs=0,
                                       resume=paused["checkpoint"]), log=lambda m: None)
    a, _, _ = load_model(straight["model"])
    b, _, _ = load_model(resumed["model"])
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)


def test_bad_dpo_options_name_the_option(sft_model, tmp_path):
    with pytest.raises(ValueError, match=r"dpo.beta=-1.0 is out of range; expected a value > 0"):
        run_dpo(small_dpo_config(tmp_path, sft_model, beta=-1.0))
    with pytest.raises(ValueError, match=r"dpo.nll_alpha=-0.5 is out of range; expected a value >= 0"):
        run_dpo(small_dpo_config(tmp_path, sft_model, nll_alpha=-0.5))


def test_sft_lora_and_dpo_steps_run_on_the_gpu_path(gpu_device, policy_and_batch):
    """The CuPy-like emulation refuses silent host/device mixing: every array of a step must be on the device."""
    from minillm.backend import to_device
    from minillm.nn import resize_token_embeddings
    from minillm.optim import AdamW
    from minillm.posttrain.lora import apply_lora, lora_param_groups, train_rows_from
    from minillm.posttrain.sft import sft_loss

    model, batch = policy_and_batch
    model.to(gpu_device)
    batch = {key: to_device(value, gpu_device) for key, value in batch.items()}
    reference = frozen_copy(model)
    assert reference.device == gpu_device
    loss, metrics = DPOObjective(reference, beta=0.1, nll_alpha=1.0)(model, batch)
    loss.backward()
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)

    resize_token_embeddings(model, model.config.vocab_size + 2)
    apply_lora(model, rank=2)
    train_rows_from(model.tok_emb.weight, model.config.vocab_size - 2)
    optimizer = AdamW(lora_param_groups(model, 0.0, row_trained=[model.tok_emb.weight]), lr=1e-3)
    loss, _ = sft_loss(model, (batch["chosen_x"], batch["chosen_y"]))
    loss.backward()
    optimizer.step()
    assert model.blocks[0].attn.q_proj.lora_B.device == gpu_device
