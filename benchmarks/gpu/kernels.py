"""The fused CUDA kernels against the composed CuPy code they replace, op by op, at GPT-2 small's
shapes (batch 8, context 1024, width 768, vocab 50304): forward + backward time and peak memory.

    python benchmarks/gpu/kernels.py                 # needs CuPy and a GPU
    python benchmarks/gpu/kernels.py --repeats 20 --out DIR

Both columns are minillm on the same GPU and process (one library, one allocator): "composed" is
the op's array code run by CuPy (``backend.use_fused_kernels(False)``), "fused" the kernels. Each
timing is the median of ``--repeats`` synchronised calls after 2 warm-ups; peak memory is the most
bytes held by live CuPy arrays during one call (a ``cupy.cuda.MemoryHook``), inputs included.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))


def cases(cp, mm, F, amp):
    """name -> (shape text, precision, callable running forward + backward once)."""
    import numpy as np

    rng = cp.random.RandomState(0)
    host_rng = np.random.default_rng(0)
    leaves = []

    def leaf(*shape, dtype=cp.float32, scale=1.0):
        array = rng.standard_normal(shape, dtype=cp.float32) * cp.float32(scale)
        leaves.append(mm.Tensor(array.astype(dtype), requires_grad=True))
        return leaves[-1]

    b, t, c, v, h = 8, 1024, 768, 50304, 12
    x_mlp, x_c = leaf(b, t, 4 * c), leaf(b, t, c)
    w, bias = leaf(c), leaf(c)
    a_swi, b_swi = leaf(b, t, 2048), leaf(b, t, 2048)
    logits = leaf(b * t, v, scale=2.0)
    targets = host_rng.integers(0, v, size=b * t)                # host targets, as the model passes them
    q, k, vv = leaf(b, h, t, c // h), leaf(b, h, t, c // h), leaf(b, h, t, c // h)
    table = leaf(v, c, scale=0.02)
    ids = host_rng.integers(0, v, size=(b, t))                    # host ids, as the model gets them

    def run(fn, precision="fp32"):
        def call():
            for tensor in leaves:                                  # no accumulation across calls
                tensor.grad = None
            with amp.autocast(precision):
                out = fn()
            out.backward(cp.ones(out.shape, dtype=out.dtype))
        return call

    params = [mm.Tensor(rng.standard_normal((768, 3072), dtype=cp.float32), requires_grad=True)
              for _ in range(48)]                                 # 113M float32 parameters
    for p in params:
        p.grad = cp.ones(p.shape, dtype=cp.float32) * 1e-3
    from minillm.optim import AdamW

    opt = AdamW(params, lr=1e-3, weight_decay=0.1)
    return {
        "gelu": ("(8, 1024, 3072)", "fp32", run(lambda: F.gelu(x_mlp))),
        "swiglu": ("(8, 1024, 2048) x 2", "fp32", run(lambda: F.swiglu(a_swi, b_swi))),
        "layer_norm": ("(8, 1024, 768)", "fp32", run(lambda: F.layer_norm(x_c, w, bias))),
        "layer_norm fp16": ("(8, 1024, 768)", "fp16", run(lambda: F.layer_norm(x_c, w, bias), "fp16")),
        "rms_norm": ("(8, 1024, 768)", "fp32", run(lambda: F.rms_norm(x_c, w))),
        "cross_entropy": ("(8192, 50304)", "fp32", run(lambda: F.cross_entropy(logits, targets))),
        "attention causal": ("(8, 12, 1024, 64)", "fp32", run(lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True))),
        "attention causal fp16": ("(8, 12, 1024, 64)", "fp16",
                                  run(lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True), "fp16")),
        "embedding": ("ids (8, 1024), table (50304, 768)", "fp32", run(lambda: F.embedding(ids, table))),
        "adamw step": ("48 x (768, 3072)", "fp32", lambda: opt.step()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import minillm as mm
    from minillm import amp, backend
    from minillm import functional as F

    cp = backend.cupy_module()
    if cp is None:
        print("kernels.py needs CuPy and an NVIDIA GPU")
        return 2
    from bench_train_step import CupyPeak
    from common import format_table

    rows, payload = [], {}
    for name, (shape, precision, call) in cases(cp, mm, F, amp).items():
        if args.only and name not in args.only.split(","):
            continue
        result = {}
        for mode in ("composed", "fused"):
            backend.use_fused_kernels(mode == "fused")
            try:
                for _ in range(2):
                    call()
                cp.cuda.Device().synchronize()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    call()
                    cp.cuda.Device().synchronize()
                    times.append(time.perf_counter() - start)
                peak = CupyPeak()
                with peak.hook:
                    call()
                    cp.cuda.Device().synchronize()
                result[mode] = {"ms": 1e3 * statistics.median(times), "peak_mib": peak.peak / 2 ** 20}
            except Exception as error:  # noqa: BLE001  (a failing case is reported, the others still run)
                result[mode] = {"error": f"{type(error).__name__}: {error}"[:500]}
        backend.use_fused_kernels(True)
        payload[name] = {"shape": shape, "precision": precision, **result}
        composed, fused = result["composed"], result["fused"]
        if "error" in composed or "error" in fused:
            rows.append([name, shape, composed.get("error", f"{composed.get('ms', 0):.2f}"),
                         fused.get("error", f"{fused.get('ms', 0):.2f}"), "", "", ""])
        else:
            rows.append([name, shape, composed["ms"], fused["ms"], f"{composed['ms'] / fused['ms']:.2f}x",
                         f"{composed['peak_mib']:.0f}", f"{fused['peak_mib']:.0f}"])
        print(f"{name}: {rows[-1][2:]}", flush=True)
    table = format_table(["op (fwd+bwd)", "shape", "composed ms", "fused ms", "speedup", "composed peak MiB",
                          "fused peak MiB"], rows)
    table += f"\nmedians of {args.repeats} synchronised calls; same GPU, same process"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kernels.json"), "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
        with open(os.path.join(args.out, "kernels.md"), "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
