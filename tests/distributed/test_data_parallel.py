"""Data parallelism in one process: the gradient-ready hooks, row splitting, world detection,
ZeRO-1's sharded AdamW against AdamW (a world of one: LocalTransport), and token-mean losses
(SFT, DPO) split over two simulated ranks. The multi-rank runs are in test_mpi.py and
test_mpi_posttrain.py."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minillm as mm
from minillm import autograd
from minillm.autograd import register_grad_ready_hook
from minillm.data import RandomWindowLoader
from minillm.distributed import (
    BatchShare,
    DataParallel,
    ShardedAdamW,
    current_batch_share,
    launcher_rank_and_size,
    sharing_batch,
    split_rows,
)
from minillm.distributed.transport import LocalTransport
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, Muon, decay_groups, muon_groups
from minillm.posttrain.batches import IGNORE_INDEX
from minillm.posttrain.dpo import DPOObjective, frozen_copy
from minillm.posttrain.sft import sft_loss
from minillm.train import LoopSection, Trainer
from minillm.train.pretrain import language_model_loss

REPO = Path(__file__).resolve().parents[2]
TOKENS = np.random.default_rng(0).integers(0, 50, size=2000).astype(np.uint16)


# -- gradient-ready hooks -----------------------------------------------------------------------
def test_a_ready_hook_fires_once_after_the_last_contribution():
    rng = np.random.default_rng(0)
    shared = mm.Tensor(rng.standard_normal((3, 3)).astype(np.float32), requires_grad=True)
    other = mm.Tensor(rng.standard_normal((3, 3)).astype(np.float32), requires_grad=True)
    unused = mm.Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    seen = []
    handles = [register_grad_ready_hook(t, lambda leaf, name=name: seen.append((name, leaf.grad.copy())))
               for name, t in (("shared", shared), ("other", other), ("unused", unused))]
    x = mm.Tensor(rng.standard_normal((2, 3)).astype(np.float32))
    loss = ((x @ shared) @ other @ shared).sum()          # shared is used twice (a tied weight)
    loss.backward()
    names = [name for name, _ in seen]
    assert sorted(names) == ["other", "shared"]           # once each; the unused leaf never
    grads = dict(seen)
    np.testing.assert_array_equal(grads["shared"], shared.grad)   # the whole gradient, both uses summed
    np.testing.assert_array_equal(grads["other"], other.grad)
    for handle in handles:
        handle.remove()
    assert not autograd._grad_ready_hooks
    seen.clear()
    ((x @ shared).sum()).backward()
    assert seen == []                                      # removed hooks stay silent


def test_a_ready_hook_on_a_non_leaf_is_refused():
    leaf = mm.Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf"):
        register_grad_ready_hook(leaf * 2, lambda t: None)


# -- rows, worlds -------------------------------------------------------------------------------
def test_split_rows_takes_each_ranks_share_of_every_array():
    x, y = np.arange(12).reshape(6, 2), np.arange(6)
    first, second = split_rows((x, y), 0, 2), split_rows((x, y), 1, 2)
    np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), x)
    np.testing.assert_array_equal(second[1], y[3:])
    assert split_rows({"ids": x, "n": 3}, 2, 3)["n"] == 3
    with pytest.raises(ValueError, match=r"loop.batch_size=6 is not divisible by the 4 ranks"):
        split_rows((x, y), 0, 4)


def test_the_launcher_environment_gives_rank_and_size(monkeypatch):
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_rank_and_size() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert launcher_rank_and_size() == (3, 8)
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert launcher_rank_and_size() == (1, 2)             # MPICH's hydra first


def test_without_a_launcher_nothing_imports_mpi4py():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = str(REPO)
    code = ("import sys; from minillm.cli import main; import minillm.distributed as d; w = d.current_world(); "
            "print(w.size, w.under_mpi, 'mpi4py' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "False", "False"], done.stderr


# -- ZeRO-1 in a world of one -----------------------------------------------------------------
def tiny_model():
    mm.manual_seed(0)
    return GPT(GPTConfig.gpt2(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


def fake_gradients(model, step):
    rng = np.random.default_rng(step)
    for p in model.parameters():
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)


def test_sharded_adamw_updates_like_adamw_and_saves_its_layout():
    plain_model, sharded_model = tiny_model(), tiny_model()
    plain = AdamW(decay_groups(plain_model.named_parameters(), 0.1), lr=1e-2)
    parallel = DataParallel(sharded_model.parameters(), LocalTransport(), bucket_bytes=4096, shard=True)
    assert len(parallel.buckets) > 3                        # several buckets, parameters split across them
    sharded = ShardedAdamW(AdamW(decay_groups(sharded_model.named_parameters(), 0.1), lr=1e-2), parallel)
    for step in range(3):
        fake_gradients(plain_model, step)
        fake_gradients(sharded_model, step)
        parallel.begin_step()
        parallel.finish()                                   # no backward ran: gradients taken as they are
        plain.step()
        sharded.step()
    for (name, a), b in zip(plain_model.named_parameters(), sharded_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    saved, expected = sharded.state_dict(), plain.state_dict()
    assert saved["steps"] == expected["steps"] and sorted(saved["state"]) == sorted(expected["state"])
    for key, array in expected["state"].items():
        np.testing.assert_array_equal(saved["state"][key], array, err_msg=key)
    again = ShardedAdamW(AdamW(decay_groups(sharded_model.named_parameters(), 0.1), lr=1e-2), parallel)
    again.load_state_dict(saved)
    assert again.step_count == 3 and again.state_bytes() == sharded.state_bytes()
    parallel.close()


def make_trainer(out_dir, optimizer_class=AdamW, **loop):
    model = tiny_model()
    groups = (muon_groups if optimizer_class is Muon else decay_groups)(model.named_parameters(), 0.1)
    optimizer = optimizer_class(groups, lr=3e-3)
    loader = RandomWindowLoader(TOKENS, batch_size=4, block_size=16, seed=0)
    settings = dict(max_steps=4, eval_interval=10, log_interval=1, progress=False, out_dir=str(out_dir))
    settings.update(loop)
    schedule = CosineSchedule(3e-3, 3e-4, warmup_steps=1, total_steps=4)
    return Trainer(model, optimizer, schedule, LoopSection(**settings), language_model_loss, loader)


def test_zero_1_in_one_process_trains_like_the_plain_loop(tmp_path):
    plain = [r["loss"] for r in make_trainer(tmp_path / "plain").fit() if r["kind"] == "train"]
    zero = make_trainer(tmp_path / "zero", zero=1)
    assert isinstance(zero.optimizer, ShardedAdamW)
    assert make_trainer(tmp_path / "none").parallel_summary() is None     # nothing to say in one process
    assert zero.parallel_summary() == (f"data parallel: 1 rank(s), gradients averaged over local in "
                                       f"{len(zero.parallel.buckets)} bucket(s); AdamW's moments sharded "
                                       "across the ranks (ZeRO-1)")
    losses = [r["loss"] for r in zero.fit() if r["kind"] == "train"]
    np.testing.assert_allclose(losses, plain, rtol=1e-6)
    zero.parallel.close()
    del zero
    gc.collect()


def test_zero_1_refuses_the_fp16_loss_scaler(tmp_path):
    with pytest.raises(ValueError, match="ZeRO-1 does not support the fp16 loss scaler"):
        make_trainer(tmp_path, zero=1, precision="fp16")


def test_zero_1_refuses_muon(tmp_path):
    with pytest.raises(ValueError, match="loop.zero=1 with a Muon optimizer: ZeRO-1 shards AdamW's moments only"):
        make_trainer(tmp_path, optimizer_class=Muon, zero=1)


def test_each_rank_has_its_own_repeatable_generator():
    from minillm.train.trainer import rank_rng_state

    assert rank_rng_state(7, 1) == rank_rng_state(7, 1)
    assert rank_rng_state(7, 1) != rank_rng_state(7, 2) != rank_rng_state(8, 2)
    assert rank_rng_state(7, 1, step=3) != rank_rng_state(7, 1)


# -- token-mean losses over two simulated ranks -------------------------------------------------
class OtherRankCounts:
    """The host all-reduce of a world of two whose other rank's counts are known in advance."""

    def __init__(self, other):
        self.other = np.array(other, dtype=np.float64)

    def allreduce_host(self, values, op="sum"):
        assert op == "sum"
        return np.asarray(values, dtype=np.float64) + self.other


