"""One training step (forward + backward + AdamW) of a GPT-2-preset model: minillm vs PyTorch
eager, each contender in a fresh process of its own, float32 or mixed precision, CPU or GPU.

    python benchmarks/bench_train_step.py                          # configs A,B,C on the CPU, 3 rounds
    python benchmarks/bench_train_step.py --configs B --steps 20 --threads 2
    python benchmarks/bench_train_step.py --device cuda --configs C,G --precision fp16
    python benchmarks/bench_train_step.py --device cuda --configs G --contenders minillm,minillm-composed,torch
    python benchmarks/bench_train_step.py --no-torch               # minillm alone

Contenders: "minillm"; "gemm-floor" (CPU: the step's matrix products alone in NumPy -- see
GemmFloorStep -- the floor any NumPy implementation of the step sits above); "minillm-composed" (the GPU without the fused CUDA kernels, MINILLM_FUSED=0:
the composed array code the kernels replace); "torch" (PyTorch eager, the same architecture and
weights, torch.optim.AdamW with its default implementation for the device).

Precision: "fp32" (no TF32 for either on a GPU: CuPy's default, and PyTorch's
``torch.backends.cuda.matmul.allow_tf32 = False``, its default too), or mixed "fp16"/"bf16" --
minillm under ``amp.autocast`` (fp16 with ``amp.GradScaler``: scale, unscale, inf check, step,
update), PyTorch under ``torch.autocast`` (fp16 with ``torch.amp.GradScaler``). minillm's bf16 is
emulated on float32 arrays (values rounded to bfloat16, float32 GEMMs: see minillm/amp/), PyTorch's
is real bfloat16; on the host minillm emulates fp16 too.

Configs (GPT-2 preset: LayerNorm, learned positions, GELU, tied head, biases; dropout 0):

    A: vocab 65,    block 64,   batch 12, 4 layers,  4 heads,  128 wide
    B: vocab 4096,  block 128,  batch 16, 6 layers,  6 heads,  192 wide
    C: vocab 65,    block 256,  batch 8,  6 layers,  6 heads,  384 wide
    G: vocab 50304, block 1024, batch 8,  12 layers, 12 heads, 768 wide (GPT-2 small, 124M; a GPU's)

Method
- Every contender runs in a fresh process of its own (never two libraries' thread pools or
  allocators in one process), with the thread count set before NumPy/PyTorch load. Rounds
  alternate the order of the contenders (A B, B A, ...); each process builds the model (minillm's
  GPT-2 initialisation with seed 0; PyTorch copies those weights), runs ``--warmup`` untimed steps
  and then ``--steps`` timed ones, each synchronised with the device. The table gives the median
  over every timed step of every round and the spread of the per-round medians.
- Other load (CPU): the CPU seconds that other processes used during the timed steps, from
  /proc/stat minus the process's own; a warning when the machine was not idle.
- Throughput: tokens/s = B·T / step time; TFLOP/s from ``GPT.flops_per_token`` (6N + 12·L·T·C).
- Peak memory. CPU: the process's resident high-water mark (VmHWM) minus its resident set once
  the library was imported (so the model, optimizer state, activations and allocator slack count
  alike, and neither library's own code does), and beside it the whole process's high-water mark
  (library included: what the machine must have). GPU, over 2 more steps after the timed ones: the peak of the bytes held by live arrays -- minillm: CuPy's pool allocations tracked by a
  ``cupy.cuda.MemoryHook`` (512-byte rounded sizes) on top of what was live when it started;
  PyTorch: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` -- both count
  parameters, gradients, optimizer state and activations; the pools' reserved bytes are recorded too.

Results: benchmarks/results/train_step_<time>.json and .md (git-ignored), or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import common  # noqa: E402  (imports neither NumPy nor torch: the children set threads first)

CONFIGS = {
    "A": dict(vocab_size=65, block_size=64, batch=12, n_layer=4, n_head=4, n_embd=128),
    "B": dict(vocab_size=4096, block_size=128, batch=16, n_layer=6, n_head=6, n_embd=192),
    "C": dict(vocab_size=65, block_size=256, batch=8, n_layer=6, n_head=6, n_embd=384),
    "G": dict(vocab_size=50304, block_size=1024, batch=8, n_layer=12, n_head=12, n_embd=768),
}
TARGET_TIME_RATIO = {("cpu", "fp32"): {"A": 1.15, "B": 1.0, "C": 1.0},
                     ("cuda", "fp32"): {"C": 1.2, "G": 1.2},
                     ("cuda", "fp16"): {"C": 1.3, "G": 1.3}, ("cuda", "bf16"): {"C": 1.3, "G": 1.3}}
TARGET_FLOOR_RATIO = {"C": 1.15}     # minillm's step over the GEMM-only floor (CPU, fp32)
TARGET_MEMORY_RATIO = {"cpu": 0.8, "cuda": 1.2}
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CONTENDERS = ("minillm", "minillm-composed", "torch", "gemm-floor")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="A,B,C", help="comma-separated subset of A,B,C,G")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (one process each)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / intra-op threads for both")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="fp32, or mixed precision fp16 / bf16 (minillm.amp, torch.autocast)")
    parser.add_argument("--contenders", default="minillm,torch,gemm-floor",
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--no-torch", action="store_true", help="time minillm alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory steps")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender process")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown config(s) {unknown}; expected a subset of {list(CONFIGS)}")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad:
        parser.error(f"--contenders: unknown {bad}; expected a subset of {list(CONTENDERS)}")
    if args.no_torch:
        args.contenders = [c for c in args.contenders if c != "torch"]
    if args.steps < 1 or args.threads < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps, --threads and --rounds must be positive, --warmup >= 0")
    if args.device == "cuda":
        args.contenders = [c for c in args.contenders if c != "gemm-floor"]   # a host (NumPy) measure
    if "minillm-composed" in args.contenders and args.device != "cuda":
        parser.error("--contenders minillm-composed: the fused kernels exist only on a GPU (--device cuda)")
    return args


# ---------------------------------------------------------------------------------------------
# The contenders (each runs in a child process)
# ---------------------------------------------------------------------------------------------
def gpt_config(name: str):
    from minillm.nn import GPTConfig

    shape = {k: v for k, v in CONFIGS[name].items() if k != "batch"}
    return GPTConfig.gpt2(**shape, dropout=0.0)


def make_batch(name: str):
    import numpy as np

    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    size = (cfg["batch"], cfg["block_size"])
    return rng.integers(0, cfg["vocab_size"], size=size), rng.integers(0, cfg["vocab_size"], size=size)


def host_model(name: str):
    """minillm's GPT-2 initialisation with seed 0, on the host (both contenders start from it)."""
    import minillm as mm
    from minillm.nn import GPT

    mm.manual_seed(0)
    return GPT(gpt_config(name))


