"""Per-layer training health: the observer's numbers against plain NumPy on the same tensors, health
on = health off, planted failures flagged, a healthy run not, and the `minillm health` command."""
import json
import math

import numpy as np
import pytest

import minillm as mm
from minillm.backend import to_numpy
from minillm.cli import main as minillm_main
from minillm.data import RandomWindowLoader
from minillm.health import DEAD_THRESHOLD, HealthObserver, is_health_step
from minillm.health.report import find_flags, load_health
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.train import LoopSection, Trainer
from minillm.train.pretrain import language_model_loss

TOKENS = np.random.default_rng(0).integers(0, 40, size=4000).astype(np.uint16)


def tiny_config(preset="llama", dropout=0.0):
    if preset == "llama":
        return GPTConfig.llama(vocab_size=40, block_size=12, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                               dropout=dropout)
    return GPTConfig.gpt2(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=dropout)


def make_trainer(out_dir, health_interval, preset="llama", max_steps=12, dropout=0.0, grad_accum_steps=1,
                 plant=None, lr=1e-3, precision="fp32"):
    mm.manual_seed(0)
    model = GPT(tiny_config(preset, dropout))
    if plant is not None:
        plant(model)
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=lr)
    loader = RandomWindowLoader(TOKENS, batch_size=4, block_size=12, seed=0)
    loop = LoopSection(max_steps=max_steps, eval_interval=1000, log_interval=1, progress=False, out_dir=str(out_dir),
                       health_interval=health_interval, grad_accum_steps=grad_accum_steps, precision=precision)
    schedule = CosineSchedule(lr, lr / 10, warmup_steps=2, total_steps=max_steps)
    return Trainer(model, optimizer, schedule, loop, language_model_loss, loader, tokens_per_batch=48)


