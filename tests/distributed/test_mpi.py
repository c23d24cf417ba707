"""Data parallelism end to end: ``mpiexec -n 2 minillm train`` launched from pytest.

A tiny model (char tokenizer, 2 layers of width 32) for 6 steps: a run takes about a second.
Skipped, with the reason, where mpi4py or mpiexec is missing (``pip install -e ".[mpi]"``)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                       reason="mpi4py is not installed (pip install -e '.[mpi]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside the Python (the mpich wheel brings one)"),
]
TIMEOUT = 120                     # seconds: a hang is a failure, not a stuck suite
RELATIVE = 1e-5                   # float32 reduction order (two half-batches vs one batch)


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


def tiny(corpus, out, *extra, optimizer="adamw"):
    # AdamW unless asked: ZeRO-1 shards AdamW's moments, and its runs compare with the one-process curve.
    return ["train", "--corpus", corpus, "--optimizer", optimizer, "--tokenizer", "char", "--n_layer", "2",
            "--n_embd", "32", "--n_head", "2",
            "--n_kv_head", "2", "--block_size", "16", "--batch_size", "4", "--max_steps", "6", "--warmup_steps", "2",
            "--eval_interval", "3", "--eval_batches", "2", "--log_interval", "1", "--sample_tokens", "0",
            "--progress", "false", "--out_dir", str(out), *extra]


def environment(**plants) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MINILLM_NUM_THREADS": "1"}
    env.update({key: str(value) for key, value in plants.items()})
    return env


def launch(args, ranks: int | None, **plants) -> subprocess.CompletedProcess:
    """``minillm ARGS`` (through the test driver), under ``mpiexec -n ranks`` unless ranks is None."""
    command = [sys.executable, "-m", "tests.distributed.mpi_driver", *args]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, cwd=REPO, env=environment(**plants), capture_output=True, text=True,
                          timeout=TIMEOUT)


def train_losses(out) -> dict[int, float]:
    records = map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def assert_same_curve(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=RELATIVE), f"step {step}: {got[step]} vs {loss}"


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    done = launch(tiny(corpus, out), ranks=None)
    assert done.returncode == 0, done.stderr
    return train_losses(out)


def test_two_ranks_give_the_single_process_curve_and_gradient_accumulation(corpus, tmp_path, one_process):
    done = launch(tiny(corpus, tmp_path / "two"), ranks=2)
    assert done.returncode == 0, done.stderr
    assert_same_curve(train_losses(tmp_path / "two"), one_process)
    assert done.stdout.count("final validation") == 1          # rank 0 alone reports
    assert done.stdout.count("data parallel: 2 rank(s), gradients averaged over mpi in ") == 1
    accumulated = launch(tiny(corpus, tmp_path / "accum", "--batch_size", "2", "--grad_accum_steps", "2"), ranks=None)
    assert accumulated.returncode == 0, accumulated.stderr
    assert_same_curve(train_losses(tmp_path / "accum"), one_process)
    assert len(one_process) == 6 and one_process[6] < one_process[1]      # it trained
    both = launch(tiny(corpus, tmp_path / "both", "--batch_size", "2", "--grad_accum_steps", "2"), ranks=2)
    assert both.returncode == 0, both.stderr                  # 2 ranks x 2 micro-batches of 1 row each
    assert_same_curve(train_losses(tmp_path / "both"), one_process)


def test_muon_on_two_ranks_gives_its_single_process_curve(corpus, tmp_path):
    # The gradients are averaged before the step, so every rank orthogonalises the same momentum.
    alone = launch(tiny(corpus, tmp_path / "alone", optimizer="muon"), ranks=None)
    assert alone.returncode == 0, alone.stderr
    two = launch(tiny(corpus, tmp_path / "two", optimizer="muon"), ranks=2)
    assert two.returncode == 0, two.stderr
    assert_same_curve(train_losses(tmp_path / "two"), train_losses(tmp_path / "alone"))


def test_zero_stage_1_gives_the_same_curve(corpus, tmp_path, one_process):
    done = launch(tiny(corpus, tmp_path / "zero", "--zero", "1"), ranks=2)
    assert done.returncode == 0, done.stderr
    assert_same_curve(train_losses(tmp_path / "zero"), one_process)


def test_a_checkpoint_of_two_ranks_resumes_on_one(corpus, tmp_path, one_process):
    out = tmp_path / "resumed"
    paused = launch(tiny(corpus, out, "--zero", "1"), ranks=2, MINILLM_TEST_STOP_AT=3)
    assert paused.returncode == 0, paused.stderr
    assert sorted(train_losses(out)) == [1, 2, 3]
    resumed = launch(tiny(corpus, out, "--resume", str(out / "last.safetensors")), ranks=None)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_curve(train_losses(out), one_process)


def test_a_failing_rank_ends_the_job_with_its_name(corpus, tmp_path):
    done = launch(tiny(corpus, tmp_path / "fail"), ranks=2, MINILLM_TEST_FAIL_RANK=1)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "planted failure" in done.stderr


def test_a_batch_the_ranks_cannot_share_is_refused(corpus, tmp_path):
    done = launch(tiny(corpus, tmp_path / "odd", "--batch_size", "3"), ranks=2)
    assert done.returncode == 2, done.stderr
    assert "loop.batch_size=3 is not divisible by the 2 ranks" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_dropout_two_ranks_repeat_and_resume_on_two_bit_exactly(corpus, tmp_path):
    """Dropout masks come from per-rank generators (seed, rank); a checkpoint keeps every rank's
    state, so pausing and resuming on as many ranks continues the very same run."""
    dropout = ("--dropout", "0.2")
    straight = launch(tiny(corpus, tmp_path / "straight", *dropout), ranks=2)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "paused"
    paused = launch(tiny(corpus, out, *dropout), ranks=2, MINILLM_TEST_STOP_AT=3)
    assert paused.returncode == 0, paused.stderr
    resumed = launch(tiny(corpus, out, *dropout, "--resume", str(out / "last.safetensors")), ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert train_losses(out) == train_losses(tmp_path / "straight")        # bit for bit