class MinillmStep:
    """minillm: logits, loss = model(idx, targets); backward; AdamW step; zero_grad (under
    amp.autocast for fp16/bf16; fp16 with the GradScaler's scale/unscale/step/update)."""

    def __init__(self, name: str, device: str, precision: str = "fp32"):
        from minillm import amp
        from minillm.optim import AdamW

        self.model = host_model(name).to(device)
        self.opt = AdamW(self.model.parameters(), **ADAMW)
        self.device, self.precision, self.amp = device, precision, amp
        self.scaler = amp.GradScaler() if precision == "fp16" else None
        # host batches, as a data loader gives them: the model checks and moves them
        self.idx, self.targets = make_batch(name)

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

    def __init__(self, name: str, device: str, threads: int, precision: str = "fp32"):
        import torch

        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False            # fp32 means fp32 (the default)
        torch.backends.cudnn.allow_tf32 = False
        self.torch = torch
        self.model = torch_model(gpt_config(name))
        weights = {k: v for k, v in host_model(name).state_dict().items()}
        self.model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
        self.device = "cuda" if device == "cuda" else "cpu"
        self.model.to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), **ADAMW)
        self.precision = precision
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device) if precision == "fp16" else None
        idx, targets = make_batch(name)
        self.idx = torch.from_numpy(idx).to(self.device)
        self.targets = torch.from_numpy(targets).to(self.device)

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


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class CupyPeak:
    """Peak bytes held by live CuPy arrays while active (a MemoryHook on the default pool)."""

    def __init__(self):
        import cupy

        pool = cupy.get_default_memory_pool()
        self.start = self.current = self.peak = pool.used_bytes()
        owner = self

        class Hook(cupy.cuda.MemoryHook):
            name = "minillm_peak"

            def malloc_postprocess(self, **kwargs):
                owner.current += kwargs["mem_size"]
                owner.peak = max(owner.peak, owner.current)

            def free_postprocess(self, **kwargs):
                owner.current -= kwargs["mem_size"]

        self.hook = Hook()