# -- the numbers ----------------------------------------------------------------------------------
def attention_by_hand(q, k, v):
    """Per-head mean entropy of causal attention and the heads' outputs, with plain loops:
    q (B, H, T, D), k and v (B, Hkv, T, D) -> entropy (H,), outputs (B, H, T, D)."""
    b, h, t, d = q.shape
    g = h // k.shape[1]
    total, outputs = np.zeros(h), np.zeros((b, h, t, d))
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                scores = np.array([q[bi, hi, i] @ k[bi, hi // g, j] for j in range(i + 1)]) / math.sqrt(d)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                total[hi] -= np.sum(p * np.log(p))
                outputs[bi, hi, i] = p @ v[bi, hi // g, :i + 1]
    return total / (b * t), outputs


def reference_statistics(model, idx, logits):
    """What the record should hold, recomputed outside the observer from the model's weights."""
    expected = {}
    with mm.no_grad():
        x = model.tok_emb(idx)
        for i, block in enumerate(model.blocks):
            attn = block.attn
            q, k, v = attn.project_qkv(block.norm1(x))
            entropy, heads = attention_by_hand(*(a.data.astype(np.float64) for a in (q, k, v)))
            expected[f"blocks.{i}.attn"] = {"entropy": entropy, "output_rms": np.sqrt((heads ** 2).mean(axis=(0, 2, 3)))}
            hidden_in = block.norm2(x + attn.attend(q, k, v)).data.astype(np.float64)
            gate = hidden_in @ block.mlp.gate_proj.weight.data.T.astype(np.float64)
            up = hidden_in @ block.mlp.up_proj.weight.data.T.astype(np.float64)
            expected[f"blocks.{i}.mlp"] = gate / (1 + np.exp(-gate)) * up          # silu(gate) * up
            x = block(x)
            expected[f"blocks.{i}"] = x.data.astype(np.float64)
    expected["logits"] = logits.data.astype(np.float64)
    return expected


def test_the_health_record_matches_numpy_on_the_same_tensors():
    mm.manual_seed(3)
    model = GPT(tiny_config("llama"))
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-2)
    idx = np.random.default_rng(1).integers(0, 40, size=(3, 12))
    targets = np.random.default_rng(2).integers(0, 40, size=(3, 12))
    observer = HealthObserver(model)
    with observer.watch():
        logits, loss = model(idx, targets)
    loss.backward()
    observer.read_gradients()
    grads = {name: p.grad.astype(np.float64).copy() for name, p in model.named_parameters()}
    before = {name: p.data.astype(np.float64).copy() for name, p in model.named_parameters()}
    expected = reference_statistics(model, idx, logits)           # at the weights the forward pass saw
    observer.before_update()
    optimizer.step()
    record = observer.record(step=1)
    assert json.loads(json.dumps(record)) == record                 # plain JSON, nothing else
    assert "forward" not in vars(model.blocks[0]) and "attend" not in vars(model.blocks[0].attn)   # unpatched

    for name, p in model.named_parameters():
        stats = record["params"][name]
        assert stats["grad_norm"] == pytest.approx(np.linalg.norm(grads[name]), rel=1e-6)
        assert stats["param_norm"] == pytest.approx(np.linalg.norm(before[name]), rel=1e-6)
        ratio = np.linalg.norm(p.data.astype(np.float64) - before[name]) / np.linalg.norm(before[name])
        assert stats["update_ratio"] == pytest.approx(ratio, rel=1e-6)
        assert stats["shape"] == list(p.shape)
    for i in range(2):
        attention = record["attention"][f"blocks.{i}.attn"]
        assert attention["entropy"] == pytest.approx(expected[f"blocks.{i}.attn"]["entropy"], rel=1e-5)
        assert attention["output_rms"] == pytest.approx(expected[f"blocks.{i}.attn"]["output_rms"], rel=1e-5)
        hidden, stats = expected[f"blocks.{i}.mlp"], record["activations"][f"blocks.{i}.mlp"]
        assert stats["mean"] == pytest.approx(hidden.mean(), rel=1e-4, abs=1e-7)
        assert stats["std"] == pytest.approx(hidden.std(), rel=1e-4)
        assert stats["max_abs"] == pytest.approx(np.abs(hidden).max(), rel=1e-4)
        out, stats = expected[f"blocks.{i}"], record["activations"][f"blocks.{i}"]
        assert stats["mean"] == pytest.approx(out.mean(), rel=1e-5, abs=1e-7)
        assert stats["std"] == pytest.approx(out.std(), rel=1e-6)
        rms = np.sqrt((out ** 2).mean())
        assert stats["dead"] == (np.abs(out).reshape(-1, 16).max(axis=0) < DEAD_THRESHOLD * rms).mean() == 0.0
        assert stats["outliers"] == (np.abs(out) > 10 * rms).mean()
    values = expected["logits"]
    assert record["logits"]["std"] == pytest.approx(values.std(), rel=1e-6)
    assert record["logits"]["max_abs"] == pytest.approx(np.abs(values).max(), rel=1e-6)
    assert record["max_entropy"] == pytest.approx(np.mean(np.log(np.arange(1, 13))))


def test_dead_units_count_units_quiet_at_every_position():
    from minillm.health.observer import activation_stats
    h = np.random.default_rng(0).normal(size=(4, 50, 8))
    h[..., 3] = 1e-4                              # below 1% of the RMS everywhere: dead
    h[..., 5] = 0.0
    h[1, 2, 5] = 0.5                              # active once: alive
    h[0, 0, 0] = 100.0                            # an outlier (> 10x the RMS)
    stats = to_numpy(activation_stats(h))
    rms = np.sqrt((h ** 2).mean())
    assert stats[3] == (np.abs(h).reshape(-1, 8).max(axis=0) < DEAD_THRESHOLD * rms).mean() == 1 / 8
    assert stats[4] == (np.abs(h) > 10 * rms).mean() == 1 / 1600
    assert list(stats[:3]) == pytest.approx([h.mean(), h.std(), 100.0])


def test_health_steps_are_the_first_and_every_nth():
    assert [s for s in range(1, 21) if is_health_step(s, 5)] == [1, 5, 10, 15, 20]
    assert not any(is_health_step(s, 0) for s in range(1, 21))


# -- observing changes nothing -------------------------------------------------------------------
@pytest.mark.parametrize("preset, dropout, accum, precision", [("llama", 0.0, 1, "fp32"), ("gpt2", 0.1, 2, "fp32"),
                                                              ("llama", 0.0, 1, "fp16")])
def test_health_on_and_off_train_identically(tmp_path, preset, dropout, accum, precision):
    runs = {}
    for interval in (0, 3):
        trainer = make_trainer(tmp_path / str(interval), interval, preset=preset, max_steps=7, dropout=dropout,
                               grad_accum_steps=accum, precision=precision)
        records = trainer.fit()
        train = {r["step"]: r for r in records if r["kind"] == "train"}
        for health in (r for r in records if r["kind"] == "health"):   # gradients read unscaled, before clipping
            total = math.sqrt(sum(p["grad_norm"] ** 2 for p in health["params"].values()))
            assert total == pytest.approx(train[health["step"]]["grad_norm"], rel=1e-5)
        runs[interval] = ([r["loss"] for r in records if r["kind"] == "train"],
                          {n: p.data.copy() for n, p in trainer.model.named_parameters()},
                          [r["step"] for r in records if r["kind"] == "health"])
    assert runs[3][0] == runs[0][0]                               # bit for bit
    assert all(np.array_equal(runs[3][1][n], runs[0][1][n]) for n in runs[0][1])
    assert runs[3][2] == [1, 3, 6] and runs[0][2] == []


def test_the_observer_runs_on_the_gpu_code_path(gpu_device):
    mm.manual_seed(3)
    model = GPT(tiny_config("llama"))
    idx = np.random.default_rng(1).integers(0, 40, size=(2, 12))
    records = []
    for device in ("cpu", gpu_device):
        model.to(device)
        model.zero_grad()
        observer = HealthObserver(model)
        with observer.watch():
            _, loss = model(idx, idx)
        loss.backward()
        observer.read_gradients()
        observer.before_update()
        records.append(observer.record(step=1))
    host, gpu = records
    assert gpu["attention"]["blocks.1.attn"]["entropy"] == pytest.approx(host["attention"]["blocks.1.attn"]["entropy"],
                                                                          rel=1e-5)
    assert gpu["params"]["blocks.0.mlp.up_proj.weight"]["grad_norm"] == pytest.approx(
        host["params"]["blocks.0.mlp.up_proj.weight"]["grad_norm"], rel=1e-5)


# -- the flags ------------------------------------------------------------------------------------
def test_a_healthy_tiny_run_raises_no_flag(tmp_path):
    make_trainer(tmp_path, 4, max_steps=16).fit()
    records, _ = load_health(str(tmp_path))
    assert [r["step"] for r in records] == [1, 4, 8, 12, 16]
    assert find_flags(records) == []


def test_a_layer_whose_update_ratio_is_100x_the_others_is_flagged(tmp_path):
    def shrink(model):            # weights 1000x smaller: Adam's steps are not, so the ratio is 1000x
        weight = model.blocks[1].mlp.up_proj.weight
        weight.data = weight.data * 1e-3
    make_trainer(tmp_path, 4, max_steps=8, plant=shrink).fit()
    flags = find_flags(load_health(str(tmp_path))[0])
    assert [(f.kind, f.subject) for f in flags] == [("update ratio", "blocks.1.mlp.up_proj.weight")]
    assert flags[0].steps[0] == 1


def test_a_head_with_zero_values_is_a_dead_head(tmp_path):
    def kill(model):              # key/value head 0 of block 0 serves query heads 0 and 1
        weight = model.blocks[0].attn.v_proj.weight
        data = weight.data.copy()
        data[:4] = 0.0
        weight.data = data
    make_trainer(tmp_path, 4, max_steps=1, plant=kill).fit()
    flags = find_flags(load_health(str(tmp_path))[0])
    assert {(f.kind, f.subject) for f in flags} == {("dead head", "blocks.0.attn head 0"),
                                                   ("dead head", "blocks.0.attn head 1")}
    assert "output RMS" in flags[0].detail


def test_collapsing_entropy_and_exploding_layers_are_flagged():
    def record(step, entropy, grad):
        return {"kind": "health", "step": step, "max_entropy": 2.0,
                "params": {f"blocks.{i}.mlp.up_proj.weight": {"shape": [4, 4], "grad_norm": g, "param_norm": 1.0,
                                                              "update_ratio": 1e-3} for i, g in enumerate(grad)},
                "attention": {"blocks.0.attn": {"entropy": entropy, "output_rms": [1.0, 1.0]}}, "activations": {}}
    records = [record(1, [1.9, 1.8], [1.0, 1.0, 1.0]), record(50, [1.0, 1.5], [1.0, 1.0, 1.0]),
               record(100, [0.1, 1.5], [1.0, 20.0, 0.05])]
    found = {(f.kind, f.subject): f.steps for f in find_flags(records)}
    assert found == {("collapsing entropy", "blocks.0.attn head 0"): [100],
                     ("exploding layer", "blocks.1"): [100], ("vanishing layer", "blocks.2"): [100]}


# -- the command ----------------------------------------------------------------------------------
def test_the_command_prints_the_table_and_writes_a_self_contained_page(tmp_path, capsys):
    make_trainer(tmp_path / "run", 4, max_steps=8).fit()
    assert minillm_main(["health", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "blocks.1" in out and "no flags" in out
    page = (tmp_path / "run" / "health.html").read_text(encoding="utf-8")
    assert page.count("<svg") >= 8 and "update ratio" in page
    for outside in ("http://", "https://", "<script", "src=", "href=", "@import", "url("):
        assert outside not in page
    assert minillm_main(["health", str(tmp_path / "run")]) == 2            # the page is there: not replaced
    assert "already exists" in capsys.readouterr().err
    assert minillm_main(["health", str(tmp_path / "run"), "--out", str(tmp_path / "x.html")]) == 0


def test_the_command_exits_5_on_a_flag_and_2_without_health_records(tmp_path, capsys):
    def shrink(model):
        model.blocks[0].attn.q_proj.weight.data = model.blocks[0].attn.q_proj.weight.data * 1e-3
    make_trainer(tmp_path / "bad", 4, max_steps=4, plant=shrink).fit()
    assert minillm_main(["health", str(tmp_path / "bad")]) == 5
    assert "update ratio: blocks.0.attn.q_proj.weight" in capsys.readouterr().out

    make_trainer(tmp_path / "plain", 0, max_steps=2).fit()
    assert minillm_main(["health", str(tmp_path / "plain")]) == 2
    assert "holds no health records; train with --health_interval" in capsys.readouterr().err
    assert minillm_main(["health", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert minillm_main(["health"]) == 2
    assert "expected exactly one run folder" in capsys.readouterr().err


def test_a_torn_last_line_is_tolerated_and_left_alone(tmp_path, capsys):
    make_trainer(tmp_path, 4, max_steps=4).fit()
    path = tmp_path / "metrics.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"kind": "health", "step": 9, "par')          # a write cut short
    before = path.read_bytes()
    assert minillm_main(["health", str(tmp_path)]) == 0
    assert "was cut short" in capsys.readouterr().err
    assert path.read_bytes() == before                              # a reader does not rewrite the run's log
