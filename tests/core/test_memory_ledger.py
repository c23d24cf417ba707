"""The memory ledger (minillm.profiler.memory_ledger): its categories against hand counts, unique
buffers counted once, the measured live bytes against the accounted ones, recomputation's
savings, and the ``minillm memory`` command."""
import json

import numpy as np
import pytest

import minillm as mm
from minillm import cli, profiler
from minillm import functional as F
from minillm.nn import GPT, GPTConfig, Linear, Module
from minillm.optim import AdamW
from minillm.tensor import Tensor

SHAPE = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.1)
IDS = np.random.default_rng(0).integers(0, 65, size=(4, 32))
TARGETS = np.random.default_rng(1).integers(0, 65, size=(4, 32))


def tiny_gpt(recompute_blocks=False):
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(**SHAPE))
    model.recompute = recompute_blocks
    return model


def ledger_of(model, warm_up=True):
    optimizer = AdamW(model.parameters(), lr=1e-3)

    def forward():
        return model(IDS, TARGETS)[1]

    if warm_up:                                   # the optimizer's state exists from the first step on
        forward().backward()
        optimizer.step()
        optimizer.zero_grad()
    return profiler.memory_ledger(model, forward, optimizer)


def test_parameters_gradients_and_adamw_state_equal_the_hand_count():
    model = tiny_gpt()
    ledger = ledger_of(model)
    c, v, t = SHAPE["n_embd"], SHAPE["vocab_size"], SHAPE["block_size"]
    per_block = 2 * 2 * c + 4 * (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)   # 2 LayerNorms, q k v o, MLP
    count = v * c + t * c + SHAPE["n_layer"] * per_block + 2 * c                        # + tok, pos, final norm
    assert ledger.info["parameters"] == count == model.num_parameters()
    assert ledger.categories["parameters"] == 4 * count                   # float32
    assert ledger.categories["gradients"] == 4 * count                    # one per parameter
    assert ledger.categories["optimizer_state"] == 2 * 4 * count          # AdamW m and v
    assert ledger.categories["buffers"] == 0                              # learned positions: no tables