def masked_targets(rng, replies, width=12, vocab=50):
    """(rows, width) targets, row i supervising its last ``replies[i]`` positions (-100 elsewhere)."""
    y = rng.integers(0, vocab, size=(len(replies), width))
    for row, count in enumerate(replies):
        y[row, :width - count] = IGNORE_INDEX
    return y


def loss_and_gradients(model, loss_fn, batch, share=None):
    model.zero_grad()
    with sharing_batch(share):
        loss, metrics = loss_fn(model, batch)
    loss.backward()
    return loss.item(), metrics, {name: p.grad.copy() for name, p in model.named_parameters()}


def check_two_ranks_average_to_the_batch(model, loss_fn, batch, counts_of):
    """Rank r's loss on its half with the other half's counts all-reduced in: the two ranks'
    average loss and gradient are the whole batch's; each half's plain mean averages to another."""
    whole_loss, whole_metrics, whole_grads = loss_and_gradients(model, loss_fn, batch)
    halves = [split_rows(batch, rank, 2) for rank in (0, 1)]
    ranks = [loss_and_gradients(model, loss_fn, half, BatchShare(2, OtherRankCounts(counts_of(other))))
             for half, other in zip(halves, reversed(halves))]
    assert (ranks[0][0] + ranks[1][0]) / 2 == pytest.approx(whole_loss, rel=1e-6)
    for key, value in whole_metrics.items():
        assert (ranks[0][1][key] + ranks[1][1][key]) / 2 == pytest.approx(value, rel=1e-6, abs=1e-7), key
    for name, grad in whole_grads.items():
        np.testing.assert_allclose((ranks[0][2][name] + ranks[1][2][name]) / 2, grad, rtol=1e-4, atol=1e-7,
                                   err_msg=name)
    naive = [loss_and_gradients(model, loss_fn, half)[0] for half in halves]     # each half's own mean
    assert abs((naive[0] + naive[1]) / 2 - whole_loss) > 1e-3 * abs(whole_loss)


