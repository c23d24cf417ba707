"""The profiler: per op type and module path it records calls, time, bytes and FLOPs, and it
changes no result."""
import json

import numpy as np
import pytest

import minillm as mm
from minillm import amp, profiler
from minillm import functional as F
from minillm.nn import GPT, GPTConfig, Linear
from minillm.ops.attention import ScaledDotProductAttentionCuda


def tiny_gpt(preset="gpt2", **overrides):
    mm.manual_seed(0)
    shape = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return GPT(getattr(GPTConfig, preset)(**{**shape, **overrides}))


IDS = np.random.default_rng(0).integers(0, 50, size=(2, 16))


def profiled_step(net, **options):
    with profiler.profile(**options) as prof:
        _, loss = net(IDS, IDS)
        loss.backward()
    return prof, loss


def records(prof):
    return {(r["op"], r["module"]): r for r in prof.to_dict()["records"]}


def test_profile_records_forward_and_backward_per_op_type_and_changes_nothing():
    results = []
    for profiled in (False, True):
        model = tiny_gpt()
        if profiled:
            prof, loss = profiled_step(model)
        else:
            _, loss = model(IDS, IDS)
            loss.backward()
        results.append((loss.item(), {name: p.grad.copy() for name, p in model.named_parameters()}))
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        np.testing.assert_array_equal(grad, results[1][1][name], err_msg=name)   # bit for bit
    ops = prof.to_dict()["ops"]
    assert ops["Linear"]["calls"] == ops["Linear"]["backward_calls"] == 2 * 6 + 1   # q k v o up down; the head
    assert ops["LayerNorm"]["calls"] == 2 * 2 + 1
    assert ops["CrossEntropy"]["backward_s"] > 0 and ops["ScaledDotProductAttention"]["calls"] == 2
    assert 0 < prof.total_s() <= prof.wall_s and prof.steps == 1
    table = prof.table(limit=3)
    assert table.count("\n| ") == 3 and "% of wall" in table and "GFLOP/s" in table
    assert mm.autograd._profiler is None                          # removed on exit


def test_ops_know_their_module_path_and_backward_goes_to_the_same_path():
    prof, _ = profiled_step(tiny_gpt())
    rows = records(prof)
    attention = rows[("ScaledDotProductAttention", "blocks.0.attn")]
    assert attention["calls"] == 1 and attention["backward_calls"] == 1 and attention["backward_s"] > 0
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
        linear = rows[("Linear", f"blocks.0.attn.{projection}")]
        assert linear["calls"] == linear["backward_calls"] == 1
    assert rows[("Embedding", "tok_emb")]["backward_calls"] == 1
    assert rows[("CrossEntropy", "")]["calls"] == 1               # computed in GPT.forward: the root
    assert rows[("Linear", "")]["calls"] == 1                     # the tied head: F.linear in the root
    # every op that ran forward in a module ran backward there too, nowhere else
    assert all(r["calls"] == r["backward_calls"] for r in rows.values())
    assert "blocks.0.attn" in prof.to_dict()["modules"] and "(root)" in prof.to_dict()["modules"]


def test_module_paths_are_the_same_with_the_model_given_and_shared_modules_go_by_their_caller():
    model = tiny_gpt("llama")                                     # one RotaryEmbedding in every layer
    named, _ = profiled_step(model, model=model)
    model.zero_grad()
    derived, _ = profiled_step(model)
    assert set(records(named)) == set(records(derived))
    paths = {path for _, path in records(named)}
    assert {"blocks.0.attn.rotary", "blocks.1.attn.rotary", "blocks.1.mlp.gate_proj", "lm_head"} <= paths
    with profiler.profile(model=model) as prof:
        (model.lm_head(mm.randn(2, 16)) * 2.0).sum().backward()   # a submodule alone; ops outside modules
    paths = {path for _, path in records(prof)}
    assert paths == {"lm_head", None}
    assert "(no module)" in prof.table(group_by="module")


def test_module_table_groups_by_depth_and_merges_layers():
    prof, _ = profiled_step(tiny_gpt())
    full = prof.grouped("module")
    merged = prof.grouped("module", depth=3, merge_indices=True)
    assert set(merged) == {"(root)", "tok_emb", "pos_emb", "norm_f", "blocks.*", "blocks.*.norm1",
                           "blocks.*.attn", "blocks.*.norm2", "blocks.*.mlp"}
    attn = sum(e["forward_s"] for name, e in full.items() if name.startswith(("blocks.0.attn", "blocks.1.attn")))
    assert merged["blocks.*.attn"]["forward_s"] == pytest.approx(attn)
    assert merged["blocks.*.attn"]["calls"] == sum(e["calls"] for name, e in full.items() if ".attn" in name)
    assert set(prof.grouped("module", depth=1)) == {"(root)", "tok_emb", "pos_emb", "norm_f", "blocks"}
    table = prof.table(group_by="module", depth=3, merge_indices=True, sort_by="flops")
    assert "| blocks.*.attn |" in table and "BLAS share" in table


def test_bytes_count_new_arrays_only(device):
    layer = Linear(8, 6, device=device)
    x = mm.randn(3, 5, 8, device=device, requires_grad=True)
    with profiler.profile() as prof:
        y = layer(x)                                              # (3, 5, 6) float32: a view of a fresh (15, 6)
        z = F.transpose(F.reshape(y, (15, 6)), (1, 0))            # views: nothing new
        z.sum().backward()
    rows = records(prof)
    linear = rows[("Linear", "")]
    assert linear["forward_bytes"] == 15 * 6 * 4
    assert linear["backward_bytes"] == (15 * 8 + 6 * 8 + 6) * 4   # dL/dx, dL/dW, dL/db
    assert rows[("Reshape", None)]["forward_bytes"] == 0 and rows[("Transpose", None)]["forward_bytes"] == 0
    assert rows[("Reshape", None)]["backward_bytes"] == 0         # the gradient reshaped back: a view


