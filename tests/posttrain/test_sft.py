"""SFT: vocabulary growth, the loss over supervised tokens, greedy decoding, and the run end to end."""
from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm.nn import GPT, GPTConfig, Module, resize_token_embeddings
from minillm.posttrain import CHAT_SPECIAL_TOKENS, ChatTemplate, ensure_chat_tokens
from minillm.posttrain.evaluate import evaluate_tasks, generate_replies, reply_budgets
from minillm.posttrain.sft import run_sft, sft_loss
from minillm.posttrain.stage import SFTConfig
from minillm.posttrain.tasks import Task
from minillm.tokenizer import BPETokenizer
from minillm.train.checkpoint import load_checkpoint, load_model, save_checkpoint

TINY = dict(block_size=96, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


def tiny_tokenizer() -> BPETokenizer:
    """Byte-level BPE (any text encodes) WITHOUT the chat markers, like a pretraining tokenizer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return BPETokenizer.train("hello world " * 50, vocab_size=260, special_tokens=["<|endoftext|>"])


def make_pretrained(path, preset: str = "gpt2", seed: int = 0) -> str:
    """A tiny 'pretrained' checkpoint (random weights) with its tokenizer, as minillm train writes."""
    mm.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    extra = {} if preset == "gpt2" else {"n_kv_head": 1}
    model = GPT(make(vocab_size=tokenizer.vocab_size, **TINY, **extra))
    save_checkpoint(path, model=model, step=0, tokenizer=tokenizer)
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------
# resize_token_embeddings
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["gpt2", "llama"])     # tied head / untied head
def test_resize_keeps_old_rows_and_old_logits_and_updates_the_config(preset):
    mm.manual_seed(0)
    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    model = GPT(make(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    idx = np.array([[1, 5, 7, 49]])
    before, _ = model(idx)
    old_embedding = model.tok_emb.weight.data.copy()
    resize_token_embeddings(model, 54)
    assert model.config.vocab_size == 54 and model.tok_emb.weight.shape == (54, 16)
    assert model.tok_emb.num_embeddings == 54
    np.testing.assert_array_equal(model.tok_emb.weight.data[:50], old_embedding)
    if preset == "llama":
        assert model.lm_head.weight.shape == (54, 16) and model.lm_head.out_features == 54
    after, _ = model(np.array([[1, 5, 7, 49]]))
    assert after.shape == (1, 4, 54)
    np.testing.assert_allclose(after.data[..., :50], before.data, rtol=1e-6, atol=1e-6)
    # the new rows sit near the mean row, distinct from each other (the markers must differ as inputs)
    new = model.tok_emb.weight.data[50:]
    mean = old_embedding.mean(axis=0)
    assert np.abs(new - mean).max() < 0.5 * old_embedding.std() and not np.allclose(new[0], new[1])
    model(np.array([[53, 52, 0]]))              # the new ids are accepted


def test_resize_refuses_shrinking_and_is_a_no_op_at_the_same_size():
    model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match=r"new_vocab_size=40.*>= the current vocab_size=50"):
        resize_token_embeddings(model, 40)
    weight = model.tok_emb.weight
    resize_token_embeddings(model, 50)
    assert model.tok_emb.weight is weight


def test_a_resized_model_saves_its_config_and_load_model_rebuilds_it(tmp_path):
    tokenizer = tiny_tokenizer()
    model = GPT(GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, **TINY))
    added = ensure_chat_tokens(tokenizer)
    assert len(added) == 4
    resize_token_embeddings(model, tokenizer.vocab_size)
    save_checkpoint(tmp_path / "c.safetensors", model=model, step=0, tokenizer=tokenizer)
    loaded, loaded_tokenizer, _ = load_model(tmp_path / "c.safetensors")
    assert loaded.config.vocab_size == tokenizer.vocab_size == 264
    assert set(CHAT_SPECIAL_TOKENS) <= set(loaded_tokenizer.special_tokens)
    np.testing.assert_array_equal(loaded.tok_emb.weight.data, model.tok_emb.weight.data)


# ------------------------------------------------------------------------------------------------
# the loss
# ------------------------------------------------------------------------------------------------

def test_sft_loss_is_the_mean_over_supervised_tokens_only():
    mm.manual_seed(1)
    model = GPT(GPTConfig.gpt2(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8))
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    y = np.array([[-100, -100, 4, 5], [-100, 9, -100, -100]])
    loss, metrics = sft_loss(model, (x, y))
    logits, _ = model(x)
    logp = F.log_softmax(logits).data
    expected = -(logp[0, 2, 4] + logp[0, 3, 5] + logp[1, 1, 9]) / 3
    assert metrics["supervised_tokens"] == 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_supervised_targets_is_a_clear_error_not_nan():
    model = GPT(GPTConfig.gpt2(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8))
    x = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"every target .* is -100.*0/0"):
        sft_loss(model, (x, np.full((1, 3), -100)))


# ------------------------------------------------------------------------------------------------
# evaluation (greedy replies through model.generate)
# ------------------------------------------------------------------------------------------------

class ScriptedModel(Module):
    """A stand-in with GPT's ``generate`` contract (lists in, prompt + continuation out, a stop id
    kept as the last id) whose next token depends only on the last one (``NEXT``, else 'c'):
    after <|assistant|> (8) it says "a", "b", then <|end|> (9), with the char_chat ids."""

    NEXT = {8: 1, 1: 2, 2: 9}

    def __init__(self, vocab_size: int):
        super().__init__()
        self.config = GPTConfig.gpt2(vocab_size=vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8)
        self.calls = []

    def generate(self, prompts, max_new_tokens, temperature, stop):
        assert temperature == 0.0
        self.calls.append((len(prompts), max_new_tokens))
        outputs = []
        for prompt in prompts:
            ids = list(prompt)
            while len(ids) - len(prompt) < max_new_tokens:
                ids.append(self.NEXT.get(ids[-1], 3))
                if ids[-1] in stop:
                    break
            outputs.append(ids)
        return outputs


def test_evaluation_scores_exact_match_mistakes_and_the_end_marker(char_chat):
    template = ChatTemplate(char_chat)
    model = ScriptedModel(char_chat.vocab_size)
    tasks = [Task("right", "xyz", "ab", "ba"), Task("wrong", "zyx", "ba", "ab"), Task("other", "x", "c", "cc")]
    result = evaluate_tasks(model, template, tasks, max_new_tokens=6)
    assert result["replies"] == ["ab", "ab", "ab"]
    assert (result["right"], result["wrong"], result["other"]) == (1.0, 0.0, 0.0)
    assert result["overall"] == pytest.approx(1 / 3) and result["end_rate"] == 1.0
    assert result["mistake_rate"] == {"right": 0.0, "wrong": 1.0, "other": 0.0}
    cut = evaluate_tasks(model, template, tasks, max_new_tokens=2)   # no room for <|end|>
    assert cut["end_rate"] == 0.0 and cut["replies"] == ["ab", "ab", "ab"]


def test_each_prompt_gets_the_budget_of_its_reference_reply(char_chat):
    template = ChatTemplate(char_chat)
    tasks = [Task("short", "x", "a", "b"), Task("long", "y", "abcabc", "ab"), Task("short", "z", "c", "b")]
    assert reply_budgets(template, tasks) == [2 + 4, 7 + 4, 2 + 4]      # reply tokens + <|end|> + 4
    model = ScriptedModel(char_chat.vocab_size)
    evaluate_tasks(model, template, tasks)
    assert sorted(model.calls) == [(1, 11), (2, 6)]                    # prompts grouped by budget


def test_replies_of_a_real_model_are_its_greedy_continuations():
    mm.manual_seed(3)
    tokenizer = tiny_tokenizer()
    ensure_chat_tokens(tokenizer)
    template = ChatTemplate(tokenizer)
    model = GPT(GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=16))
    prompts = ["hi", "hello world", "w"]
    replies = generate_replies(model, template, prompts, max_new_tokens=5)
    for prompt, reply in zip(prompts, replies):
        ids = template.render_prompt([{"role": "user", "content": prompt}])
        start = len(ids)
        for _ in range(5):                               # the plain loop: argmax of the last position
            logits, _ = model(np.array([ids]))
            ids.append(int(np.argmax(logits.data[0, -1])))
            if ids[-1] in template.marker_ids:
                break
        assert reply == template.parse_reply(ids[start:])


def test_a_reply_budget_must_fit_the_window(char_chat):
    template = ChatTemplate(char_chat)
    with pytest.raises(ValueError, match=r"max_new_tokens=32; expected an int in \[1, block_size=32\)"):
        generate_replies(ScriptedModel(char_chat.vocab_size), template, ["x"], max_new_tokens=32)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

def small_sft_config(tmp_path, checkpoint, **overrides) -> SFTConfig:
    values = dict(checkpoint=checkpoint, out_dir=os.fspath(tmp_path / "sft"), max_steps=4, lr=3e-3, warmup_steps=1,
                  batch_size=4, eval_interval=4, log_interval=1, eval_per_task=1, n_sft=64, n_dpo=16,
                  max_new_tokens=4, progress=False)
    values.update(overrides)
    return SFTConfig.create(values)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft_run")
    checkpoint = make_pretrained(tmp / "pre.safetensors")
    cfg = small_sft_config(tmp, checkpoint)
    summary = run_sft(cfg, log=lambda message: None)
    return cfg, summary


def test_sft_run_writes_a_loadable_model_with_the_chat_vocabulary(sft_run):
    cfg, summary = sft_run
    model, tokenizer, checkpoint = load_model(summary["model"])
    assert model.config.vocab_size == tokenizer.vocab_size == 264       # 260 + <|user|> <|assistant|> <|end|> <|system|>
    assert set(CHAT_SPECIAL_TOKENS) <= set(tokenizer.special_tokens)
    assert checkpoint.extra["stage"] == "sft" and checkpoint.extra["base_vocab_size"] == 260
    for name in ("last.safetensors", "metrics.jsonl", "summary.json", "data/sft_train.jsonl", "data/eval.jsonl"):
        assert os.path.exists(os.path.join(cfg.loop.out_dir, name)), name
    saved = json.load(open(os.path.join(cfg.loop.out_dir, "summary.json"), encoding="utf-8"))
    assert saved["steps"] == 4 and saved["before"]["end_rate"] == 0.0
    assert set(saved["after"]) >= {"overall", "end_rate", "mistake_rate"}


def test_sft_trains_through_the_trainer_and_logs_losses(sft_run):
    cfg, _ = sft_run
    records = [json.loads(line) for line in open(os.path.join(cfg.loop.out_dir, "metrics.jsonl"), encoding="utf-8")]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["supervised_tokens"] > 0 for r in train)
    assert evals and {"val_loss", "exact_match", "end_rate"} <= set(evals[-1])


def test_sft_resume_continues_exactly(tmp_path):
    checkpoint = make_pretrained(tmp_path / "pre.safetensors")
    straight = run_sft(small_sft_config(tmp_path / "a", checkpoint, eval_per_task=0), log=lambda m: None)
    paused_cfg = small_sft_config(tmp_path / "b", checkpoint, eval_per_task=0)
    paused = run_sft(paused_cfg, log=lambda m: None, stop_at=2)
    assert paused["paused_at"] == 2
    resumed_cfg = small_sft_config(tmp_path / "b", checkpoint, eval_per_task=0, resume=paused["checkpoint"])
    resumed = run_sft(resumed_cfg, log=lambda m: None)
    a = load_checkpoint(straight["model"]).model_state
    b = load_checkpoint(resumed["model"]).model_state
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sft_with_lora_trains_a_fraction_and_saves_adapters(tmp_path):
    checkpoint = make_pretrained(tmp_path / "pre.safetensors")
    summary = run_sft(small_sft_config(tmp_path, checkpoint, lora_rank=2, eval_per_task=0, max_steps=2),
                      log=lambda m: None)
    counts = summary["parameters"]
    assert 0 < counts["trainable"] < 0.5 * counts["total"]
    # the adapters: 2 x rank x (in + out) per adapted Linear, and the 4 new embedding rows
    assert counts["trainable"] == 2 * (16 + 16) * 4 + 2 * (16 + 64) + 2 * (64 + 16) + 4 * 16
    assert os.path.getsize(summary["adapters"]) < os.path.getsize(summary["model"]) / 4
    model, _, _ = load_model(summary["model"])          # merged: a plain GPT again
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_bad_options_name_the_option(tmp_path):
    checkpoint = make_pretrained(tmp_path / "pre.safetensors")
    with pytest.raises(ValueError, match=r"loop.max_steps=0 is out of range; expected a value >= 1"):
        run_sft(small_sft_config(tmp_path, checkpoint, max_steps=0))
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope.safetensors"):
        run_sft(small_sft_config(tmp_path, os.fspath(tmp_path / "nope.safetensors")))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_sft_runs_in_mixed_precision(tmp_path, precision):
    checkpoint = make_pretrained(tmp_path / "pre.safetensors")
    summary = run_sft(small_sft_config(tmp_path, checkpoint, eval_per_task=0, max_steps=2, precision=precision),
                      log=lambda m: None)
    assert summary["steps"] == 2
    records = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl", encoding="utf-8")]
    losses = [r["loss"] for r in records if r["kind"] == "train" and not r.get("skipped")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    if precision == "fp16":
        assert all("loss_scale" in r for r in records if r["kind"] == "train")
    with pytest.raises(ValueError, match="loop.precision='fp8' is not valid"):
        run_sft(small_sft_config(tmp_path, checkpoint, precision="fp8"))
