"""Per-block activation recomputation (minillm.nn.recompute): the same loss and gradients as the
plain graph, bit for bit (the recomputed forward is the same arithmetic on the same arrays, the
dropout masks replayed from the saved generator state), with only each block's input kept."""
import numpy as np
import pytest

import minillm as mm
from minillm import amp, gradcheck, profiler
from minillm.backend import get_rng_state
from minillm.nn import GPT, GPTConfig, Linear, functional_call
from minillm.nn.recompute import Recompute, recompute
from minillm.optim import AdamW
from minillm.tensor import Tensor
from minillm.train.config import LoopSection
from minillm.train.trainer import Trainer

SHAPE = dict(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.2)


def tiny_gpt(preset: str, recompute_blocks: bool, seed: int = 3, **overrides) -> GPT:
    mm.manual_seed(seed)
    extra = {"n_kv_head": 1} if preset == "llama" else {}
    model = GPT(getattr(GPTConfig, preset)(**{**SHAPE, **extra, **overrides}))
    model.recompute = recompute_blocks
    return model


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 40, size=(3, 12)), rng.integers(0, 40, size=(3, 12))


def loss_and_grads(preset: str, recompute_blocks: bool, precision: str = "fp32"):
    model = tiny_gpt(preset, recompute_blocks)
    idx, targets = batch()
    with amp.autocast(precision):
        _, loss = model(idx, targets)
    loss.backward()
    return float(loss.item()), {n: p.grad for n, p in model.named_parameters()}, get_rng_state()


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_recomputed_blocks_give_bit_identical_loss_gradients_and_random_stream(preset, precision):
    # Bit-identical (not within a tolerance): each op of the recomputed forward runs on the same
    # arrays as the first forward, the dropout masks come from the same generator state, and the
    # engine sums the block input's two gradient contributions in the same order.
    plain_loss, plain_grads, plain_rng = loss_and_grads(preset, False, precision)
    loss, grads, rng = loss_and_grads(preset, True, precision)
    assert loss == plain_loss
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        np.testing.assert_array_equal(grads[name], plain_grads[name], err_msg=name)
    assert rng == plain_rng        # the rest of training sees the same random numbers


def test_recompute_with_dropout_actually_draws_masks_and_replays_them():
    # dropout > 0 changes the loss against dropout 0 (masks are drawn) and recomputation still
    # matches the plain graph: so the replay, not the absence of randomness, makes them equal
    with_dropout = loss_and_grads("gpt2", True)[0]
    model = tiny_gpt("gpt2", True, dropout=0.0)
    idx, targets = batch()
    assert model(idx, targets)[1].item() != with_dropout


def test_loss_curves_match_over_steps_with_adamw():
    curves, finals = [], []
    for recompute_blocks in (False, True):
        model = tiny_gpt("gpt2", recompute_blocks)
        optimizer = AdamW(model.parameters(), lr=1e-2)
        losses = []
        for step in range(4):
            idx, targets = batch(step)
            _, loss = model(idx, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.item()))
        curves.append(losses)
        finals.append({n: p.data.copy() for n, p in model.named_parameters()})
    assert curves[0] == curves[1]
    assert curves[0][0] != curves[0][-1]              # it trained
    for name in finals[0]:
        np.testing.assert_array_equal(finals[0][name], finals[1][name], err_msg=name)


