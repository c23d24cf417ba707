"""The shared training loop: exact resume, crash-safe checkpoints, non-finite losses, evaluation,
profiling."""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minillm as mm
from minillm.data import RandomWindowLoader
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, Muon, decay_groups, muon_groups
from minillm.train import LoopSection, NonFiniteLossError, Trainer, evaluate_language_model, load_checkpoint
from minillm.train.pretrain import language_model_loss

TOKENS = np.random.default_rng(0).integers(0, 50, size=3000).astype(np.uint16)


def make_trainer(out_dir, max_steps=20, seed=0, dropout=0.1, lr=3e-3, on_nonfinite="stop", n_embd=32, profile=0,
                 optimizer="adamw"):
    mm.manual_seed(seed)
    config = GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, dropout=dropout)
    model = GPT(config)
    if optimizer == "muon":
        optimizer = Muon(muon_groups(model.named_parameters(), 0.1), lr=lr)
    else:
        optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=lr)
    loader = RandomWindowLoader(TOKENS, batch_size=4, block_size=16, seed=seed)
    loop = LoopSection(max_steps=max_steps, eval_interval=10, log_interval=1, on_nonfinite=on_nonfinite,
                       progress=False, out_dir=str(out_dir), profile=profile)
    schedule = CosineSchedule(lr, lr / 10, warmup_steps=3, total_steps=max_steps)

    def evaluate(m):
        return evaluate_language_model(m, TOKENS[:400], 16, 8, num_bytes=400)

    return Trainer(model, optimizer, schedule, loop, language_model_loss, loader, evaluate=evaluate,
                   tokens_per_batch=64)


def train_losses(records):
    return [r["loss"] for r in records if r.get("kind") == "train"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, optimizer):
    straight = train_losses(make_trainer(tmp_path / "a", max_steps=20, optimizer=optimizer).fit())

    first = make_trainer(tmp_path / "b", max_steps=20, optimizer=optimizer)
    first.fit(stop_at=10)                          # interrupted after 10 of 20 steps
    mm.manual_seed(999)                            # disturb the global RNG: resume must restore it
    resumed = make_trainer(tmp_path / "b", max_steps=20, seed=5, optimizer=optimizer)   # another init and loader seed
    resumed.resume(str(tmp_path / "b" / "last.safetensors"))
    assert resumed.step == 10
    records = resumed.fit()
    assert len(straight) == 20
    assert train_losses(records) == straight       # bit for bit, dropout included (the log keeps steps 1-10)
    assert [r["step"] for r in records if r.get("kind") == "train"] == list(range(1, 21))


def test_profiling_steps_changes_no_result_and_writes_the_profile(tmp_path, capsys):
    plain = make_trainer(tmp_path / "plain", max_steps=5).fit()
    capsys.readouterr()
    profiled = make_trainer(tmp_path / "profiled", max_steps=5, profile=2).fit()
    assert train_losses(profiled) == train_losses(plain)       # bit for bit, dropout included
    out = capsys.readouterr().out
    assert out.count("profile of steps 2-3") == 1 and "| op | calls |" in out and "| blocks.*.attn |" in out
    saved = json.loads((tmp_path / "profiled" / "profile.json").read_text())
    assert saved["steps"] == 2 and saved["ops"]["Linear"]["calls"] == 2 * (2 * 6 + 1)
    assert 0 < saved["ops_s"] <= saved["wall_s"]
    short = make_trainer(tmp_path / "short", max_steps=2, profile=3)
    short.fit()                                                # one step to profile, not three
    assert json.loads((tmp_path / "short" / "profile.json").read_text())["steps"] == 1
    assert "profile of step 2" in capsys.readouterr().out