class GemmFloorStep:
    """The GEMM-only floor: the matrix products of one forward + backward of the same model, and
    nothing else, timed alone with NumPy (float32, outputs preallocated, no autograd, no
    elementwise work). Per block, with M = B·T rows, D = C / H and G = B·H attention matrices:

        q, k, v, out projections (C -> C) and the MLP (C -> 4C -> C), each a Linear y = x Wᵀ:
            forward  y = x Wᵀ (M×in · in×out);  backward dx = dy W,  dW = dyᵀ x
        attention: S = Q Kᵀ and O = A V (G × T×D·D×T, G × T×T·T×D); backward dA = dO Vᵀ,
            dV = Aᵀ dO, dQ = dS K, dK = dSᵀ Q (full T×T products: the floor of an uncausal step)

    and the tied head once (M×C · C×V forward, dx and dW backward). A training step can only be
    slower than this; how much slower is the cost of everything that is not a matrix product."""

    def __init__(self, name: str):
        import numpy as np

        cfg = CONFIGS[name]
        batch, seq, width, heads = cfg["batch"], cfg["block_size"], cfg["n_embd"], cfg["n_head"]
        rows, head_size, groups = batch * seq, width // heads, batch * heads
        rng = np.random.default_rng(0)

        def rand(*shape):
            return rng.standard_normal(shape, dtype=np.float32)

        # (a, b, out): each product a @ b written into out; transposed views are what BLAS is handed
        # in the real step too (x Wᵀ, dyᵀ x), so no copies are timed.
        self.products = []

        def linear(n_in, n_out):
            x, w, dy = rand(rows, n_in), rand(n_out, n_in), rand(rows, n_out)
            self.products += [(x, w.T, np.empty((rows, n_out), np.float32)),
                              (dy, w, np.empty((rows, n_in), np.float32)),
                              (dy.T, x, np.empty((n_out, n_in), np.float32))]

        for _ in range(cfg["n_layer"]):
            for n_in, n_out in ((width, width),) * 4 + ((width, 4 * width), (4 * width, width)):
                linear(n_in, n_out)
            q, k, v, grad_out = (rand(groups, seq, head_size) for _ in range(4))
            weights, grad_scores = rand(groups, seq, seq), rand(groups, seq, seq)
            square, tall = (lambda: np.empty((groups, seq, seq), np.float32),
                            lambda: np.empty((groups, seq, head_size), np.float32))
            self.products += [(q, k.transpose(0, 2, 1), square()), (weights, v, tall()),
                              (grad_out, v.transpose(0, 2, 1), square()),
                              (weights.transpose(0, 2, 1), grad_out, tall()),
                              (grad_scores, k, tall()), (grad_scores.transpose(0, 2, 1), q, tall())]
        linear(width, cfg["vocab_size"])
        self.matmul = np.matmul

    def __call__(self):
        for a, b, out in self.products:
            self.matmul(a, b, out=out)

    def sync(self):
        pass


def measure_memory(step, contender: str, device: str, baseline_kib: int) -> dict:
    """Peak memory (see the module docstring): on the GPU over 2 more steps; on the CPU the
    process's resident high-water mark above its size once the library was imported."""
    import gc

    gc.collect()
    step.sync()
    if device == "cuda" and contender == "torch":
        torch = step.torch
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        step.sync()
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20,
                "reserved_mib": torch.cuda.max_memory_reserved() / 2 ** 20}
    if device == "cuda":
        import cupy

        peak = CupyPeak()
        with peak.hook:
            for _ in range(2):
                step()
            step.sync()
        return {"peak_mib": peak.peak / 2 ** 20, "reserved_mib": cupy.get_default_memory_pool().total_bytes() / 2 ** 20}
    hwm = _status_kib("VmHWM")
    return {"peak_mib": (hwm - baseline_kib) / 1024, "process_peak_mib": hwm / 1024,
            "baseline_rss_mib": baseline_kib / 1024}


