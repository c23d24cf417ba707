"""The NCCL transport with a world of one GPU (a part of the GPU check, benchmarks/gpu/check.py).

    python3 benchmarks/gpu/nccl_smoke.py

1. ``NcclTransport`` bootstrapped as rank 0 of 1 (``nccl.get_unique_id`` -> JSON broadcast over
   the control transport -> ``NcclCommunicator(1, id, 0)``): sum all-reduce, reduce-scatter,
   all-gather and broadcast of CuPy float32 buffers, each checked against its expected values.
2. Training: four steps of a tiny GPT on the GPU, the plain loop vs the data-parallel loop over
   NCCL (world of one: same losses, to float32 tolerance) and vs ZeRO-1 over NCCL.

Prints ``RESULT {json}``; where CuPy or NCCL is missing it says so (``skipped``) and exits 0.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def collectives(transport, cupy) -> dict:
    checks = {}
    buffer = cupy.arange(1000, dtype=cupy.float32)
    transport.allreduce_sum_start(buffer).wait()
    checks["allreduce"] = bool(cupy.array_equal(buffer, cupy.arange(1000, dtype=cupy.float32)))
    copy = buffer.copy()
    handle, received = transport.reduce_scatter_sum_start(copy)
    handle.wait()
    checks["reduce_scatter"] = bool(cupy.array_equal(received, buffer))
    gathered = cupy.zeros(1000, dtype=cupy.float32)
    transport.allgather(buffer, gathered)
    checks["allgather"] = bool(cupy.array_equal(gathered, buffer))
    transport.broadcast(gathered, root=0)
    checks["broadcast"] = bool(cupy.array_equal(gathered, buffer))
    cupy.cuda.get_current_stream().synchronize()
    return checks


def training(transport, zero: int) -> list[float]:
    import numpy as np

    import minillm as mm
    from minillm.data import RandomWindowLoader
    from minillm.distributed import World, set_world
    from minillm.distributed.transport import LocalTransport
    from minillm.nn import GPT, GPTConfig
    from minillm.optim import AdamW, CosineSchedule, decay_groups
    from minillm.train import LoopSection, Trainer
    from minillm.train.pretrain import language_model_loss

    world = None
    if transport is not None:                   # a world of one whose device transport is NCCL
        world = World(rank=0, size=1, under_mpi=True)
        world._transports = {"cpu": LocalTransport(), "cuda": transport}
    previous = set_world(world)
    try:
        mm.manual_seed(0)
        model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
        model.to("cuda")
        optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3)
        tokens = np.random.default_rng(0).integers(0, 50, size=2000).astype(np.uint16)
        loader = RandomWindowLoader(tokens, batch_size=4, block_size=16, seed=0)
        loop = LoopSection(max_steps=4, eval_interval=10, log_interval=1, progress=False, out_dir="", device="cuda",
                           zero=zero)
        trainer = Trainer(model, optimizer, CosineSchedule(3e-3, 3e-4, 1, 4), loop, language_model_loss, loader)
        assert (trainer.parallel is not None) == (transport is not None or zero == 1)
        return [trainer.train_step()["loss"] for _ in range(4)]
    finally:
        set_world(previous)


def main() -> int:
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401
        cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001  (no GPU stack here: say why)
        print("RESULT " + json.dumps({"skipped": f"CuPy with NCCL is not usable here ({type(error).__name__}: "
                                                 f"{str(error)[:200]})"}))
        return 0
    from minillm.distributed.transport import LocalTransport, NcclTransport

    transport = NcclTransport(LocalTransport())
    result = {"collectives": collectives(transport, cupy)}
    plain = training(None, 0)
    over_nccl = training(transport, 0)
    zero = training(transport, 1)
    worst = max(max(abs(a - b) / abs(b) for a, b in zip(run, plain)) for run in (over_nccl, zero))
    result.update(plain=plain, nccl=over_nccl, nccl_zero1=zero, max_relative_difference=worst,
                  ok=all(result["collectives"].values()) and worst < 1e-5)
    print("RESULT " + json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
