"""The op profiler: it records every op of a forward and backward pass and changes no result."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm import profiler
from minillm.nn import GPT, GPTConfig


def test_profile_records_forward_and_backward_per_op_type_and_changes_nothing():
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 16))
    losses = []
    for profiled in (False, True):
        mm.manual_seed(0)
        model = GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
        if profiled:
            with profiler.profile() as prof:
                _, loss = model(ids, ids)
                loss.backward()
        else:
            _, loss = model(ids, ids)
            loss.backward()
        losses.append((loss.item(), model.tok_emb.weight.grad.copy()))
    assert losses[0][0] == losses[1][0]
    np.testing.assert_array_equal(losses[0][1], losses[1][1])
    ops = prof.to_dict()["ops"]
    assert ops["Linear"]["calls"] == 2 * 6 + 1                  # q, k, v, o, up, down per layer; the head
    assert ops["LayerNorm"]["calls"] == 2 * 2 + 1
    assert ops["CrossEntropy"]["backward_s"] > 0 and ops["ScaledDotProductAttention"]["calls"] == 2
    assert 0 < prof.total_s() <= prof.wall_s
    table = prof.table(limit=3)
    assert table.count("\n| ") == 3 and "share of op time" in table


def test_profile_table_rejects_an_unknown_sort_key():
    with profiler.profile() as prof:
        F.relu(mm.tensor([1.0, -1.0], requires_grad=True)).sum().backward()
    with pytest.raises(ValueError, match="sort_by='fast'"):
        prof.table(sort_by="fast")
    assert mm.autograd._profiler is None                          # removed on exit