def test_best_and_last_checkpoints_hold_everything(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    trainer.checkpoint_metadata = {"train_config": {"note": "x"}}
    trainer.fit()
    last = load_checkpoint(tmp_path / "last.safetensors")
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert last.step == 10 and best.step in (10,)
    assert last.optimizer_state is not None and last.rng_state["bit_generator"] == "PCG64"
    assert last.loader_state is not None and last.train_config == {"note": "x"}
    assert set(last.model_state) == set(trainer.model.state_dict())
    assert math.isfinite(last.extra["best_val_loss"])


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.fit()
    path = tmp_path / "last.safetensors"
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        import minillm.serialization as serialization
        from tests.train.test_trainer import make_trainer
        trainer = make_trainer({str(tmp_path)!r}, max_steps=6)
        trainer.resume({str(path)!r})
        trainer.train_step()
        written = []
        real_write = serialization._write_tensor_bytes
        def write_then_die(handle, array):
            real_write(handle, array)
            written.append(1)
            if len(written) == 3:
                handle.flush()
                os._exit(9)          # the process dies in the middle of writing the file
        serialization._write_tensor_bytes = write_then_die
        trainer.save({str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
def test_a_non_finite_loss_stops_and_names_the_step_and_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=20, lr=1e6, dropout=0.0)   # diverges quickly
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; the last good checkpoint is"):
        trainer.fit()


def test_skip_mode_drops_non_finite_steps_and_logs_them(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3, dropout=0.0, on_nonfinite="skip")
    trainer.evaluate = None
    original = trainer.compute_loss

    def poisoned(model, batch):
        loss, metrics = original(model, batch)
        return (loss * float("nan") if trainer.step == 1 else loss), metrics

    trainer.compute_loss = poisoned
    weights_before = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    records = trainer.fit()
    skipped = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in skipped] == [2]
    assert trainer.step == 3
    assert any(not np.array_equal(weights_before[k], v) for k, v in trainer.model.state_dict().items())


def test_resume_into_a_different_model_shape_is_refused(tmp_path):
    make_trainer(tmp_path, max_steps=3).fit()
    other = make_trainer(tmp_path / "other", max_steps=3, n_embd=64)
    with pytest.raises(ValueError, match="different model shape"):
        other.resume(str(tmp_path / "last.safetensors"))


def test_resume_with_another_optimizer_is_refused_with_the_option_to_pass(tmp_path):
    make_trainer(tmp_path, max_steps=3).fit()                       # AdamW, as the main job was before Muon
    other = make_trainer(tmp_path / "other", max_steps=3, optimizer="muon")
    with pytest.raises(ValueError, match="was trained with AdamW, this run builds Muon: resume it with "
                                         "--optim.optimizer adamw"):
        other.resume(str(tmp_path / "last.safetensors"))


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    make_trainer(tmp_path, max_steps=3).fit()
    path = tmp_path / "last.safetensors"
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_evaluation_scores_every_token_once_and_bits_per_byte_follow_the_formula():
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    tokens = TOKENS[:101]
    result = evaluate_language_model(model, tokens, block_size=16, batch_size=3, num_bytes=250)
    assert result["val_tokens"] == 100
    # the same sum by brute force: one long pass per window of the model's own context
    total = 0.0
    with mm.no_grad():
        for start in range(0, 100, 16):
            end = min(start + 16, 100)
            first = max(0, end - 16)
            x = tokens[first:end].astype(np.int64)[None]
            y = tokens[first + 1:end + 1].astype(np.int64)[None].copy()
            y[0, : start - first] = -100
            _, loss = model(x, y)
            total += loss.item() * (end - start)
    assert result["val_loss"] == pytest.approx(total / 100, rel=1e-5)
    assert result["val_bpb"] == pytest.approx(total / (250 * math.log(2)), rel=1e-5)
    assert result["val_ppl"] == pytest.approx(math.exp(total / 100), rel=1e-5)


def test_a_peak_measured_on_a_busy_machine_is_measured_again_rather_than_reporting_mfu_above_one(tmp_path):
    """MFU's denominator comes from a few matmuls at start-up; if other work held the cores then,
    the peak is too low and MFU would read above 100%. The trainer measures the peak again."""
    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.flops_per_token, trainer.peak_flops = 1e5, 1.0          # a "peak" of 1 FLOP/s: certainly too low
    trainer.fit()
    records = [r for r in trainer.metrics.records if r.get("kind") == "train" and "mfu" in r]
    assert records and all(0 < r["mfu"] <= 1.0 for r in records)
    assert trainer.peak_flops > 1e6                                 # any real machine does a megaflop a second


def test_the_loss_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """plot_loss_curve (called by Trainer.fit with an out_dir) writes the PNG without choosing a
    backend: a notebook's inline backend must still display the plots made after a training run."""
    pytest.importorskip("matplotlib", reason="the loss plot needs matplotlib (the workbook extra)")
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        from minillm.train.metrics import plot_loss_curve
        records = [{{"kind": "train", "step": 1, "loss": 2.0}}, {{"kind": "eval", "step": 1, "val_loss": 2.5}}]
        assert plot_loss_curve(records, {str(tmp_path / "loss.png")!r})
        print(matplotlib.get_backend())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
