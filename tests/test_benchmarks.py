"""The benchmark scripts still start: each one's --help runs (its imports resolve), and the
cheap ones run end to end with smoke-test settings. A benchmark that no longer imports after a
refactor would otherwise go unnoticed until someone needs its figures."""
import json
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name != "common.py")


def run(script: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS.parent)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_starts(script):
    done = run(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_scripts_are_found():
    assert {"bench_train_step.py", "profile_step.py", "bench_ops.py", "bench_optim.py"} <= set(SCRIPTS)


def test_profile_step_profiles_a_step_of_config_a(tmp_path):
    out = tmp_path / "profile.json"
    done = run("profile_step.py", "--config", "A", "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| Linear |" in done.stdout and "matrix products (BLAS)" in done.stdout
    assert json.loads(out.read_text())


def test_train_step_benchmark_runs_minillm_and_the_gemm_floor(tmp_path):
    done = run("bench_train_step.py", "--configs", "A", "--steps", "1", "--warmup", "1", "--rounds", "1",
               "--threads", "1", "--contenders", "minillm,gemm-floor", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| A ")]
    assert [row.split("|")[2].strip() for row in rows] == ["minillm", "gemm-floor"]
    assert "x" in rows[0].split("|")[9]          # minillm's step over the floor, e.g. "1.76x"
    assert list(tmp_path.glob("*.json")) and list(tmp_path.glob("*.md"))


def test_optimizer_benchmark_times_adamw_and_muon(tmp_path):
    done = run("bench_optim.py", "--rounds", "1", "--steps", "1", "--vocab", "64", "--n-embd", "16", "--layers", "1",
               "--threads", "1", "--contenders", "minillm,minillm-muon", "--ns-steps", "3", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| minillm")]
    assert labels == ["minillm AdamW", "minillm Muon (3 Newton-Schulz iterations)"]


def test_the_sweeps_chosen_recipe_is_the_main_jobs_defaults():
    """README: 'llama-4x192 vocab 4096 batch 16 muon wd 1.0 ns 3' of benchmarks/sweep_main_job.py is what
    `minillm train` runs with no options."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import sweep_main_job
    finally:
        sys.path.remove(str(BENCHMARKS))
    from minillm.commandline import load_config
    from minillm.train.config import TrainConfig

    chosen = load_config(TrainConfig, sweep_main_job.RECIPES["llama-4x192 vocab 4096 batch 16 muon wd 1.0 ns 3"])
    assert chosen == TrainConfig.create({})
    earlier = load_config(TrainConfig, sweep_main_job.RECIPES["gpt2-4x192 (old default)"])
    assert (earlier.model.preset, earlier.model.n_kv_head, earlier.data.vocab_size) == ("gpt2", 4, 1024)


def test_memory_ledger_benchmark_compares_recompute_on_config_a(tmp_path):
    done = run("memory_ledger.py", "--config", "A", "--steps", "1", "--rounds", "1", "--threads", "1",
               "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    comparison = done.stdout.split("### plain")[0]                  # the first table; the ledgers follow
    rows = {line.split("|")[1].strip(): line for line in comparison.splitlines() if line.startswith("| ")}
    assert {"saved activations", "recomputed activations", "measured peak", "step time, ms (median)"} <= set(rows)
    assert "-" in rows["saved activations"].split("|")[4]           # recompute keeps less
    assert "### recompute" in done.stdout and list(tmp_path.glob("*.json"))
