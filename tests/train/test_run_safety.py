"""What minillm promises about your files (issue 13): no run is overwritten without --overwrite,
signals stop a run after saving it, interrupted writes leave nothing behind that blocks the next
run, files honour the umask, and no checkpoint holds diverged weights."""
import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import minillm as mm
import minillm.serialization as serialization
from minillm.cli import main
from minillm.data import RandomWindowLoader
from minillm.errors import EXIT_DIVERGED
from minillm.fileio import atomic_write_text, remove_stale_temp_files
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.train import (
    LoopSection,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    evaluate_language_model,
    load_checkpoint,
    save_checkpoint,
)
from minillm.train.pretrain import language_model_loss
from minillm.train.trainer import MAX_WEIGHT_NORM_GROWTH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(mm.__file__)))
TOKENS = np.random.default_rng(0).integers(0, 50, size=2000).astype(np.uint16)


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


def tiny(corpus, out, *extra):
    """`minillm train` arguments for a run of a few seconds: a char tokenizer, a 1-layer model."""
    return ["train", "--corpus", corpus, "--tokenizer", "char", "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
            "--block_size", "16", "--batch_size", "2", "--max_steps", "4", "--warmup_steps", "2", "--eval_interval", "2",
            "--eval_batches", "2", "--log_interval", "1", "--sample_tokens", "0", "--progress", "false",
            "--out_dir", str(out), *extra]


def train_steps(out):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def make_trainer(out_dir, max_steps=6, lr=3e-3, schedule=None, **loop):
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=lr)
    loader = RandomWindowLoader(TOKENS, batch_size=2, block_size=16, seed=0)
    settings = dict(max_steps=max_steps, eval_interval=2, log_interval=1, progress=False, out_dir=str(out_dir))
    settings.update(loop)
    schedule = schedule or CosineSchedule(lr, lr / 10, warmup_steps=1, total_steps=max_steps)
    return Trainer(model, optimizer, schedule, LoopSection(**settings), language_model_loss, loader,
                   evaluate=lambda m: evaluate_language_model(m, TOKENS[:200], 16, 4, num_bytes=200))


def finite_and_sane(path, reference):
    weights = load_checkpoint(path).model_state
    norm = math.sqrt(sum(float((w.astype(np.float64) ** 2).sum()) for w in weights.values()))
    return all(np.isfinite(w).all() for w in weights.values()) and norm <= MAX_WEIGHT_NORM_GROWTH * reference


# ------------------------------------------------------------------------------------------------
# §2 never overwrite a run
# ------------------------------------------------------------------------------------------------

def test_a_second_train_into_a_run_folder_is_refused_and_changes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(corpus, out, "--max_steps", "6")) == 0
    before = {name: (out / name).read_bytes() for name in ("best.safetensors", "last.safetensors", "metrics.jsonl")}
    capsys.readouterr()
    assert main(tiny(corpus, out, "--max_steps", "2")) == 2
    err = capsys.readouterr().err
    assert "already holds an earlier run" in err and f"--resume {out / 'last.safetensors'}" in err
    assert "--out_dir" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {name: (out / name).read_bytes() for name in before} == before


def test_overwrite_starts_the_run_afresh(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(corpus, out, "--max_steps", "6", "--eval_interval", "1", "--profile", "1")) == 0
    assert (out / "profile.json").exists()
    assert main(tiny(corpus, out, "--max_steps", "2", "--eval_interval", "100", "--overwrite")) == 0
    assert "--overwrite: deleted the earlier run's" in capsys.readouterr().out
    assert not (out / "profile.json").exists()                # nothing of the earlier run is left
    assert train_steps(out) == [1, 2]                         # not 1..6 of the earlier run
    assert load_checkpoint(out / "last.safetensors").step == 2
    assert load_checkpoint(out / "best.safetensors").step == 2    # the old best (step <= 6) is gone


