"""Where one GPT-2 small training step spends its GPU time, op by op: minillm's op profiler and,
for comparison, torch.profiler on PyTorch eager (each in its own process).

    python benchmarks/gpu/profile_step.py minillm fp32        # or fp16 / bf16
    python benchmarks/gpu/profile_step.py torch fp32

minillm: ``minillm.profiler.profile()`` around one forward + backward (the device synchronised
around every op, so each row is that op's kernels plus its Python overhead), then the optimizer
step timed alone. PyTorch: ``torch.profiler`` with CUDA activity around one whole step, the
operators sorted by their CUDA time. Both after 2 warm-up steps, config G of bench_train_step.py.
"""
from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("minillm", "torch") or argv[1] not in ("fp32", "fp16", "bf16"):
        print("usage: profile_step.py minillm|torch fp32|fp16|bf16")
        return 2
    who, precision = argv
    from bench_train_step import MinillmStep, TorchStep

    if who == "torch":
        import torch

        step = TorchStep("G", "cuda", 8, precision)
        for _ in range(2):
            step()
        step.sync()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            step.sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
        return 0
    from minillm import profiler

    step = MinillmStep("G", "cuda", precision)
    for _ in range(2):
        step()
    step.sync()
    model, opt, amp = step.model, step.opt, step.amp
    with profiler.profile() as prof:
        with amp.autocast(precision):
            _, loss = model(step.idx, step.targets)
        (loss * (step.scaler.get_scale() if step.scaler else 1.0)).backward()
    step.sync()
    start = time.perf_counter()
    opt.step()
    step.sync()
    optimizer_ms = 1e3 * (time.perf_counter() - start)
    opt.zero_grad()
    print(prof.table(limit=18))
    print(f"optimizer step (AdamW, fused kernel per parameter): {optimizer_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
