"""The GPU check: one prepared run on a bare GPU machine that proves the CuPy path and measures it.

    benchmarks/gpu/check.sh OUT_DIR                    # from the repository root; OUT_DIR optional
    python3 benchmarks/gpu/check.py OUT_DIR --budget 420 --only env,tests,train_g_fp32

It uses the installed packages only (Python 3.12 with cupy-cuda13x, numpy, torch, transformers,
pytest; nothing is downloaded) and runs these parts, each in a subprocess with its own time limit,
in this order (a part that cannot finish inside ``--budget`` seconds is skipped, and says so):

  env            GPU, driver, CUDA, CuPy, NumPy, PyTorch versions; whether CuPy takes bfloat16
  nccl           nccl_smoke.py: the NCCL transport as rank 0 of 1 (collectives checked) and four
                 training steps over it (plain vs data-parallel vs ZeRO-1: the same losses)
  nccl_mpiexec   ``mpiexec -n 1 minillm train --device cuda`` (NCCL bootstrapped over real MPI), with
                 and without --zero 1, 20 steps against the plain run (needs mpiexec on PATH)
  tests          pytest --backend cupy --device-tests-only (every device-parametrised test)
  train_g_fp32   bench_train_step.py, GPT-2 small (config G), fp32: minillm, minillm-composed, torch
  train_g_fp16   config G in fp16 (loss scaling): minillm, torch
  train_g_bf16   config G in bf16: minillm, torch
  profile        profile_step.py: one config-G step op by op, minillm's profiler and torch.profiler
  kernels        kernels.py: each fused kernel vs the composed CuPy code, GPT-2 small shapes
  generate       bench_generate_hf.py: cached greedy generation vs HF transformers, batch 1 and 8
  parity20       20 steps of the main job on the machine's CPU and GPU, loss by loss
  mainjob        the main job with --device cuda (600 steps) against the CPU reference run
                 (main_job_cpu.json) at every evaluation
  train_c        config C in fp32 and fp16: minillm, torch

Everything lands in OUT_DIR (or ./gpu_check): check.json (every part: status, seconds, parsed
results), check.md (the tables), check.log (each part's output) and tests.log (pytest's). Written
after every part, so a run cut short keeps what it finished.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH = os.path.join(ROOT, "benchmarks")
PY = sys.executable

PROBE = r"""
import json, platform, subprocess
info = {"python": platform.python_version()}
try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
except Exception as error:
    info["nvidia_smi"] = repr(error)
import numpy
info["numpy"] = numpy.__version__
try:
    import cupy
    info["cupy"] = cupy.__version__
    info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info["sm_count"] = props["multiProcessorCount"]
    info["memory_gib"] = props["totalGlobalMem"] / 2 ** 30
    try:
        import ml_dtypes
        a = cupy.asarray(numpy.ones((4, 4), dtype=ml_dtypes.bfloat16))
        info["cupy_bfloat16"] = f"arrays: yes, dtype {a.dtype}"
        try:
            info["cupy_bfloat16"] += f"; matmul: {(a @ a).dtype}"
        except Exception as error:
            info["cupy_bfloat16"] += f"; matmul: no ({type(error).__name__}: {str(error)[:120]})"
    except Exception as error:
        info["cupy_bfloat16"] = f"no ({type(error).__name__}: {str(error)[:160]})"
except Exception as error:
    info["cupy"] = f"unusable: {error!r}"
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
except Exception as error:
    info["torch"] = repr(error)
try:
    import transformers
    info["transformers"] = transformers.__version__
except Exception as error:
    info["transformers"] = repr(error)