def test_gradcheck_through_a_recomputed_block_with_dropout():
    # float64 finite differences with a random upstream gradient, through Recompute, w.r.t. the
    # block input, a weight and a bias. Each evaluation reseeds, so every forward draws the same
    # dropout masks; backward's recomputation must replay exactly those masks to match.
    model = tiny_gpt("gpt2", True, dropout=0.3).to_dtype(np.float64)
    block = model.blocks[0]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 16))
    names = ["attn.q_proj.weight", "mlp.up_proj.bias"]
    weights = [dict(block.named_parameters())[n].data.copy() for n in names]

    def run(x, wq, wu):
        mm.manual_seed(7)
        with functional_call(block, dict(zip(names, (wq, wu)))):
            y = recompute(block, x, 0)
        assert isinstance(y.grad_fn, Recompute) or not mm.is_grad_enabled()   # finite differences: no graph
        return y

    assert gradcheck(run, [x, *weights], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_the_graph_keeps_only_each_blocks_input():
    model = tiny_gpt("gpt2", True)
    idx, targets = batch()
    _, loss = model(idx, targets)
    nodes = profiler.graph_nodes(loss)
    recomputed = [fn for fn in nodes if isinstance(fn, Recompute)]
    assert len(recomputed) == 2
    assert all(fn.module is block for fn, block in zip(recomputed, model.blocks))
    # nothing from inside a block is in the graph: its ops ran under no_grad
    assert not any(type(fn).__name__ in ("ScaledDotProductAttention", "GELU") for fn in nodes)
    for fn in recomputed:
        assert [a.shape for a in profiler.saved_arrays(fn)] == [(3, 12, 16)]


def test_frozen_input_still_trains_the_blocks_parameters():
    # x needs no gradient (a frozen embedding, as under LoRA): the block's parameters still get theirs
    grads = []
    for recompute_blocks in (False, True):
        model = tiny_gpt("gpt2", recompute_blocks)
        model.tok_emb.weight.requires_grad = False
        model.pos_emb.weight.requires_grad = False
        idx, targets = batch()
        model(idx, targets)[1].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)


def test_without_gradients_recompute_is_a_plain_call_and_constants_must_not_need_gradients():
    layer = Linear(4, 3)
    x = Tensor(np.ones((2, 4), dtype=np.float32))
    with mm.no_grad():
        assert recompute(layer, x).grad_fn is None
    with pytest.raises(TypeError, match="x must be a Tensor"):
        recompute(layer, np.ones((2, 4)))
    with pytest.raises(ValueError, match="only x may require a gradient"):
        recompute(lambda a, b: a, x, Tensor(np.ones(2, dtype=np.float32), requires_grad=True))


def test_generation_with_recompute_on_is_unchanged():
    model = tiny_gpt("gpt2", True).eval()
    plain = tiny_gpt("gpt2", False).eval()
    prompt = np.array([[1, 2, 3]])
    assert np.array_equal(model.generate(prompt, 5, temperature=0), plain.generate(prompt, 5, temperature=0))


def test_trainer_turns_recompute_on_and_refuses_a_model_without_it():
    model = tiny_gpt("gpt2", False)
    loop = LoopSection(out_dir="", progress=False, recompute=True)
    Trainer(model, AdamW(model.parameters()), lambda step: 1e-3, loop, None, None)
    assert model.recompute is True
    layer = Linear(3, 3)
    with pytest.raises(ValueError, match="loop.recompute=True: Linear has no per-block recomputation"):
        Trainer(layer, AdamW(layer.parameters()), lambda step: 1e-3, loop, None, None)


def test_the_profiler_counts_recomputed_ops_once_each_time_they_run():
    model = tiny_gpt("gpt2", True)
    idx, targets = batch()
    with profiler.profile(model) as prof:
        model(idx, targets)[1].backward()
    ops = prof.grouped("op")
    assert ops["Recompute"]["calls"] == 2
    assert ops["Recompute"]["forward_s"] == ops["Recompute"]["backward_s"] == 0.0   # its ops are timed themselves
    assert ops["GELU"]["calls"] == 4 and ops["GELU"]["backward_calls"] == 2         # each block's forward ran twice
    assert "blocks.*.mlp" in prof.grouped("module", depth=3, merge_indices=True)


def test_recompute_on_the_gpu_code_path_is_bit_identical(gpu_device):
    # the fused CUDA kernels (GELU, norms, attention without stored weights) on a real GPU
    # (--backend cupy); the strict emulation of the device otherwise
    results = []
    for recompute_blocks in (False, True):
        model = tiny_gpt("gpt2", recompute_blocks).to(gpu_device)
        idx, targets = batch()
        loss = model(idx, targets)[1]
        loss.backward()
        results.append((float(loss.item()), {n: p.grad.copy() for n, p in model.named_parameters()}))
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        assert bool((grad == results[1][1][name]).all()), name
