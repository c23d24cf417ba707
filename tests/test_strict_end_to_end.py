"""The GPU code path end to end, without a GPU: the strict CuPy-like device (its arrays refuse
implicit host conversion and mixing with host arrays) runs pretraining steps through the Trainer,
a checkpoint round trip onto either device, SFT and DPO steps, and KV-cached generation, in every
precision. ``pytest --backend cupy`` runs the real thing on a GPU (the ``device`` fixture).

Numbers: host and device runs take different code paths (the strict device: the GPU's fp16 route;
a real GPU: cuBLAS and the fused kernels, which sum in other orders than OpenBLAS; even OpenBLAS
picks kernels by CPU), so they are compared with tolerances that reflect the arithmetic: float32
sums agree to ~1e-6 relative per op, a few steps of training to ~1e-5; a float16 or bfloat16 value
may round to the neighbouring value (2^-10 or 2^-7 relative). Bit-exactness is asserted only where
the very same path runs twice (resume on the same device equals the straight run).
"""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import amp, backend
from minillm.data import RandomWindowLoader
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, decay_groups
from minillm.posttrain import CHAT_SPECIAL_TOKENS, ChatTemplate, PreferencePair, dpo_batch, render_preference_pairs
from minillm.posttrain.dpo import DPOObjective, frozen_copy
from minillm.posttrain.sft import sft_loss
from minillm.tokenizer import CharTokenizer
from minillm.train import LoopSection, Trainer, evaluate_language_model, load_checkpoint, load_model
from minillm.train.pretrain import language_model_loss

PRECISIONS = ["fp32", "fp16", "bf16"]
# host vs device losses after 4 steps: float32 reductions in another order (fp32); a few values
# rounded to the neighbouring float16 / bfloat16 (a unit in the last place: 2^-10, 2^-7 relative)
ACROSS_PATHS_RTOL = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 1e-2}
TOKENS = np.random.default_rng(1).integers(0, 40, size=2000).astype(np.uint16)


def pretrain_trainer(out_dir, device, precision, max_steps=4, seed=0):
    mm.manual_seed(seed)
    model = GPT(GPTConfig.gpt2(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)).to(device)
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3)
    loop = LoopSection(max_steps=max_steps, eval_interval=max_steps, log_interval=1, progress=False,
                       out_dir=str(out_dir), precision=precision, device=device)

    def evaluate(m):
        return evaluate_language_model(m, TOKENS[:200], 16, 4, num_bytes=200, device=device)

    return Trainer(model, optimizer, CosineSchedule(3e-3, 0.0, 1, max_steps), loop, language_model_loss,
                   RandomWindowLoader(TOKENS, batch_size=4, block_size=16, seed=seed), evaluate=evaluate,
                   tokens_per_batch=64)


def losses(records):
    return [r["loss"] for r in records if r.get("kind") == "train"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pretraining_and_a_checkpoint_round_trip_on_the_gpu_path(gpu_device, tmp_path, precision):
    straight = pretrain_trainer(tmp_path / "a", gpu_device, precision)
    on_device = losses(straight.fit())
    assert all(backend.device_of(p.data) == "cuda" and p.data.dtype == np.float32
               for p in straight.model.parameters())
    assert all(math.isfinite(x) for x in on_device)

    # exact resume on the device, the loss scaler (fp16) included
    first = pretrain_trainer(tmp_path / "b", gpu_device, precision)
    first.fit(stop_at=2)
    resumed = pretrain_trainer(tmp_path / "b", gpu_device, precision, seed=7)
    resumed.resume(str(tmp_path / "b" / "last.safetensors"))
    assert losses(resumed.fit()) == on_device
    if precision == "fp16":
        assert load_checkpoint(tmp_path / "b" / "last.safetensors").extra["grad_scaler"]["scale"] == \
            straight.scaler.get_scale()

    # the checkpoint loads onto either device with the same weights
    path = tmp_path / "a" / "last.safetensors"
    trained = {k: backend.to_numpy(v) for k, v in straight.model.state_dict().items()}
    for device in ("cpu", gpu_device):
        model, _, _ = load_model(path, device)
        assert model.device == device
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(backend.to_numpy(value), trained[name])

    # and the host run of the same steps (another code path: tolerances, see the module docstring)
    on_host = losses(pretrain_trainer(tmp_path / "c", "cpu", precision).fit())
    np.testing.assert_allclose(on_device, on_host, rtol=ACROSS_PATHS_RTOL[precision])


class FixedBatches:
    """The same batch every step (host arrays: the Trainer moves them to its device)."""

    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sft_and_dpo_steps_through_the_trainer_on_the_gpu_path(gpu_device, precision):
    tokenizer = CharTokenizer.train("abc xyz", special_tokens=list(CHAT_SPECIAL_TOKENS))
    template = ChatTemplate(tokenizer)
    pairs = [PreferencePair("abc", "xyz", "xy"), PreferencePair("ba", "c", "cc"), PreferencePair("zz z", "a b", "b a")]
    batch = dpo_batch(render_preference_pairs(template, pairs), block_size=32, pad_id=template.end_id)
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2,
                               n_embd=16)).to(gpu_device)
    loop = LoopSection(max_steps=2, eval_interval=10, log_interval=1, progress=False, precision=precision,
                       device=gpu_device, out_dir="")
    schedule = CosineSchedule(1e-2, 0.0, 0, 2)
    objectives = {"sft": (sft_loss, (batch["chosen_x"], batch["chosen_y"])),
                  "dpo": (DPOObjective(frozen_copy(model), beta=0.1, nll_alpha=1.0), batch)}
    for name, (objective, data) in objectives.items():
        trainer = Trainer(model, AdamW(model.parameters(), lr=1e-2), schedule, loop, objective, FixedBatches(data))
        records = [r for r in trainer.fit() if r.get("kind") == "train"]
        assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records), name
        assert records[1]["loss"] < records[0]["loss"], name
        assert all(backend.device_of(p.data) == "cuda" for p in model.parameters())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_kv_cached_generation_on_the_gpu_path(gpu_device, precision):
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)).to(gpu_device).eval()
    prompt = backend.to_device(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), gpu_device)
    with amp.autocast(precision):
        cached = model.generate(prompt, max_new_tokens=6, temperature=0.0)
        recomputed = model.generate(prompt, max_new_tokens=6, temperature=0.0, use_cache=False)
    assert backend.device_of(cached) == "cuda" and cached.shape == (2, 10)
    np.testing.assert_array_equal(backend.to_numpy(cached), backend.to_numpy(recomputed))


def test_the_device_fixture_runs_one_training_step_wherever_pytest_points_it(device, tmp_path):
    """``pytest --backend strict`` or ``--backend cupy`` (a GPU) run this on "cuda"."""
    for precision in PRECISIONS:
        trainer = pretrain_trainer(tmp_path / precision, device, precision, max_steps=1)
        assert math.isfinite(losses(trainer.fit())[0])