print("RESULT " + json.dumps(info))
"""


class Check:
    def __init__(self, out_dir: str, budget: float):
        self.out_dir, self.deadline = out_dir, time.monotonic() + budget
        self.summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget, "parts": {}}
        self.markdown: list[str] = []
        os.makedirs(out_dir, exist_ok=True)
        self.log_path = os.path.join(out_dir, "check.log")
        open(self.log_path, "w", encoding="utf-8").close()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, part: str, command: list[str], limit: float, env: dict | None = None, log_name: str | None = None):
        """Run one command with min(limit, what is left); returns (status, output)."""
        allowed = min(limit, self.left() - 5)
        if allowed < min(30.0, limit):
            self.record(part, {"status": "skipped", "why": f"only {self.left():.0f} s of the budget left"})
            return "skipped", "", 0.0
        start = time.monotonic()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=allowed, cwd=ROOT, env=environment)
            output, status = done.stdout + done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired as expired:
            output = _text(expired.stdout) + _text(expired.stderr)
            status = f"timed out after {allowed:.0f} s"
        seconds = time.monotonic() - start
        with open(os.path.join(self.out_dir, log_name) if log_name else self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== {part}: {' '.join(command)}\n===== {status} in {seconds:.1f} s\n{output[-200000:]}\n")
        print(f"[{part}] {status} in {seconds:.1f} s", flush=True)
        return status, output, seconds

    def record(self, part: str, entry: dict, table: str | None = None) -> None:
        self.summary["parts"][part] = entry
        if table:
            self.markdown.append(f"## {part}\n\n{table}\n")
        elif entry.get("status") != "ok":
            self.markdown.append(f"## {part}\n\n{entry.get('status')}: {entry.get('why', '')}\n")
        self.save()

    def save(self) -> None:
        self.summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(os.path.join(self.out_dir, "check.json"), "w", encoding="utf-8") as handle:
            json.dump(self.summary, handle, indent=1, default=str)
        with open(os.path.join(self.out_dir, "check.md"), "w", encoding="utf-8") as handle:
            handle.write("# GPU check\n\n" + "\n".join(self.markdown))


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _result_line(output: str):
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def part_env(check: Check) -> None:
    status, output, seconds = check.run("env", [PY, "-c", PROBE], 120)
    info = _result_line(output) or {}
    table = "\n".join(f"- {k}: {v}" for k, v in info.items())
    check.record("env", {"status": status, "seconds": seconds, **info}, table)
    print(table, flush=True)


def part_tests(check: Check) -> None:
    command = [PY, "-m", "pytest", "--backend", "cupy", "--device-tests-only", "-q", "-rfE", "--tb=short"]
    try:
        import xdist  # noqa: F401

        command += ["-n", "6"]                                   # kernel compilation in parallel
    except ImportError:
        pass
    result = check.run("tests", command, 200, log_name="tests.log")
    if result[0] == "skipped":
        return
    status, output, seconds = result
    summary = next((line for line in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed)", line)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary)}
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    table = f"pytest --backend cupy --device-tests-only: {counts or status}\n\n" + "\n".join(f"- {f}" for f in failed[:60])
    check.record("tests", {"status": status, "seconds": seconds, "counts": counts, "failed": failed}, table)


def part_train(check: Check, part: str, configs: str, precision: str, contenders: str, limit: float,
               steps: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [PY, os.path.join(BENCH, "bench_train_step.py"), "--device", "cuda", "--configs", configs,
                   "--precision", precision, "--contenders", contenders, "--rounds", "1", "--steps", str(steps),
                   "--warmup", "2", "--threads", "8", "--out", tmp, "--timeout", str(limit)]
        result = check.run(part, command, limit)
        if result[0] == "skipped":
            return
        status, output, seconds = result
        payload, table = _read_outputs(tmp)
    check.record(part, {"status": status, "seconds": seconds, "results": payload}, table or output[-3000:])


def _read_outputs(folder: str):
    payload, tables = {}, []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                payload[name] = json.load(handle)
        elif name.endswith(".md"):
            with open(path, encoding="utf-8") as handle:
                tables.append(handle.read())
    return payload, "\n".join(tables)


def part_generate(check: Check) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [PY, os.path.join(BENCH, "bench_generate_hf.py"), "--device", "cuda", "--batches", "1,8",
                   "--prompt", "64", "--new-tokens", "128", "--repeats", "3", "--threads", "8", "--out", tmp]
        result = check.run("generate", command, 150)
        if result[0] == "skipped":
            return
        status, output, seconds = result
        payload, table = _read_outputs(tmp)
    check.record("generate", {"status": status, "seconds": seconds, "results": payload}, table or output[-3000:])


def _metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# 20 steps of the main job (warmup 5), every step's loss logged, one evaluation, no samples
SHORT_MAIN_JOB = ["--max_steps", "20", "--warmup_steps", "5", "--log_interval", "1", "--eval_interval", "20",
                  "--sample_tokens", "0", "--progress", "false"]


def _train_losses(out_dir: str) -> list[float]:
    """The per-step training losses a ``minillm train --out_dir out_dir`` run logged."""
    return [r["loss"] for r in _metrics(os.path.join(out_dir, "metrics.jsonl")) if r.get("kind") == "train"]


def part_mainjob(check: Check) -> None:
    """The whole main job on the GPU against the CPU reference run, at every evaluation."""
    with open(os.path.join(ROOT, "benchmarks", "gpu", "main_job_cpu.json"), encoding="utf-8") as handle:
        reference = json.load(handle)
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "full")
        status, output, seconds = check.run("mainjob", [PY, "-m", "minillm", "train", "--device", "cuda",
                                                        "--out_dir", full, "--progress", "false"], 150)
        if status == "skipped":
            return
        evals = [r for r in _metrics(os.path.join(full, "metrics.jsonl")) if r.get("kind") == "eval"]
    lines = [f"`minillm train --device cuda`: {status}, {seconds:.1f} s wall (the CPU reference: "
             f"{reference['wall_s']:.0f} s on {reference['machine']})\n",
             "| step | val loss GPU | val loss CPU | bits/byte GPU | bits/byte CPU | relative difference |",
             "|---|---|---|---|---|---|"]
    cpu = {r["step"]: r for r in reference["eval"]}
    for r in evals:
        ref = cpu.get(r["step"])
        if ref:
            diff = abs(r["val_bpb"] - ref["val_bpb"]) / ref["val_bpb"]
            lines.append(f"| {r['step']} | {r['val_loss']:.4f} | {ref['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                         f"{ref['val_bpb']:.4f} | {diff:.1e} |")
    check.record("mainjob", {"status": status, "wall_s": seconds, "eval": evals}, "\n".join(lines))


def part_parity20(check: Check) -> None:
    """20 steps of the main job on this machine's CPU and on its GPU, loss by loss."""
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ("cpu", "cuda"):
            folder = os.path.join(tmp, device)
            status = check.run(f"parity20_{device}", [PY, "-m", "minillm", "train", "--device", device,
                                                      "--out_dir", folder, *SHORT_MAIN_JOB], 120)[0]
            losses[device] = _train_losses(folder)
    if not (losses.get("cpu") and losses.get("cuda")):
        check.record("parity20", {"status": f"incomplete: {status}", "losses": losses})
        return
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses["cuda"], losses["cpu"]))
    check.record("parity20", {"status": "ok", "cpu": losses["cpu"], "cuda": losses["cuda"],
                              "max_relative_difference": worst},
                 f"20 steps (warmup 5) on this machine's CPU and GPU: largest relative difference of the "
                 f"per-step training losses {worst:.2e} over {len(losses['cuda'])} steps (first losses "
                 f"{losses['cpu'][0]:.6f} cpu, {losses['cuda'][0]:.6f} cuda)")