def test_resuming_into_the_same_out_dir_keeps_the_log(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(tiny(corpus, out)) == 0
    assert main(tiny(corpus, out, "--max_steps", "6", "--resume", str(out / "last.safetensors"))) == 0
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(out / "last.safetensors").step == 6


def test_resuming_into_a_folder_that_holds_another_run_is_refused(corpus, tmp_path):
    assert main(tiny(corpus, tmp_path / "a")) == 0
    assert main(tiny(corpus, tmp_path / "b")) == 0
    args = tiny(corpus, tmp_path / "b", "--max_steps", "6", "--resume", str(tmp_path / "a" / "last.safetensors"))
    assert main(args) == 2
    assert train_steps(tmp_path / "b") == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    assert main(tiny(corpus, out, "--block_size", "64", "--tokenizer", "bpe", "--vocab_size", "280")) == 0
    return out / "last.safetensors"                     # byte-level BPE: the chat data encodes


def posttrain(stage, checkpoint, out, *extra):
    return [stage, "--checkpoint", str(checkpoint), "--out_dir", str(out), "--max_steps", "2", "--batch_size", "2",
            "--eval_per_task", "0", "--n_sft", "16", "--n_dpo", "16", "--progress", "false", "--eval_interval", "2",
            *(["--eval_pairs", "0"] if stage == "dpo" else []), *extra]


def test_sft_and_dpo_refuse_an_existing_run_folder(pretrained, tmp_path, capsys):
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    assert main(posttrain("sft", pretrained, sft)) == 0
    model = (sft / "model.safetensors").read_bytes()
    assert main(posttrain("sft", pretrained, sft)) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert (sft / "model.safetensors").read_bytes() == model
    assert main(posttrain("dpo", sft / "model.safetensors", dpo)) == 0
    assert main(posttrain("dpo", sft / "model.safetensors", dpo)) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert main(posttrain("dpo", sft / "model.safetensors", dpo, "--overwrite")) == 0


def test_overwrite_keeps_the_checkpoint_the_run_starts_from(pretrained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    start = out / "last.safetensors"                 # sft from the pretraining run's last, into its folder
    start.write_bytes(pretrained.read_bytes())
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 4, "loss": 1.0}\n')
    assert main(posttrain("sft", start, out)) == 2
    assert main(posttrain("sft", start, out, "--overwrite")) == 0     # read before it is replaced
    assert load_checkpoint(out / "model.safetensors").extra["stage"] == "sft"
    assert train_steps(out) == [2]                      # (sft logs every 10 steps and at the end)


def test_tokenizer_train_refuses_an_existing_output(corpus, tmp_path, capsys):
    output = tmp_path / "tok.json"
    output.write_text("precious")
    args = ["tokenizer", "train", "--input", corpus, "--type", "char", "--output", str(output)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and output.read_text() == "precious"
    assert main(args + ["--overwrite"]) == 0
    assert json.loads(output.read_text())["type"] == "char"


# ------------------------------------------------------------------------------------------------
# §4 signals
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_train_after_saving_last(corpus, tmp_path, signum, status):
    out = tmp_path / "run"
    args = tiny(corpus, out, "--max_steps", "100000", "--eval_interval", "100000")   # no save before the signal
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "minillm", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, err
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step" in err and "Traceback" not in err
    steps = train_steps(out)
    assert steps[0] == 1 and load_checkpoint(out / "last.safetensors").step == steps[-1] >= 3
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def raise_signal_at(trainer, step, signum, times=1):
    original = trainer.compute_loss

    def compute_loss(model, batch):
        if trainer.step + 1 == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(model, batch)

    trainer.compute_loss = compute_loss


def test_fit_finishes_the_step_saves_last_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(tmp_path, max_steps=10, eval_interval=100)
    raise_signal_at(trainer, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after step 3") as info:
        trainer.fit()
    assert info.value.exit_status == 130 and isinstance(info.value, KeyboardInterrupt)
    assert load_checkpoint(tmp_path / "last.safetensors").step == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_stops_at_once_and_leaves_the_checkpoint_intact(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10, eval_interval=2)
    raise_signal_at(trainer, 3, signal.SIGTERM, times=2)        # step 2 saved; two signals in step 3
    with pytest.raises(TrainingInterrupted, match="SIGTERM received again") as info:
        trainer.fit()
    assert info.value.exit_status == 143
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_second_signal_during_the_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=10, eval_interval=2)
    raise_signal_at(trainer, 3, signal.SIGTERM)
    real_write = serialization._write_tensor_bytes
    calls = []

    def write_and_signal(handle, array):
        real_write(handle, array)
        calls.append(1)
        if trainer.step == 3 and len(calls) > 1:      # in the middle of the signal's save of step 3
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(serialization, "_write_tensor_bytes", write_and_signal)
    with pytest.raises(TrainingInterrupted, match="received again"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_fit_in_another_thread_leaves_the_signals_alone(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    seen, errors = [], []

    def run():
        try:
            trainer = make_trainer(tmp_path, max_steps=2)
            original = trainer.compute_loss
            trainer.compute_loss = lambda m, b: (seen.append(signal.getsignal(signal.SIGINT)), original(m, b))[1]
            trainer.fit()
        except BaseException as error:   # noqa: BLE001  (reported below)
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors and seen and all(handler is before for handler in seen)
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2


# ------------------------------------------------------------------------------------------------
# §4 leftovers, torn files, permissions, eval's JSON
# ------------------------------------------------------------------------------------------------

def test_stale_temporary_files_of_killed_saves_are_removed_on_start(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = ["last.safetensors.k2x_9q1z.tmp", "best.safetensors.abcdefgh.tmp", "metrics.jsonl.0a1b2c3d.tmp"]
    for name in stale:
        (out / name).write_bytes(b"x" * 1000)
    others = ["notes.tmp", "last.safetensors.TOOLONGNAME.tmp", "keep.txt"]
    for name in others:
        (out / name).write_text("mine")
    assert main(tiny(corpus, out, "--max_steps", "2")) == 0
    assert capsys.readouterr().out.count("removed 3 temporary file(s)") == 1
    assert sorted(p for p in os.listdir(out) if p.endswith((".tmp", ".txt"))) == sorted(others)


def test_remove_stale_temp_files_only_takes_the_named_targets(tmp_path):
    (tmp_path / "tok.json.abcdefgh.tmp").write_text("x")
    (tmp_path / "other.json.abcdefgh.tmp").write_text("x")
    removed = remove_stale_temp_files(tmp_path, targets=["tok.json"])
    assert removed == [(str(tmp_path / "tok.json.abcdefgh.tmp"), 1)]
    assert (tmp_path / "other.json.abcdefgh.tmp").exists()


def test_tokenizer_train_removes_the_stale_temporary_files_of_its_output(corpus, tmp_path, capsys):
    (tmp_path / "tok.json.abcdefgh.tmp").write_text("left by a killed save")
    (tmp_path / "other.json.abcdefgh.tmp").write_text("not ours")
    assert main(["tokenizer", "train", "--input", corpus, "--type", "char", "--output", str(tmp_path / "tok.json")]) == 0
    assert "removed 1 temporary file(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["other.json.abcdefgh.tmp", "tok.json"]


def test_a_torn_last_metrics_line_is_dropped_and_reported(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(corpus, out)) == 0
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 5, "lo')         # the append a power cut interrupted
    lines = len((out / "metrics.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert main(tiny(corpus, out, "--max_steps", "6", "--resume", str(out / "last.safetensors"))) == 0
    err = capsys.readouterr().err
    assert f"metrics log {str(out / 'metrics.jsonl')!r}: line {lines} was cut short" in err
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]                # every line valid again


def test_a_corrupt_metrics_line_in_the_middle_is_an_error_naming_file_and_line(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(corpus, out)) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(tiny(corpus, out, "--max_steps", "6", "--resume", str(out / "last.safetensors"))) == 2
    err = capsys.readouterr().err
    assert f"metrics log {str(out / 'metrics.jsonl')!r} line 2 is not a JSON object" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == expected


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_train_outputs_follow_the_umask(corpus, tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(tiny(corpus, tmp_path / "run", "--max_steps", "2")) == 0
    finally:
        os.umask(previous)
    for name in ("last.safetensors", "metrics.jsonl", "summary.json", "tokenizer.json", "data/meta.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "run" / name).st_mode) == 0o640, name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_eval_of_a_nan_model_prints_valid_json_with_null_and_a_note(pretrained, tmp_path, capsys):
    checkpoint = load_checkpoint(pretrained)
    model = GPT(GPTConfig.from_dict(checkpoint.model_config))
    state = dict(checkpoint.model_state)
    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[name] = np.full_like(state[name], np.nan)
    model.load_state_dict(state)
    poisoned = tmp_path / "nan.safetensors"
    save_checkpoint(poisoned, model=model, step=1, tokenizer=checkpoint.tokenizer)
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be that is the question\n" * 5)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(poisoned), "--input", str(text)]) == 0
    out, err = capsys.readouterr()

    def no_nan(word):
        raise AssertionError(f"{word} in the JSON")

    report = json.loads(out, parse_constant=no_nan)
    assert report["loss"] is None and report["ppl"] is None and "not finite" in report["note"]
    assert "not finite" in err and report["step"] == 1


# ------------------------------------------------------------------------------------------------
# §5 divergence
# ------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_last_good_checkpoint_is_good_when_the_run_diverges(tmp_path):
    def schedule(step):                     # three sensible steps, then a learning rate that blows up
        return 1e-3 if step < 3 else 1e3

    trainer = make_trainer(tmp_path, max_steps=10, schedule=schedule, save_interval=1, eval_interval=1)
    reference = trainer.reference_weight_norm
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "diverged at step 4" in message and "more than 100 times" in message
    assert f"last good checkpoint is {tmp_path / 'last.safetensors'} (step 3)" in message
    assert load_checkpoint(tmp_path / "last.safetensors").step == 3
    for name in ("last.safetensors", "best.safetensors"):
        assert finite_and_sane(tmp_path / name, reference), name


def test_non_finite_weights_are_never_saved(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, eval_interval=100, save_interval=1)
    step = trainer.optimizer.step

    def poison_at_step_3():
        step()
        if trainer.step == 2:              # the update of step 3 (the loss was finite)
            trainer.model.parameters()[0].data.flat[0] = np.nan

    trainer.optimizer.step = poison_at_step_3
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 3: parameter '.*' holds NaN/Inf values"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2


def test_a_nan_validation_loss_is_not_saved_as_last(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, eval_interval=2)
    trainer.evaluate = lambda m: {"val_loss": 1.0 if trainer.step < 4 else math.nan}
    with pytest.raises(NonFiniteLossError, match="validation loss at these weights is nan"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.safetensors").step == 2


def test_the_reference_norm_travels_with_a_resume(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.fit(stop_at=2)
    resumed = make_trainer(tmp_path, max_steps=4)
    resumed.reference_weight_norm = 123.0
    resumed.resume(str(tmp_path / "last.safetensors"))
    assert resumed.reference_weight_norm == trainer.reference_weight_norm


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_skip_mode_stops_after_max_skips_and_saves_nothing_poisoned(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny(corpus, out, "--max_steps", "20", "--lr", "1e3", "--on_nonfinite", "skip", "--max_skips", "3",
                "--eval_interval", "100")
    assert main(args) == EXIT_DIVERGED      # a diverged run: status 3
    err = capsys.readouterr().err
    assert "3 steps in a row" in err and "loop.max_skips=3" in err and "Traceback" not in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3)) == [r["step"] for r in records][-3:]
    assert not (out / "last.safetensors").exists()      # the weights after step 1 were not fit to save


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_skip_mode_never_saves_diverged_weights_at_the_end(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny(corpus, out, "--max_steps", "6", "--lr", "1e3", "--on_nonfinite", "skip", "--max_skips", "100")
    assert main(args) == EXIT_DIVERGED      # a diverged run: status 3
    err = capsys.readouterr().err
    assert "the run diverged at step" in err and "not saving" in err and "Traceback" not in err
    assert not list(out.glob("*.safetensors"))


def test_skips_that_are_not_consecutive_do_not_stop_the_run(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, on_nonfinite="skip", max_skips=2, eval_interval=100)
    original = trainer.compute_loss

    def every_other_step_nan(model, batch):
        loss, metrics = original(model, batch)
        return (loss * float("nan") if len(trainer.metrics.records) % 2 else loss), metrics

    trainer.compute_loss = every_other_step_nan
    records = trainer.fit()
    assert sum(1 for r in records if r.get("skipped")) == 3 and trainer.step == 6


def test_skip_mode_stops_at_max_skips_in_a_row(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=20, on_nonfinite="skip", max_skips=4, eval_interval=2)
    original = trainer.compute_loss
    trainer.compute_loss = lambda m, b: ((lambda loss, metrics: (loss * float("nan") if trainer.step >= 2 else loss,
                                                                metrics))(*original(m, b)))
    with pytest.raises(NonFiniteLossError, match=r"4 steps in a row \(up to step 6\)"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.safetensors").step == 4      # steps 3-4 skipped: the weights of step 2
    assert finite_and_sane(tmp_path / "last.safetensors", trainer.reference_weight_norm)
    assert [r["step"] for r in trainer.metrics.records if r.get("skipped")] == [3, 4, 5, 6]


def test_max_skips_must_be_positive(corpus, tmp_path, capsys):
    assert main(tiny(corpus, tmp_path / "run", "--max_skips", "0")) == 2
    assert "loop.max_skips=0 is out of range" in capsys.readouterr().err