def test_sft_loss_split_over_two_ranks_averages_to_the_whole_batch():
    rng = np.random.default_rng(0)
    model = tiny_model()
    x = rng.integers(0, 50, size=(4, 12))
    y = masked_targets(rng, [1, 2, 9, 12])          # the halves hold 3 and 21 supervised tokens
    check_two_ranks_average_to_the_batch(model, sft_loss, (x, y),
                                         lambda half: [int((half[1] != IGNORE_INDEX).sum())])


def test_dpo_objective_split_over_two_ranks_averages_to_the_whole_batch():
    rng = np.random.default_rng(1)
    model = tiny_model()
    reference = frozen_copy(model)
    for p in model.parameters():                     # move the policy off the reference: margins != 0
        p.data += 0.05 * rng.standard_normal(p.data.shape).astype(p.data.dtype)
    batch = {"chosen_x": rng.integers(0, 50, size=(4, 12)), "chosen_y": masked_targets(rng, [1, 2, 10, 12]),
             "rejected_x": rng.integers(0, 50, size=(4, 12)), "rejected_y": masked_targets(rng, [6, 3, 2, 5])}
    check_two_ranks_average_to_the_batch(model, DPOObjective(reference, beta=0.5, nll_alpha=1.0), batch,
                                         lambda half: [int((half[side] != IGNORE_INDEX).sum())
                                                       for side in ("chosen_y", "rejected_y")])


def test_the_batch_share_is_a_world_of_one_outside_the_trainer():
    assert current_batch_share().size == 1 and current_batch_share().global_counts(3, 4) == (3, 4)
    share = BatchShare(2, OtherRankCounts([5]))
    with sharing_batch(share):
        assert current_batch_share() is share and share.global_counts(2) == (7,)
    assert current_batch_share().size == 1
    with pytest.raises(ValueError, match="size=2 needs a transport"):
        BatchShare(2)