def part_profile(check: Check) -> None:
    """One GPT-2 small step op by op: minillm's profiler and torch.profiler, fp32 and fp16."""
    tables, entry = [], {}
    for who in ("minillm", "torch"):
        for precision in ("fp32", "fp16"):
            name = f"profile_{who}_{precision}"
            status, output, seconds = check.run(name, [PY, os.path.join(BENCH, "gpu", "profile_step.py"), who,
                                                       precision], 60)
            if status == "skipped":
                continue
            entry[name] = status
            body = output.strip()
            table_start = body.find("| op |") if who == "minillm" else body.find("---")
            tables.append(f"### {who} {precision} ({status})\n\n```\n{body[max(0, table_start - 200):][-6000:]}\n```\n")
    check.record("profile", {"status": "ok" if entry else "skipped", **entry}, "\n".join(tables) or None)


def part_nccl(check: Check) -> None:
    """The data-parallel NCCL transport with a world of one GPU (benchmarks/gpu/nccl_smoke.py)."""
    status, output, seconds = check.run("nccl", [PY, os.path.join(BENCH, "gpu", "nccl_smoke.py")], 120)
    if status == "skipped":
        return
    result = _result_line(output) or {}
    if "skipped" in result:
        check.record("nccl", {"status": "skipped", "why": result["skipped"]})
        return
    table = (f"NCCL world of one: collectives {result.get('collectives')}; 4 training steps plain vs data-parallel "
             f"over NCCL vs ZeRO-1 over NCCL: largest relative loss difference "
             f"{result.get('max_relative_difference', float('nan')):.2e} (ok: {result.get('ok')})")
    check.record("nccl", {"status": status, "seconds": seconds, **result}, table)