def test_flops_follow_the_product_formulas():
    x = mm.randn(3, 5, 8, requires_grad=True)
    w = mm.randn(6, 8, requires_grad=True)
    frozen = mm.randn(6, 8)
    a, b = mm.randn(2, 1, 4, 3, requires_grad=True), mm.randn(5, 3, 7, requires_grad=True)
    q = mm.randn(2, 4, 6, 8, requires_grad=True)
    k, v = mm.randn(2, 2, 6, 8, requires_grad=True), mm.randn(2, 2, 6, 8)   # GQA; no gradient for v
    with profiler.profile() as prof:
        F.linear(x, w).sum().backward()
        F.linear(x, frozen).sum().backward()                      # dL/dW not computed
        F.matmul(a, b).sum().backward()
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    ops = prof.to_dict()["ops"]
    linear = 2 * 15 * 8 * 6                                       # 2·N·C_in·C_out
    assert (ops["Linear"]["forward_flops"], ops["Linear"]["backward_flops"]) == (2 * linear, 2 * linear + linear)
    product = 2 * (2 * 5) * 4 * 3 * 7                             # batch (2, 5) broadcast
    assert (ops["MatMul"]["forward_flops"], ops["MatMul"]["backward_flops"]) == (product, 2 * product)
    square = 2 * 2 * 4 * 6 * 6 * 8                                # 2·B·H·T·S·D, the full square
    attention = ops["ScaledDotProductAttention"]
    assert (attention["forward_flops"], attention["backward_flops"]) == (2 * square, 3 * square)
    assert ops["Sum"]["forward_flops"] is None
    with profiler.profile() as prof, amp.autocast("fp16"):
        F.linear(x, w).sum().backward()
    low = prof.to_dict()["ops"]["LinearLowPrecision"]
    assert (low["forward_flops"], low["backward_flops"]) == (linear, 2 * linear)


def test_gpu_attention_counts_the_causal_chunks_it_computes():
    b, h, t, d = 2, 3, 512, 4
    for causal, visible in ((True, 5 / 8), (False, 1.0)):         # 4 chunks of 128 queries: 5/8 of T²
        op = ScaledDotProductAttentionCuda(0.5, causal)
        op.q, op.k = np.empty((b, h, t, d)), np.empty((b, h, t, d))
        op.needs_input_grad = (True, False, True)
        product = 2 * b * h * t * t * d * visible
        assert op.flops() == (2 * product, 4 * product)           # QK^T, GV^T again, then dQ and dV


def test_op_time_is_within_wall_time_and_most_of_it_for_a_model_step():
    model = tiny_gpt(n_embd=64, block_size=64, n_head=4)
    ids = np.random.default_rng(1).integers(0, 50, size=(4, 64))
    model(ids, ids)[1].backward()                                 # warm-up
    with profiler.profile() as prof:
        _, loss = model(ids, ids)
        loss.backward()
    assert 0.5 * prof.wall_s < prof.total_s() <= prof.wall_s
    shares = [float(line.split("|")[6].strip(" %")) for line in prof.table().splitlines()[2:] if line.startswith("| ")]
    assert sum(shares) == pytest.approx(100 * prof.total_s() / prof.wall_s, abs=1.0)   # each row rounded to 0.1%


def test_a_profile_entered_again_adds_up_and_cannot_be_nested():
    model = tiny_gpt()
    prof = profiler.profile(model)
    for _ in range(2):
        with prof:
            _, loss = model(IDS, IDS)
            loss.backward()
    assert prof.steps == 2 and prof.to_dict()["ops"]["Linear"]["calls"] == 2 * 13
    assert "over 2 steps" in prof.table()
    with prof, pytest.raises(RuntimeError, match="recording already"):
        with prof:
            pass


def test_json_round_trip(tmp_path):
    prof, _ = profiled_step(tiny_gpt())
    path = tmp_path / "profile.json"
    prof.save_json(path)
    data = json.loads(path.read_text())
    assert data == prof.to_dict() and data["ops"]["Linear"]["forward_flops"] > 0
    again = profiler.load_json(path)
    for options in ({}, {"group_by": "module", "depth": 2}, {"sort_by": "bytes"}):
        assert again.table(**options) == prof.table(**options)
    with pytest.raises(ValueError, match="'records' list"):
        profiler.Profile.from_dict({"ops": {}})


@pytest.mark.parametrize("options, message", [
    ({"sort_by": "fast"}, "sort_by='fast' is not valid; expected one of ['total', 'forward', 'backward', 'calls', "
                          "'bytes', 'flops']"),
    ({"group_by": "layer"}, "group_by='layer' is not valid; expected one of ['op', 'module']"),
    ({"group_by": "module", "depth": 0}, "depth=0 is not valid; expected a positive int or None"),
    ({"depth": 2}, "apply to group_by='module'"),
    ({"limit": -1}, "limit=-1 is not valid; expected a positive int or None"),
])
def test_bad_table_arguments_are_clear_errors(options, message):
    with profiler.profile() as prof:
        F.relu(mm.tensor([1.0, -1.0], requires_grad=True)).sum().backward()
    with pytest.raises(ValueError) as error:
        prof.table(**options)
    assert message in str(error.value)


def test_bad_profile_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="model=list has no named_modules"):
        profiler.profile(model=[])
    with pytest.raises(TypeError, match="sync='yes'"):
        profiler.profile(sync="yes")
