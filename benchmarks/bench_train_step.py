"""One training step (forward + backward + AdamW) of a GPT-2-preset model: minillm vs PyTorch
eager, side by side, the same thread count, float32 or mixed precision.

    python benchmarks/bench_train_step.py                         # configs A,B,C, 10 steps each
    python benchmarks/bench_train_step.py --configs B --steps 20 --threads 2
    python benchmarks/bench_train_step.py --no-torch --no-memory  # minillm alone, timing only
    python benchmarks/bench_train_step.py --precision fp16        # minillm.amp vs torch.autocast
    python benchmarks/bench_train_step.py --device cuda           # CuPy vs PyTorch CUDA (needs a GPU)

Precision: "fp32", or mixed "fp16"/"bf16" -- minillm under ``amp.autocast`` (fp16 with
``amp.GradScaler``: scale, unscale, inf check, step, update), PyTorch under ``torch.autocast``
(fp16 with ``torch.amp.GradScaler``). On the host minillm *emulates* both formats (see
minillm/amp.py: float32 BLAS on rounded values), so expect fp16/bf16 to be slower than fp32
there; the memory column is what fp16 is for on a CPU.

Configs (GPT-2 preset: LayerNorm, learned positions, GELU, tied head, biases; dropout 0):

    A: vocab 65,   block 64,  batch 12, 4 layers, 4 heads, 128 wide
    B: vocab 4096, block 128, batch 16, 6 layers, 6 heads, 192 wide
    C: vocab 65,   block 256, batch 8,  6 layers, 6 heads, 384 wide

Method
- Time: both models start from the same weights and see the same batch. After warm-up steps,
  each timed round runs one minillm step and one PyTorch step (the order flips every round, so
  neither always follows the other), and the medians and their ratio are reported. Thread
  counts: OPENBLAS/OMP/MKL_NUM_THREADS are set before NumPy loads, and torch.set_num_threads.
- Other load: the CPU seconds that *other* processes used during each timed step come from
  /proc/stat minus this process's own CPU time; the table says how busy the machine was and a
  warning is printed when it was not idle (a 2-core machine slows a step 5-25x then: re-run).
- Throughput: tokens/s = B·T / step time; GFLOP/s from ``GPT.flops_per_token`` (6N + 12·L·T·C,
  see its docstring) and its fraction of the machine's matmul peak: the best 2048³ float32
  matmul measured with NumPy and with PyTorch, before and after the runs (each library's own
  peak is recorded too).
- Peak memory: each contender runs in its own subprocess (same threads). After imports, the
  batch, and one warm-up step of a tiny model (deleted again: lazy library initialisation is
  not the model's memory), the resident set (VmRSS) is read and the kernel's high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``); the model and optimizer are built and 3 steps run;
  the peak is VmHWM minus that baseline, so it counts parameters, gradients, optimizer state,
  activations and allocator slack alike for both libraries. For minillm the peak of the NumPy
  allocations themselves (tracemalloc, to which NumPy reports) is given as well.
  On --device cuda: torch.cuda.max_memory_allocated and CuPy's memory-pool total instead.

Results are written to benchmarks/results/train_step_<time>.json and .md (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

CONFIGS = {
    "A": dict(vocab_size=65, block_size=64, batch=12, n_layer=4, n_head=4, n_embd=128),
    "B": dict(vocab_size=4096, block_size=128, batch=16, n_layer=6, n_head=6, n_embd=192),
    "C": dict(vocab_size=65, block_size=256, batch=8, n_layer=6, n_head=6, n_embd=384),
}
WARMUP_CONFIG = dict(vocab_size=65, block_size=8, batch=2, n_layer=1, n_head=2, n_embd=16)
TARGET_TIME_RATIO = {"A": 2.0, "B": 1.3, "C": 1.3}
TARGET_MEMORY_RATIO = 1.3
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / intra-op threads for both")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="fp32, or mixed precision fp16 / bf16 (minillm.amp, torch.autocast)")
    parser.add_argument("--no-torch", action="store_true", help="time minillm alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", choices=("minillm", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown config(s) {unknown}; expected a subset of {list(CONFIGS)}")
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be positive")
    return args


def set_threads(threads: int) -> None:
    """Must run before NumPy (or torch) is imported: BLAS reads these once."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


