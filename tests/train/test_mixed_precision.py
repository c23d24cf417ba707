"""Mixed precision in the Trainer: dynamic loss scaling (skip + halve on overflow, growth after
clean steps, logged), exact resume of the scaler, bf16 without a scaler, and the main-job check."""
import json
import math

import numpy as np
import pytest

import minillm as mm
from minillm.amp import GradScaler
from minillm.data import RandomWindowLoader
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.train import LoopSection, Trainer, evaluate_language_model
from minillm.train.pretrain import language_model_loss

TOKENS = np.random.default_rng(0).integers(0, 50, size=3000).astype(np.uint16)


def make_trainer(out_dir, precision, max_steps=6, scaler=None, seed=0):
    mm.manual_seed(seed)
    model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3)
    loader = RandomWindowLoader(TOKENS, batch_size=4, block_size=16, seed=seed)
    loop = LoopSection(max_steps=max_steps, eval_interval=max_steps, log_interval=1, progress=False,
                       out_dir=str(out_dir), precision=precision)
    return Trainer(model, optimizer, CosineSchedule(3e-3, 3e-4, 2, max_steps), loop, language_model_loss, loader,
                   evaluate=lambda m: evaluate_language_model(m, TOKENS[:300], 16, 8, num_bytes=300),
                   tokens_per_batch=64, grad_scaler=scaler)


def train_records(records):
    return [r for r in records if r.get("kind") == "train"]


def snapshot(model):
    return {name: p.data.copy() for name, p in model.named_parameters()}


def test_a_planted_overflow_skips_the_step_halves_the_scale_and_is_logged(tmp_path):
    trainer = make_trainer(tmp_path, "fp16", max_steps=5, scaler=GradScaler(init_scale=1024.0, growth_interval=2))
    weight = trainer.model.blocks[0].mlp.up_proj.weight
    calls = {"n": 0}

    def plant(grad):                             # the second backward gets one inf in one gradient
        calls["n"] += 1
        if calls["n"] == 2:
            poisoned = grad.data.copy()
            poisoned[0, 0] = np.inf
            return mm.tensor(poisoned)
        return None

    weight.register_hook(plant)
    first = trainer.train_step()
    assert not first.get("skipped") and first["loss_scale"] == 1024.0
    before, adam_steps = snapshot(trainer.model), list(trainer.optimizer.state_dict()["steps"])
    second = trainer.train_step()
    assert second["skipped"] and second["overflow"] and math.isfinite(second["loss"])
    assert second["loss_scale"] == 1024.0 and second["next_loss_scale"] == 512.0
    assert trainer.scaler.skipped_steps == 1 and trainer.step == 2
    after = snapshot(trainer.model)
    assert all(np.array_equal(before[k], after[k]) for k in before)                 # no update at all
    assert trainer.optimizer.state_dict()["steps"] == adam_steps                     # moments untouched
    assert all(p.grad is None for p in trainer.model.parameters())
    third, fourth = trainer.train_step(), trainer.train_step()
    assert not third.get("skipped") and third["loss_scale"] == 512.0
    assert fourth["loss_scale"] == 512.0 and trainer.scaler.get_scale() == 1024.0   # 2 clean steps: doubled


def test_a_too_large_scale_overflows_fp16_gradients_and_backs_off_until_training_proceeds(tmp_path):
    trainer = make_trainer(tmp_path, "fp16", max_steps=16, scaler=GradScaler(init_scale=2.0 ** 26))
    initial = snapshot(trainer.model)
    records = train_records(trainer.fit())
    skipped = [r for r in records if r.get("skipped")]
    assert skipped and skipped[0]["step"] == 1                    # gradients past 65504: inf in fp16
    scales = [r["loss_scale"] for r in skipped]
    assert scales == [2.0 ** 26 / 2 ** i for i in range(len(scales))]     # halved at every skip
    assert len(skipped) < len(records) and trainer.scaler.skipped_steps == len(skipped)
    taken = [r for r in records if not r.get("skipped")]
    assert all(math.isfinite(r["grad_norm"]) for r in taken)
    assert not all(np.array_equal(initial[k], v) for k, v in snapshot(trainer.model).items())
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in logged if r.get("skipped")] == [r["step"] for r in skipped]