def child(args) -> None:
    """One contender in this process: warm-up, timed steps, memory; prints one JSON line."""
    name = args.configs[0]
    # Each library is imported before the baseline, so "peak" counts the model's memory (weights,
    # optimizer state, activations, allocator slack), not the library's own code and tables.
    if args.child == "torch":
        import torch  # noqa: F401
    elif args.child == "gemm-floor":
        import numpy  # noqa: F401
    else:
        import minillm  # noqa: F401  (it imports NumPy after minillm.host: see there)
    if args.child != "torch" and args.device == "cuda":
        from minillm.backend import cupy_module

        cupy_module()
    baseline_kib = _status_kib("VmRSS")
    if args.child == "torch":
        step = TorchStep(name, args.device, args.threads, args.precision)
    elif args.child == "gemm-floor":
        step = GemmFloorStep(name)
    else:
        step = MinillmStep(name, args.device, args.precision)
    first_loss = None
    for i in range(args.warmup):
        loss = step()
        if i == 0 and loss is not None:
            first_loss = float(loss.item())
    step.sync()
    times, others = [], []
    for _ in range(args.steps):
        with common.OtherCpu() as load:
            step()
            step.sync()
        times.append(load.wall)
        others.append(load.other_cores)
    result = {"times": times, "other_cores": others, "first_loss": first_loss}
    if args.child not in ("torch", "gemm-floor"):
        result["host"] = common.minillm_host()
    if not args.no_memory and args.child != "gemm-floor":
        result["memory"] = measure_memory(step, args.child, args.device, baseline_kib)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(name: str, contender: str, args) -> dict:
    argv = ["--configs", name, "--threads", str(args.threads), "--device", args.device, "--precision",
            args.precision, "--steps", str(args.steps), "--warmup", str(args.warmup), "--child", contender]
    if args.no_memory:
        argv.append("--no-memory")
    return common.run_script_child(__file__, argv, args.threads, args.timeout,
                                   {"MINILLM_FUSED": "0" if contender == "minillm-composed" else "1"})


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        child(args)
        return 0
    import platform

    contenders = list(args.contenders)
    if "torch" in contenders:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise ImportError
        except ImportError:
            print("torch is not installed: timing minillm alone")
            contenders.remove("torch")
    payload = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "machine": platform.processor()
               or platform.machine(), "tf32": False, "configs": {}}
    rows, warnings, host_notes = [], [], set()
    for name in args.configs:
        runs = common.alternate_rounds(contenders, args.rounds, lambda c: run_child(name, c, args),
                                       label=f"config {name} ",
                                       describe=lambda r: f"median {1e3 * statistics.median(r['times']):.1f} ms")
        from minillm.nn import GPT

        cfg = gpt_config(name)
        tokens = CONFIGS[name]["batch"] * cfg.block_size
        flops = GPT(cfg, device="cpu").flops_per_token() if name != "G" else _gpt2_small_flops(cfg)
        flops *= tokens
        entry = {"config": CONFIGS[name], "tokens_per_step": tokens, "flops_per_step": flops, "runs": runs}
        medians, memory, good_host = {}, {}, {}
        for contender, results in runs.items():
            good = [r for r in results if "error" not in r]
            pooled = common.summarise(results)
            if not good:
                entry.setdefault("errors", {})[contender] = pooled["errors"]
                continue
            medians[contender], busy = pooled["median"], pooled["other_cores"]
            entry.setdefault("summary", {})[contender] = {
                "median_ms": medians[contender] * 1e3, "round_medians_ms": [m * 1e3 for m in pooled["round_medians"]],
                "first_loss": good[0]["first_loss"], "other_cores": busy}
            if "memory" in good[0]:
                memory[contender] = good[0]["memory"]
            if "host" in good[0]:
                good_host[contender] = good[0]["host"]
                host_notes.add(f"minillm host threads {good[0]['host']['threads']}, glibc malloc tuned: "
                               f"{good[0]['host']['allocator_tuned']}, OPENBLAS_THREAD_TIMEOUT="
                               f"{good[0]['host']['OPENBLAS_THREAD_TIMEOUT']}")
            if busy > common.BUSY_CORES:
                warnings.append(f"config {name} {contender}: other processes kept {busy:.2f} cores busy: re-run")
        targets = TARGET_TIME_RATIO.get((args.device, args.precision), {})
        for contender, seconds in medians.items():
            spread = entry["summary"][contender]["round_medians_ms"]
            first_loss = entry["summary"][contender]["first_loss"]
            row = [name, contender, seconds * 1e3, f"{min(spread):.1f}-{max(spread):.1f}", tokens / seconds,
                   flops / seconds / 1e12, "" if first_loss is None else first_loss]
            if contender.startswith("minillm") and "torch" in medians:
                ratio = seconds / medians["torch"]
                target = targets.get(name)
                row.append(f"{ratio:.2f}x" + (f" (target <= {target}x)" if target else ""))
            else:
                row.append("")
            floor = medians.get("gemm-floor")
            if floor and contender != "gemm-floor":
                ratio = seconds / floor
                entry["summary"][contender]["vs_gemm_floor"] = ratio
                target = TARGET_FLOOR_RATIO.get(name) if contender.startswith("minillm") else None
                row.append(f"{ratio:.2f}x" + (f" (target <= {target}x)" if target else ""))
            else:
                row.append("")
            mem = memory.get(contender)
            row.append("" if mem is None else f"{mem['peak_mib']:.0f}")
            if mem is not None and contender != "torch" and "torch" in memory:
                ratio = mem["peak_mib"] / memory["torch"]["peak_mib"]
                row.append(f"{ratio:.2f}x (target <= {TARGET_MEMORY_RATIO[args.device]}x)")
            else:
                row.append("")
            if mem is not None and "process_peak_mib" in mem:   # CPU: the whole process, library included
                whole = f"{mem['process_peak_mib']:.0f}"
                if contender != "torch" and "process_peak_mib" in memory.get("torch", {}):
                    whole += f" ({mem['process_peak_mib'] / memory['torch']['process_peak_mib']:.2f}x)"
                row.append(whole)
            else:
                row.append("")
            row.append(f"{entry['summary'][contender]['other_cores']:.2f}")
            rows.append(row)
            host = good_host.get(contender)
            if host:
                entry["summary"][contender]["host"] = host
        payload["configs"][name] = entry
    headers = ["cfg", "who", "ms/step (median)", "round medians", "tokens/s", "TFLOP/s", "first loss",
               "time ratio", "vs GEMM floor", "peak MiB", "memory ratio", "process peak MiB", "other cores"]
    table = common.format_table(headers, rows)
    note = (f"\n{args.device}, {args.precision}, {args.threads} threads; {args.rounds} alternating rounds x "
            f"{args.steps} timed steps per contender (each its own process) after {args.warmup} warm-up; "
            "no TF32; 'vs GEMM floor' = the step over the gemm-floor contender (the step's matrix products "
            "alone, NumPy); 'other cores' = median CPU cores that other processes used during a step; 'peak MiB' = the "
            "step's resident high-water mark above the process once its library was imported; 'process peak "
            "MiB' = the whole process's (library included)." + "".join(f"\n{n}." for n in sorted(host_notes)))
    text = table + note + "".join("\nWARNING: " + w for w in warnings)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = f"train_step_{args.device}_{args.precision}_{stamp}"
    print(f"results: {common.save_results(label, payload, text, args.out)}")
    return 0


def _gpt2_small_flops(cfg) -> int:
    """flops_per_token without building 124M parameters on the host: 6N + 12·L·T·C."""
    c, layers, hidden = cfg.n_embd, cfg.n_layer, 4 * cfg.n_embd
    per_layer = 4 * c * c + 2 * c * hidden                       # q, k, v, o and the two MLP matrices
    n = layers * per_layer + cfg.vocab_size * c                  # + the (tied) head
    return 6 * n + 12 * layers * cfg.block_size * c


if __name__ == "__main__":
    sys.exit(main())