def test_saved_activations_of_a_linear_and_a_tiny_mlp_equal_the_hand_count():
    mm.manual_seed(0)
    layer = Linear(8, 5)
    x = Tensor(np.ones((6, 8), dtype=np.float32), requires_grad=True)
    ledger = profiler.memory_ledger(layer, lambda: F.sum(layer(x)))
    # Linear keeps x (6x8 float32) and W (a parameter, counted as one); the sum keeps a shape
    assert ledger.categories["saved_activations"] == 6 * 8 * 4 + 4          # + the loss scalar
    assert ledger.by_op == {"Linear": 6 * 8 * 4}
    assert ledger.categories["gradients"] == 4 * (5 * 8 + 5)

    class TinyMLP(Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = Linear(8, 16), Linear(16, 8)

        def forward(self, x):
            return self.down(F.gelu(self.up(x)))

    mlp = TinyMLP()
    ledger = profiler.memory_ledger(mlp, lambda: F.sum(mlp(x)))
    # up keeps x (6x8); GELU (tanh) keeps its input and its output (6x16 each: it reads its gate
    # back from the output); down keeps GELU's output too, counted once, for GELU (it ran first)
    assert ledger.by_op == {"Linear": 4 * 6 * 8, "GELU": 2 * 4 * 6 * 16}
    assert ledger.by_module == {"up": 4 * 6 * 8, "(root)": 2 * 4 * 6 * 16}


def test_an_array_kept_by_two_ops_or_as_a_view_counts_once():
    mm.manual_seed(0)

    class Two(Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = Linear(8, 4), Linear(8, 4)

    model = Two()
    x = Tensor(np.ones((6, 8), dtype=np.float32), requires_grad=True)

    def forward():
        h = F.tanh(x)                             # a new (6, 8) array, kept by tanh (y) and both Linears
        flat = F.reshape(h, (3, 16))              # a view of it, kept by the product below
        return F.sum(model.first(h)) + F.sum(model.second(h)) + F.sum(flat * flat)

    ledger = profiler.memory_ledger(model, forward)
    assert ledger.by_op == {"Tanh": 6 * 8 * 4}    # h once, for tanh, the first op that kept it
    assert ledger.by_module == {"(no module)": 6 * 8 * 4}   # the Linears' h and Mul's view of h: nothing new


def test_measured_live_bytes_match_the_accounted_ones_on_a_tiny_model():
    ledger = ledger_of(tiny_gpt())
    m = ledger.measured
    assert m["meter"] == "tracemalloc"
    # Before backward everything alive is accounted for but the graph's Python objects (a few
    # hundred bytes per op): within 2% + 64 KiB.
    assert abs(m["live_before_backward"] - m["accounted_before_backward"]) <= 0.02 * m["accounted_before_backward"] + 2**16
    # The peak (inside backward) holds what backward has not freed yet plus gradients in flight
    # and op temporaries: at least the state before backward, and within 25% of every category at once.
    assert m["peak"] >= m["accounted_before_backward"]
    assert abs(m["unexplained"]) <= 0.25 * ledger.accounted_total
    assert m["peak_during"][2] == "backward"


def test_recompute_keeps_only_block_inputs_and_the_ledger_shows_the_saving():
    plain, recomputed = ledger_of(tiny_gpt()), ledger_of(tiny_gpt(True))
    rows, width = IDS.size, SHAPE["n_embd"]
    assert recomputed.by_op["Recompute"] == SHAPE["n_layer"] * rows * width * 4    # one (B, T, C) input per block
    assert not any(path.startswith("blocks.") and path.count(".") > 1 for path in recomputed.by_module)
    assert recomputed.categories["saved_activations"] < plain.categories["saved_activations"] / 2
    # a block rebuilt in backward keeps what one block of the plain graph keeps (the plain graph's
    # block 1 minus its input, which recompute holds as the checkpoint)
    block_1 = sum(size for path, size in plain.by_module.items() if path.startswith("blocks.1"))
    assert 0 < recomputed.categories["recomputed_activations"] <= block_1
    assert recomputed.measured["peak"] < plain.measured["peak"]
    for name in ("parameters", "gradients", "optimizer_state"):
        assert recomputed.categories[name] == plain.categories[name]


def test_ledger_round_trips_through_json_and_prints_its_tables(tmp_path):
    ledger = ledger_of(tiny_gpt())
    path = tmp_path / "ledger.json"
    ledger.save_json(path)
    again = profiler.MemoryLedger.from_dict(json.loads(path.read_text()))
    assert again.to_dict() == json.loads(path.read_text())
    text = again.table()
    for needle in ("| parameters |", "| **measured peak** |", "unexplained remainder", "| blocks.*.attn |",
                   "| ScaledDotProductAttention |", "at the start of backward"):
        assert needle in text
    with pytest.raises(ValueError, match="depth=0"):
        ledger.table(depth=0)
    with pytest.raises(ValueError, match="missing"):
        profiler.MemoryLedger.from_dict({"categories": {}})
    with pytest.raises(TypeError, match="expected the loss Tensor"):
        profiler.memory_ledger(tiny_gpt(), lambda: 1.0)


def test_memory_command_prints_the_ledger_and_writes_json(tmp_path, capsys):
    out = tmp_path / "ledger.json"
    args = ["memory", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--n_kv_head", "1", "--block_size", "16",
            "--vocab_size", "300", "--batch_size", "2", "--time_steps", "1", "--recompute", "--json", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "recompute on" in printed and "| recomputed activations |" in printed and "step time: median" in printed
    data = json.loads(out.read_text())
    assert data["info"]["recompute"] is True and data["by_op"]["Recompute"] == 2 * 16 * 32 * 4
    assert cli.main(args) == 2                    # the file is there: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def test_under_autocast_the_ops_wrapped_for_float32_are_looked_into():
    # InFloat32 runs a float32 op it holds: what that op keeps (the float16 logits, kept by the
    # cross-entropy) is counted, and the live bytes before backward are still all accounted for
    model = tiny_gpt()
    optimizer = AdamW(model.parameters(), lr=1e-3)

    def forward():
        with mm.amp.autocast("fp16"):
            return model(IDS, TARGETS)[1]

    forward().backward()
    optimizer.step()
    optimizer.zero_grad()
    ledger = profiler.memory_ledger(model, forward, optimizer)
    assert ledger.by_op["InFloat32(CrossEntropy)"] >= IDS.size * SHAPE["vocab_size"] * 2    # float16 logits
    m = ledger.measured
    assert abs(m["live_before_backward"] - m["accounted_before_backward"]) <= 0.02 * m["accounted_before_backward"] + 2**16


def test_ledger_on_the_gpu_code_path(gpu_device):
    # a real GPU under --backend cupy (the CuPy pool's meter), else the strict emulation
    model = tiny_gpt().to(gpu_device)
    ledger = ledger_of(model)
    count = model.num_parameters()
    assert ledger.categories["parameters"] == ledger.categories["gradients"] == 4 * count
    assert ledger.categories["optimizer_state"] == 8 * count
    assert ledger.categories["saved_activations"] > 0
    m = ledger.measured
    assert abs(m["live_before_backward"] - m["accounted_before_backward"]) <= 0.02 * m["accounted_before_backward"] + 2**16