# The GPU machine runs commands as root, which Open MPI's mpiexec refuses unless told (MPICH ignores these).
ROOT_ALLOWED = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def part_nccl_mpiexec(check: Check) -> None:
    """The launch users type, ``mpiexec -n 1 minillm train --device cuda``: the NCCL communicator
    bootstrapped over real MPI, 20 steps of the main job plain, under mpiexec, and under mpiexec
    with ``--zero 1``, loss by loss, all three with AdamW (ZeRO-1 shards AdamW's moments; the main
    job's Muon runs in ``parity20``). Needs an ``mpiexec`` on PATH (the ``mpich`` wheel has one)."""
    launcher = os.environ.get("MINILLM_MPIEXEC") or shutil.which("mpiexec")
    if not launcher:
        check.record("nccl_mpiexec", {"status": "skipped", "why": "no mpiexec on PATH (pip install mpich, or set "
                                                                  "MINILLM_MPIEXEC)"})
        return
    runs = {"plain": [], "mpiexec": [launcher, "-n", "1"], "mpiexec_zero1": [launcher, "-n", "1"]}
    losses, logs, statuses = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, prefix in runs.items():
            extra = ["--zero", "1"] if name.endswith("zero1") else []
            folder = os.path.join(tmp, name)
            status, output, _ = check.run(f"nccl_mpiexec_{name}", [*prefix, PY, "-m", "minillm", "train",
                                                                   "--device", "cuda", "--out_dir", folder,
                                                                   *SHORT_MAIN_JOB, "--optimizer", "adamw",
                                                                   *extra], 120,
                                          env=ROOT_ALLOWED)
            statuses[name] = status
            logs[name] = [line for line in output.splitlines() if line.startswith("data parallel:")]
            losses[name] = _train_losses(folder)
    if not all(len(v) == 20 for v in losses.values()):
        check.record("nccl_mpiexec", {"status": f"incomplete: {statuses}", "losses": losses, "logs": logs})
        return
    worst = {name: max(abs(a - b) / abs(b) for a, b in zip(losses[name], losses["plain"]))
             for name in ("mpiexec", "mpiexec_zero1")}
    over_nccl = all(any("over nccl" in line for line in logs[name]) for name in worst) and not logs["plain"]
    ok = over_nccl and max(worst.values()) < 1e-5
    check.record("nccl_mpiexec", {"status": "ok" if ok else "failed", "max_relative_difference": worst,
                                  "logs": logs, "losses": losses},
                 f"`{os.path.basename(launcher)} -n 1 minillm train --device cuda` (20 steps of the main job) vs the "
                 f"plain run: largest relative loss difference {worst['mpiexec']:.2e}, with --zero 1 "
                 f"{worst['mpiexec_zero1']:.2e}; the run's log: {logs['mpiexec'][:1]} / {logs['mpiexec_zero1'][:1]} "
                 f"(ok: {ok})")


def part_kernels(check: Check) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = check.run("kernels", [PY, os.path.join(BENCH, "gpu", "kernels.py"), "--out", tmp], 150)
        if result[0] == "skipped":
            return
        status, output, seconds = result
        payload, table = _read_outputs(tmp)
    check.record("kernels", {"status": status, "seconds": seconds, "results": payload}, table or output[-3000:])


PARTS = {
    "env": part_env,
    "nccl": part_nccl,
    "nccl_mpiexec": part_nccl_mpiexec,
    "tests": part_tests,
    "train_g_fp32": lambda c: part_train(c, "train_g_fp32", "G", "fp32", "minillm,torch,minillm-composed", 150),
    "train_g_fp16": lambda c: part_train(c, "train_g_fp16", "G", "fp16", "minillm,torch", 100),
    "train_g_bf16": lambda c: part_train(c, "train_g_bf16", "G", "bf16", "minillm,torch", 100),
    "profile": part_profile,
    "kernels": part_kernels,
    "generate": part_generate,
    "parity20": part_parity20,
    "mainjob": part_mainjob,
    "train_c": lambda c: (part_train(c, "train_c_fp32", "C", "fp32", "minillm,torch", 60, steps=10),
                          part_train(c, "train_c_fp16", "C", "fp16", "minillm,torch", 60, steps=10)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="gpu_check", help="where the results go (default ./gpu_check)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    parser.add_argument("--only", default="", help=f"comma-separated parts: {','.join(PARTS)}")
    args = parser.parse_args(argv)
    only = [p for p in args.only.split(",") if p]
    unknown = [p for p in only if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown parts {unknown}; expected some of {list(PARTS)}")
    check = Check(args.out_dir, args.budget)
    for name, part in PARTS.items():
        if only and name not in only:
            continue
        try:
            part(check)
        except Exception as error:  # noqa: BLE001  (one broken part must not lose the others' results)
            check.record(name, {"status": f"check error: {type(error).__name__}: {error}"})
    check.save()
    print(f"results in {os.path.abspath(args.out_dir)}: check.md, check.json, check.log, tests.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