# ---------------------------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------------------------
def _shape(name: str) -> dict:
    return WARMUP_CONFIG if name == "warmup" else CONFIGS[name]


def gpt_config(name: str):
    from minillm.nn import GPTConfig

    shape = {k: v for k, v in _shape(name).items() if k != "batch"}
    return GPTConfig.gpt2(**shape, dropout=0.0)


def make_batch(name: str):
    import numpy as np

    cfg = _shape(name)
    rng = np.random.default_rng(0)
    size = (cfg["batch"], cfg["block_size"])
    return rng.integers(0, cfg["vocab_size"], size=size), rng.integers(0, cfg["vocab_size"], size=size)


class MinillmStep:
    """minillm: logits, loss = model(idx, targets); backward; AdamW step; zero_grad (under
    amp.autocast for fp16/bf16; fp16 with the GradScaler's scale/unscale/step/update)."""

    def __init__(self, name: str, device: str, precision: str = "fp32"):
        import minillm as mm
        from minillm import amp
        from minillm.nn import GPT

        mm.manual_seed(0)
        self.model = GPT(gpt_config(name)).to(device)
        from minillm.optim import AdamW

        self.opt = AdamW(self.model.parameters(), **ADAMW)
        self.device, self.precision, self.amp = device, precision, amp
        self.scaler = amp.GradScaler() if precision == "fp16" else None

    def set_batch(self, idx, targets):
        from minillm.backend import to_device

        self.idx, self.targets = to_device(idx, self.device), to_device(targets, self.device)

    def __call__(self):
        if self.precision == "fp32":
            _, loss = self.model(self.idx, self.targets)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            return loss
        with self.amp.autocast(self.precision):
            _, loss = self.model(self.idx, self.targets)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad()
        return loss

    def sync(self):
        from minillm.backend import synchronize

        synchronize(self.device)