def test_fp16_resume_restores_the_loss_scale_exactly(tmp_path):
    def scaler():
        return GradScaler(init_scale=2.0 ** 20, growth_interval=2)

    straight = train_records(make_trainer(tmp_path / "a", "fp16", max_steps=8, scaler=scaler()).fit())
    first = make_trainer(tmp_path / "b", "fp16", max_steps=8, scaler=scaler())
    first.fit(stop_at=4)
    resumed = make_trainer(tmp_path / "b", "fp16", max_steps=8, scaler=GradScaler(), seed=3)
    resumed.resume(str(tmp_path / "b" / "last.safetensors"))
    assert resumed.scaler.state_dict() == first.scaler.state_dict()
    again = train_records(resumed.fit())
    key = [(r["loss"], r["loss_scale"], bool(r.get("skipped"))) for r in straight]
    assert [(r["loss"], r["loss_scale"], bool(r.get("skipped"))) for r in again] == key


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_tracks_fp32(tmp_path, precision):
    reference = train_records(make_trainer(tmp_path / "fp32", "fp32", max_steps=6).fit())
    trainer = make_trainer(tmp_path / precision, precision, max_steps=6)
    records = train_records(trainer.fit())
    assert (trainer.scaler is not None) == (precision == "fp16")
    assert ("loss_scale" in records[0]) == (precision == "fp16")
    for ours, theirs in zip(records, reference):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-2)
    for p in trainer.model.parameters():
        assert p.data.dtype == np.float32                          # master weights stay float32
    assert all(a.dtype == np.float32 for a in trainer.optimizer.state_dict()["state"].values())


def test_precision_is_validated():
    with pytest.raises(ValueError, match=r"loop.precision='fp64' is not valid; expected one of"):
        LoopSection(max_steps=1, precision="fp64")


@pytest.mark.slow
def test_main_job_in_fp16_and_bf16_ends_within_2_percent_of_fp32(tmp_path):
    """The issue's target: 300 steps of the earlier main job (the GPT-2-style recipe: vocabulary
    1,024, dropout 0.1; same seed) per precision; the final validation losses of fp16 and bf16
    within 2% of fp32's. Measured (1 BLAS thread, busy 2-core machine): fp32 4.1332 in 7.3 min,
    fp16 4.1263 in 10.1 min (one overflow skip), bf16 4.1314 in 7.0 min."""
    from minillm.train import TrainConfig
    from minillm.train.pretrain import run_pretraining

    losses = {}
    for precision in ("fp32", "fp16", "bf16"):
        cfg = TrainConfig.create({"preset": "gpt2", "n_kv_head": 4, "dropout": 0.1, "data.vocab_size": 1024,
                                  "optimizer": "adamw", "weight_decay": 0.1,
                                  "batch_size": 32, "max_steps": 300, "eval_interval": 300, "sample_tokens": 0, "progress": False,
                                  "precision": precision, "out_dir": str(tmp_path / precision)})
        losses[precision] = run_pretraining(cfg, log=lambda *a: None)["final"]["val_loss"]
    for precision in ("fp16", "bf16"):
        assert abs(losses[precision] - losses["fp32"]) <= 0.02 * losses["fp32"], losses


def test_the_command_line_trains_in_fp16_and_evaluates_in_bf16(tmp_path, capsys):
    from minillm.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    out = tmp_path / "run"
    args = ["train", "--corpus", str(corpus), "--tokenizer", "char", "--max_steps", "3", "--warmup_steps", "1",
            "--eval_interval", "3", "--eval_batches", "1", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
            "--block_size", "16", "--batch_size", "4", "--sample_tokens", "0", "--progress", "false",
            "--precision", "fp16", "--out_dir", str(out)]
    assert main(args) == 0
    logged = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    assert all(r["loss_scale"] == 2.0 ** 16 for r in logged if r["kind"] == "train")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.safetensors"), "--input", str(corpus),
                 "--precision", "bf16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "bf16" and math.isfinite(report["loss"])