def torch_model(cfg):
    """PyTorch eager GPT with the same architecture and parameter names as minillm's GPT-2
    preset (nanoGPT style; attention through F.scaled_dot_product_attention)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            c, kv = cfg.n_embd, cfg.n_kv_head * cfg.head_dim
            self.q_proj, self.k_proj = nn.Linear(c, c, bias=cfg.bias), nn.Linear(c, kv, bias=cfg.bias)
            self.v_proj, self.o_proj = nn.Linear(c, kv, bias=cfg.bias), nn.Linear(c, c, bias=cfg.bias)

        def forward(self, x):
            b, t, c = x.shape
            q = self.q_proj(x).view(b, t, cfg.n_head, cfg.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, t, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, t, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=cfg.n_kv_head != cfg.n_head)
            return self.o_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.up_proj = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
            self.down_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

        def forward(self, x):
            return self.down_proj(F.gelu(self.up_proj(x), approximate=cfg.gelu_approximate))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.norm_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.tok_emb(idx) + self.pos_emb.weight[:t]
            for block in self.blocks:
                x = block(x)
            logits = self.norm_f(x) @ self.tok_emb.weight.T      # tied head
            loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), targets.view(-1), ignore_index=-100)
            return logits, loss

    assert cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.tie_weights
    return GPT()


class TorchStep:
    """PyTorch eager: the same model, weights and batch; torch.optim.AdamW (its default
    implementation for the device)."""

    def __init__(self, name: str, device: str, threads: int, weights: dict | None, precision: str = "fp32"):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.model = torch_model(gpt_config(name))
        if weights is not None:
            self.model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
        self.device = "cuda" if device == "cuda" else "cpu"
        self.model.to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), **ADAMW)
        self.precision = precision
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device) if precision == "fp16" else None

    def set_batch(self, idx, targets):
        self.idx = self.torch.from_numpy(idx).to(self.device)
        self.targets = self.torch.from_numpy(targets).to(self.device)

    def __call__(self):
        if self.dtype is None:
            _, loss = self.model(self.idx, self.targets)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            return loss
        with self.torch.autocast(self.device, dtype=self.dtype):
            _, loss = self.model(self.idx, self.targets)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def matmul_peaks(device: str, with_torch: bool) -> dict:
    """GFLOP/s of a 2048³ float32 matmul (best of 10) for NumPy/CuPy and for PyTorch."""
    from minillm.backend import module_for_device, random_normal, synchronize

    n, peaks = 2048, {}
    xp = module_for_device(device)
    a = random_normal((n, n), "float32", device)
    for _ in range(2):
        xp.matmul(a, a)
    best = float("inf")
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        xp.matmul(a, a)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    peaks["minillm"] = 2 * n ** 3 / best / 1e9
    if with_torch:
        import torch

        t = torch.randn(n, n, device="cuda" if device == "cuda" else "cpu")
        for _ in range(2):
            t @ t
        best = float("inf")
        for _ in range(10):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            t @ t
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peaks["torch"] = 2 * n ** 3 / best / 1e9
    return peaks


def time_config(name: str, args) -> dict:
    from common import OtherCpu

    idx, targets = make_batch(name)
    contenders = {"minillm": MinillmStep(name, args.device, args.precision)}
    if not args.no_torch:
        weights = {k: _host(v) for k, v in contenders["minillm"].model.state_dict().items()}
        contenders["torch"] = TorchStep(name, args.device, args.threads, weights, args.precision)
    for step in contenders.values():
        step.set_batch(idx, targets)
    first_losses = {}
    for label, step in contenders.items():
        for i in range(args.warmup):
            loss = step()
            if i == 0:
                first_losses[label] = float(loss.item())
        step.sync()
    times = {label: [] for label in contenders}
    others = {label: [] for label in contenders}
    order = list(contenders)
    with OtherCpu() as whole:
        for round_index in range(args.steps):
            for label in (order if round_index % 2 == 0 else order[::-1]):
                step = contenders[label]
                with OtherCpu() as load:
                    step()
                    step.sync()
                times[label].append(load.wall)
                others[label].append(load.other_cores)
    return {"times": times, "other_cores": others, "whole_other_cores": whole.other_cores,
            "whole_other_cpu_s": whole.other, "first_loss": first_losses}


def _host(array):
    from minillm.backend import to_numpy

    return to_numpy(array)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(args) -> None:
    """Runs in a subprocess: peak memory of 3 training steps of one contender, printed as JSON."""
    import tracemalloc

    import gc

    name = args.configs[0]
    idx, targets = make_batch(name)
    # Warm the library up first (lazy kernel/thread-pool initialisation is not the model's
    # memory): one step of a tiny model, then drop it before the baseline is read.
    warm = MinillmStep("warmup", args.device, args.precision) if args.memory_child == "minillm" else \
        TorchStep("warmup", args.device, args.threads, None, args.precision)
    warm.set_batch(*make_batch("warmup"))
    warm()
    warm.sync()
    del warm
    gc.collect()
    baseline = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")                       # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    result = {"baseline_rss_mib": baseline / 1024, "hwm_reset": hwm_reset}
    if args.memory_child == "minillm":
        tracemalloc.start()
        step = MinillmStep(name, args.device, args.precision)
    else:
        step = TorchStep(name, args.device, args.threads, None, args.precision)
    step.set_batch(idx, targets)
    for _ in range(3):
        step()
    step.sync()
    result["peak_rss_delta_mib"] = (_status_kib("VmHWM") - baseline) / 1024
    if args.memory_child == "minillm":
        result["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        if args.device == "cuda":
            from minillm.backend import cupy_module

            result["device_pool_mib"] = cupy_module().get_default_memory_pool().total_bytes() / 2 ** 20
    elif args.device == "cuda":
        import torch

        result["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("MEMORY " + json.dumps(result))


def measure_memory(name: str, contender: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--configs", name, "--threads",
               str(args.threads), "--device", args.device, "--precision", args.precision,
               "--memory-child", contender]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    for line in done.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    raise RuntimeError(f"memory subprocess for {contender} on {name} failed:\n{done.stderr[-2000:]}")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    import platform
    import statistics

    import numpy as np

    from common import format_table, save_results

    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: timing minillm alone (pip install torch==2.13.0)")
            with_torch = False
        if with_torch and args.device == "cuda" and not torch.cuda.is_available():
            print("this PyTorch build has no CUDA: timing minillm (CuPy) alone")
            with_torch = False
    peaks = matmul_peaks(args.device, with_torch)
    machine_peak = max(peaks.values())
    print(f"matmul peak (first measurement) (2048^3 float32, {args.threads} threads): "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    rows, payload = [], {"args": vars(args), "numpy": np.__version__, "matmul_peak_gflops": peaks,
                         "machine": platform.processor() or platform.machine(), "configs": {}}
    if with_torch:
        payload["torch"] = torch.__version__
    warnings = []
    for name in args.configs:
        args.no_torch = not with_torch
        result = time_config(name, args)
        from minillm.nn import GPT

        cfg = gpt_config(name)
        tokens = CONFIGS[name]["batch"] * cfg.block_size
        flops = GPT(cfg).flops_per_token() * tokens
        entry = {"config": CONFIGS[name], "tokens_per_step": tokens, "flops_per_step": flops, **result}
        medians = {k: statistics.median(v) for k, v in result["times"].items()}
        if not args.no_memory:
            entry["memory"] = {k: measure_memory(name, k, args) for k in result["times"]}
        for label, seconds in medians.items():
            gflops = flops / seconds / 1e9
            busy = statistics.median(result["other_cores"][label])
            row = [name, label, seconds * 1e3, tokens / seconds, gflops, gflops / machine_peak]
            if label == "minillm" and "torch" in medians:
                row.append(f"{seconds / medians['torch']:.2f}x (target <= {TARGET_TIME_RATIO[name]}x)")
            else:
                row.append("")
            memory = entry.get("memory", {}).get(label)
            if memory:
                mem = f"{memory['peak_rss_delta_mib']:.0f}"
                if "tracemalloc_peak_mib" in memory:
                    mem += f" (numpy {memory['tracemalloc_peak_mib']:.0f})"
                row.append(mem)
                if label == "minillm" and "torch" in entry["memory"]:
                    ratio = memory["peak_rss_delta_mib"] / entry["memory"]["torch"]["peak_rss_delta_mib"]
                    row.append(f"{ratio:.2f}x (target <= {TARGET_MEMORY_RATIO}x)")
                else:
                    row.append("")
            else:
                row += ["", ""]
            row.append(f"{busy:.2f}")
            rows.append(row)
        entry["median_ms"] = {k: v * 1e3 for k, v in medians.items()}
        payload["configs"][name] = entry
        if result["whole_other_cores"] > 0.1:
            warnings.append(f"config {name}: other processes kept {result['whole_other_cores']:.2f} cores "
                            "busy on average while it was timed: the machine was not idle, re-run")
    # Measured again at the end: a burst of load during either measurement lowers it, and the
    # peak is the best the machine did.
    for label, value in matmul_peaks(args.device, with_torch).items():
        peaks[label] = max(peaks[label], value)
    if max(peaks.values()) > machine_peak:
        machine_peak = max(peaks.values())
        for row in rows:
            row[5] = row[4] / machine_peak
    headers = ["cfg", "who", "ms/step (median)", "tokens/s", "GFLOP/s", "of peak", "time ratio",
               "peak MiB", "memory ratio", "other cores"]
    table = format_table(headers, rows)
    payload["matmul_peak_gflops"] = peaks
    note = (f"\n{args.threads} threads, {args.device}, {args.precision}, {args.steps} timed steps per contender "
            f"(alternating) after {args.warmup} warm-up; machine matmul peak {machine_peak:.1f} GFLOP/s; "
            "'other cores' = median cores that other processes used during a step.")
    text = table + note + "".join("\nWARNING: " + w for w in warnings)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = save_results(f"train_step_{stamp}", payload, text)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
