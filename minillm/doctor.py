"""``minillm doctor``: a preflight of a training config that runs in seconds on a CPU.

Each check builds what it needs from the config's architecture (the preset and every model field:
norm, positions, MLP, grouped-query attention, biases, tied head...) on random token ids drawn from
a fixed seed, so no corpus or tokenizer is read. Most checks run a *shrunken twin* of the model
(:func:`shrink`: 2 layers, head size 8, vocabulary 64, context 16, the config's head ratio) so the
whole preflight takes seconds; the initial-loss check runs the model at its real size.

    check            property                                                       model
    initial loss     loss at initialisation ≈ ln V (uniform predictions), within 5%  full size
    gradcheck        backward's gradients = central finite differences, float64      twin, float64
    overfit          one fixed batch: the loss falls below 0.5 nats in 150 steps      twin
    grad accum       k micro-batches accumulated = one batch k times larger          twin, float64
    kv cache         KV-cached decoding = recomputing every position (logits, greedy) twin, float64
    resume           save -> resume -> continue = the straight run, bit for bit      twin, dropout on
    dpo              the DPO loss with policy = reference is ln 2                    twin
    mixed precision  one step in fp16/bf16 against fp32; the fp16 loss scaler        twin (skipped in fp32)

Each check is a function ``check_*(model_config, cfg) -> CheckResult``: its name, whether it
passed (None: skipped), the measured value, the threshold, and on failure what such a failure
usually means and where to look. A check that raises fails with the exception as its measurement.
:func:`run_doctor` runs them all and prints the table; the ``minillm doctor`` command (and
``minillm train --doctor``) exits with status 4 (:data:`minillm.errors.EXIT_DOCTOR`) when any
check fails.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import numpy as np

from minillm import commandline
from minillm.amp import GradScaler, autocast
from minillm.autograd import no_grad
from minillm.backend import manual_seed, to_numpy
from minillm.data import RandomWindowLoader
from minillm.errors import EXIT_DOCTOR, MinillmError
from minillm.nn import GPT, GPTConfig, KVCache
from minillm.optim import SGD, CosineSchedule
from minillm.posttrain.dpo import DPOObjective, frozen_copy
from minillm.train.config import LoopSection, TrainConfig
from minillm.train.pretrain import language_model_loss
from minillm.train.trainer import Trainer

SEED = 1234
TWIN_VOCAB, TWIN_BLOCK, TWIN_HEAD_DIM = 64, 16, 8
INITIAL_LOSS_TOLERANCE = 0.05          # |loss - ln V| <= 5% of ln V
GRADCHECK_EPS, GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-6, 1e-8, 1e-5
OVERFIT_STEPS, OVERFIT_LR, OVERFIT_THRESHOLD = 150, 1e-2, 0.5
ACCUM_TOLERANCE = 1e-9                 # relative, float64
KV_TOLERANCE = 1e-9                    # max |logit difference|, float64
DPO_TOLERANCE = 1e-6
AMP_LOSS_TOLERANCE, AMP_GRAD_TOLERANCE = 0.02, 0.05


class DoctorFailed(MinillmError):
    """One or more doctor checks failed (exit status 4)."""

    exit_code = EXIT_DOCTOR


@dataclass
class CheckResult:
    """One row of the doctor's table. ``passed`` None means skipped; ``meaning`` and ``look_at``
    are shown for a failure."""

    name: str
    passed: bool | None
    measured: str
    threshold: str
    meaning: str = ""
    look_at: str = ""
    seconds: float = 0.0

    def __post_init__(self):
        if self.passed is not None:
            self.passed = bool(self.passed)          # a NumPy bool is not `False`

    @property
    def status(self) -> str:
        return "skip" if self.passed is None else ("PASS" if self.passed else "FAIL")


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------
def model_config(cfg: TrainConfig) -> GPTConfig:
    """The config's model at its real size; the vocabulary is model.vocab_size, else the BPE
    tokenizer's data.vocab_size, else 256 (a char tokenizer's size is only known after reading)."""
    vocab = cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 256
    return cfg.model.build(vocab)


def shrink(config: GPTConfig, dropout: float = 0.0) -> GPTConfig:
    """The same architecture, tiny: 2 layers (1 if the config has 1), head size 8, vocabulary 64,
    context 16, and the config's kind of attention (MHA; MQA; GQA with 2 query heads per key/value
    head). Every other field (norm, positions, MLP, biases, tying, norm position...) is kept."""
    if config.n_kv_head == config.n_head:
        heads, kv_heads = 2, 2
    elif config.n_kv_head == 1:
        heads, kv_heads = 2, 1
    else:
        heads, kv_heads = 4, 2
    return replace(config, vocab_size=TWIN_VOCAB, block_size=TWIN_BLOCK, n_layer=min(config.n_layer, 2),
                   n_head=heads, n_kv_head=kv_heads, n_embd=heads * TWIN_HEAD_DIM, dropout=dropout,
                   mlp_hidden=None if config.mlp_hidden is None else 4 * heads * TWIN_HEAD_DIM,
                   mlp_multiple_of=8)


def tokens(shape, vocab: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int64)  # host: random ids


def build(config: GPTConfig, dtype=np.float32, seed: int = SEED) -> GPT:
    manual_seed(seed)
    return GPT(config, dtype=dtype)


class _Batches:
    """A batch source for the Trainer that serves a fixed list of batches in turn."""

    def __init__(self, batches):
        self.batches, self.index = batches, 0

    def next_batch(self):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


def _quiet_loop(**values) -> LoopSection:
    return LoopSection(out_dir="", progress=False, log_interval=1, **values)


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
def check_initial_loss(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """The loss of the freshly initialised model (real size) on random ids is about ln V: an
    untrained model should predict every token about equally."""
    model = build(replace(config, dropout=0.0))
    model.eval()
    t = min(config.block_size, 64)
    ids = tokens((2, t + 1), config.vocab_size)
    with no_grad():
        _, loss = model(ids[:, :-1], ids[:, 1:])
    value, expected = loss.item(), math.log(config.vocab_size)
    tolerance = INITIAL_LOSS_TOLERANCE * expected
    return CheckResult(
        "initial loss", bool(abs(value - expected) <= tolerance),
        f"{value:.4f} (ln {config.vocab_size} = {expected:.4f})", f"|loss - ln V| <= {tolerance:.3f} (5%)",
        "the initial logits are far from uniform: the initialisation is too large (init_std, the residual "
        "scaling), the logits are scaled, or the loss is not the mean cross-entropy over tokens",
        "GPT._init_weights, model.init_std, the head (tie_weights, lm_head), F.cross_entropy")


def check_gradcheck(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """Backward's gradient of the loss w.r.t. every parameter tensor against central finite
    differences, in float64, at 3 elements per tensor (its largest gradient and 2 random ones)."""
    twin = shrink(config)
    model = build(twin, dtype=np.float64)
    model.eval()
    ids = tokens((2, 9), twin.vocab_size)
    x, y = ids[:, :-1], ids[:, 1:]
    _, loss = model(x, y)
    loss.backward()
    rng = np.random.default_rng(SEED)
    worst, worst_where, checked = 0.0, "", 0
    for name, param in model.named_parameters():
        analytic = to_numpy(param.grad) if param.grad is not None else np.zeros(param.shape)
        flat = [int(np.argmax(np.abs(analytic)))] + [int(i) for i in rng.integers(0, param.data.size, size=2)]
        for index in dict.fromkeys(flat):
            where = np.unravel_index(index, param.shape)
            original = param.data[where]
            values = []
            for sign in (1, -1):
                param.data[where] = original + sign * GRADCHECK_EPS
                with no_grad():
                    values.append(model(x, y)[1].item())
            param.data[where] = original
            numeric = (values[0] - values[1]) / (2 * GRADCHECK_EPS)
            excess = abs(analytic[where] - numeric) / (GRADCHECK_ATOL + GRADCHECK_RTOL * abs(numeric))
            checked += 1
            if excess > worst:
                worst = excess
                worst_where = (f"{name}{list(int(i) for i in where)}: analytic {analytic[where]:.6g}, "
                               f"numeric {numeric:.6g}")
    passed = worst <= 1.0
    measured = f"{checked} elements, worst at {worst:.2g}x tolerance" + ("" if passed else f" ({worst_where})")
    return CheckResult(
        "gradcheck", passed, measured,
        f"|analytic - numeric| <= {GRADCHECK_ATOL:g} + {GRADCHECK_RTOL:g}|numeric|",
        "a backward formula is wrong (a dropped term, a sign, a missing scale) in an op this architecture uses",
        "the named parameter's module; run minillm.debug.gradcheck on its ops (minillm/ops/*.py backward)")


def check_overfit(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """One fixed batch, trained on alone, is memorised: the loss falls below the threshold."""
    twin = shrink(config)
    model = build(twin)
    ids = tokens((4, twin.block_size + 1), twin.vocab_size)
    batch = (ids[:, :-1], ids[:, 1:])
    optimizer = cfg.optim.build_optimizer(cfg.optim.param_groups(model.named_parameters(), 0.0),
                                          lambda step: OVERFIT_LR)
    trainer = Trainer(model, optimizer, lambda step: OVERFIT_LR, _quiet_loop(), language_model_loss,
                      _Batches([batch]), grad_clip=1.0, data_parallel=False)
    first = last = math.nan
    for step in range(OVERFIT_STEPS):
        last = trainer.train_step()["loss"]
        first = last if step == 0 else first
    return CheckResult(
        "overfit", bool(last < OVERFIT_THRESHOLD), f"{first:.3f} -> {last:.4f} in {OVERFIT_STEPS} steps",
        f"< {OVERFIT_THRESHOLD} ({type(optimizer).__name__} lr {OVERFIT_LR:g})",
        "the model cannot learn even one batch: the optimizer does not update the weights, gradients do not "
        "reach some parameters, the targets are not the inputs shifted by one, or the learning rate is ignored",
        f"{type(optimizer).__name__}.step and zero_grad, Trainer.train_step, set_lr, which parameters have "
        "requires_grad")


def check_grad_accumulation(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """One Trainer step over k micro-batches (grad_accum_steps=k) moves the weights exactly as
    one step over the batch of all k (SGD, lr 1, no clipping, float64: the update is the gradient)."""
    twin = shrink(config)
    k = min(max(cfg.loop.grad_accum_steps, 2), 4)
    ids = tokens((2 * k, twin.block_size + 1), twin.vocab_size)
    whole = (ids[:, :-1], ids[:, 1:])
    micro = [(whole[0][2 * i:2 * i + 2], whole[1][2 * i:2 * i + 2]) for i in range(k)]
    updates, losses = [], []
    for accum, batches in ((k, micro), (1, [whole])):
        model = build(twin, dtype=np.float64)
        before = {name: array.copy() for name, array in model.state_dict().items()}
        trainer = Trainer(model, SGD(model.parameters(), lr=1.0), lambda step: 1.0,
                          _quiet_loop(grad_accum_steps=accum), language_model_loss, _Batches(batches), grad_clip=0.0,
                          data_parallel=False)
        losses.append(trainer.train_step()["loss"])
        updates.append({name: before[name] - array for name, array in model.state_dict().items()})
    scale = max(float(np.max(np.abs(u))) for u in updates[1].values()) or 1.0
    error = max(float(np.max(np.abs(updates[0][n] - updates[1][n]))) for n in updates[1]) / scale
    loss_error = abs(losses[0] - losses[1]) / max(abs(losses[1]), 1e-12)
    worst = max(error, loss_error)
    return CheckResult(
        "grad accumulation", bool(worst <= ACCUM_TOLERANCE),
        f"k={k}: update differs by {error:.1e}, loss by {loss_error:.1e} (relative)", f"<= {ACCUM_TOLERANCE:g}",
        "accumulated gradients are not the mean over the micro-batches: the loss is divided by the wrong count, "
        "gradients are zeroed between micro-batches, or a micro-batch is dropped or repeated",
        "Trainer.train_step and Trainer._backward (the 1/grad_accum_steps weight), optimizer.zero_grad")


def check_kv_cache(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """Greedy decoding with the key/value cache gives the logits (at every position) and the
    tokens of recomputing the whole sequence (float64)."""
    twin = shrink(config)
    model = build(twin, dtype=np.float64)
    model.eval()
    prompt = tokens((2, 3), twin.vocab_size)
    new = twin.block_size - prompt.shape[1]
    cached = model.generate(prompt, max_new_tokens=new, temperature=0.0, use_cache=True)
    recomputed = model.generate(prompt, max_new_tokens=new, temperature=0.0, use_cache=False)
    cached, recomputed = to_numpy(cached), to_numpy(recomputed)
    same_tokens = int((cached == recomputed).all(axis=0).sum())
    sequence = cached
    with no_grad():
        full = to_numpy(model(sequence)[0].data)                     # (B, T, V), every position at once
        cache = KVCache.for_model(model, sequence.shape[0])
        steps = [to_numpy(model(sequence[:, :3], kv_cache=cache)[0].data)]
        for position in range(3, sequence.shape[1]):
            steps.append(to_numpy(model(sequence[:, position:position + 1], kv_cache=cache)[0].data))
    stepwise = np.concatenate(steps, axis=1)
    difference = float(np.max(np.abs(stepwise - full)))
    passed = difference <= KV_TOLERANCE and same_tokens == sequence.shape[1]
    return CheckResult(
        "kv cache", bool(passed),
        f"max |logit diff| {difference:.1e}; {same_tokens}/{sequence.shape[1]} greedy positions equal",
        f"<= {KV_TOLERANCE:g}; all equal",
        "cached decoding sees a different context than a full forward: the causal mask lets a query see a later "
        "position, the cache drops, duplicates or misplaces a position, or positions (RoPE, learned) are offset",
        "minillm/nn/kv_cache.py (update, advance), CausalSelfAttention.forward, causal_mask, position_offset")


def check_resume(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """Train 6 steps straight; train 3, save, disturb the global RNG, resume into a fresh model and
    train 3 more: the losses and final weights are identical, bit for bit (dropout on, so the RNG
    state matters; the config's optimizer and precision)."""
    twin = shrink(config, dropout=0.1)
    data = tokens(2000, twin.vocab_size).astype(np.uint16)
    precision = cfg.loop.precision

    def trainer(seed: int) -> Trainer:
        model = build(twin, seed=seed)
        schedule = CosineSchedule(cfg.optim.lr, cfg.optim.min_lr, 2, 6)
        optimizer = cfg.optim.build_optimizer(cfg.optim.param_groups(model.named_parameters()), schedule)
        loader = RandomWindowLoader(data, batch_size=2, block_size=twin.block_size, seed=seed)
        return Trainer(model, optimizer, schedule, _quiet_loop(precision=precision), language_model_loss, loader,
                       grad_clip=cfg.optim.grad_clip, data_parallel=False)

    straight = trainer(SEED)
    straight_losses = [straight.train_step()["loss"] for _ in range(6)]
    first = trainer(SEED)
    losses = [first.train_step()["loss"] for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="minillm-doctor-") as folder:
        path = os.path.join(folder, "last.safetensors")
        first.save(path)
        manual_seed(999)                               # resume must restore the RNG itself
        resumed = trainer(SEED + 1)                    # other weights and loader seed: resume must restore them
        resumed.resume(path)
        losses += [resumed.train_step()["loss"] for _ in range(3)]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    weights_equal = all(np.array_equal(to_numpy(a[name]), to_numpy(b[name])) for name in a)
    differing = [i + 1 for i, (x, y) in enumerate(zip(losses, straight_losses)) if x != y]
    passed = weights_equal and not differing
    measured = ("6 losses and all weights identical" if passed else
                f"losses differ at steps {differing or 'none'}; weights {'equal' if weights_equal else 'differ'}")
    return CheckResult(
        "resume", passed, f"{measured} ({precision})", "bit-exact",
        "a checkpoint misses part of the state: the global RNG (dropout), the batch sampler's position, the "
        "optimizer's moments or step count, the loss scaler, or the step the schedule reads",
        "Trainer.save / Trainer.resume, minillm/train/checkpoint.py, the loader's state_dict")


def check_dpo(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """DPO's loss at step 0, with the policy equal to its frozen reference, is -log σ(0) = ln 2."""
    twin = shrink(config)
    model = build(twin)
    ids = tokens((4, twin.block_size + 1), twin.vocab_size)
    targets = ids[:, 1:].copy()
    targets[:, :5] = -100                              # the prompt part carries no target
    batch = {"chosen_x": ids[:2, :-1], "chosen_y": targets[:2], "rejected_x": ids[2:, :-1], "rejected_y": targets[2:]}
    objective = DPOObjective(frozen_copy(model), beta=0.1)
    loss, _ = objective(model, batch)
    value = loss.item()
    return CheckResult(
        "dpo", bool(abs(value - math.log(2)) <= DPO_TOLERANCE), f"{value:.7f} (ln 2 = {math.log(2):.7f})",
        f"|loss - ln 2| <= {DPO_TOLERANCE:g}",
        "the policy and its reference disagree at step 0: the reference is not an exact copy, or the two sides' "
        "log-probs are computed differently (masking, dropout left on, a different forward)",
        "minillm/posttrain/dpo.py: frozen_copy, pair_logprobs, sequence_logprobs, dpo_loss")


def check_mixed_precision(config: GPTConfig, cfg: TrainConfig) -> CheckResult:
    """One forward and backward under autocast(fp16/bf16) against fp32 (loss and global gradient);
    for fp16 also the loss scaler: an inf gradient halves the scale and is skipped, clean steps grow it."""
    precision = cfg.loop.precision
    threshold = f"loss <= {AMP_LOSS_TOLERANCE:.0%}, grads <= {AMP_GRAD_TOLERANCE:.0%} (relative)"
    if precision == "fp32":
        return CheckResult("mixed precision", None, "loop.precision is fp32", threshold)
    twin = shrink(config)
    model = build(twin)
    ids = tokens((4, twin.block_size + 1), twin.vocab_size)
    results = []
    for mode in ("fp32", precision):
        model.zero_grad()
        scaler = GradScaler() if mode == "fp16" else None
        with autocast(mode):
            _, loss = model(ids[:, :-1], ids[:, 1:])
        (loss if scaler is None else scaler.scale(loss)).backward()
        inverse = 1.0 if scaler is None else 1.0 / scaler.get_scale()
        grads = np.concatenate([to_numpy(p.grad).astype(np.float64).ravel() * inverse for p in model.parameters()
                                if p.grad is not None])
        results.append((loss.item(), grads))
    (loss32, g32), (loss_low, g_low) = results
    loss_error = abs(loss_low - loss32) / abs(loss32)
    grad_error = float(np.linalg.norm(g_low - g32) / np.linalg.norm(g32))
    passed = loss_error <= AMP_LOSS_TOLERANCE and grad_error <= AMP_GRAD_TOLERANCE
    measured = f"{precision}: loss off by {loss_error:.2%}, grads by {grad_error:.2%}"
    if precision == "fp16":
        scaler_ok, scaler_text = _scaler_behaves(model)
        passed = passed and scaler_ok
        measured += f"; scaler {scaler_text}"
        threshold += "; scale halves on inf, grows after clean steps"
    return CheckResult(
        "mixed precision", bool(passed), measured, threshold,
        "low-precision compute diverges from fp32: an op runs in fp16/bf16 that needs fp32 (softmax, norms, the "
        "loss), a rounding point is missing or doubled, or the loss scaler does not unscale/back off",
        "minillm/amp (POLICY, dispatch, GradScaler), minillm/ops/lowp")


def _scaler_behaves(model) -> tuple[bool, str]:
    """A GradScaler(growth_interval=2) on ``model``'s gradients: an inf gradient is found and the
    scale halves; two clean steps double it again."""
    optimizer = SGD(model.parameters(), lr=0.0)
    scaler = GradScaler(init_scale=2.0 ** 16, growth_interval=2)
    params = [p for p in model.parameters() if p.grad is not None]
    start = scaler.get_scale()
    params[0].grad = params[0].grad.copy()
    params[0].grad.flat[0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        found = scaler.unscale_(optimizer)
    scaler.update()
    backed_off = scaler.get_scale()
    for p in params:
        p.grad = np.zeros_like(p.grad)
    for _ in range(2):
        scaler.unscale_(optimizer)
        scaler.update()
    grown = scaler.get_scale()
    ok = found and backed_off == start * 0.5 and grown == start
    return ok, f"{start:g} -> {backed_off:g} on inf -> {grown:g} after 2 clean"


CHECKS: list[Callable[[GPTConfig, TrainConfig], CheckResult]] = [
    check_initial_loss, check_gradcheck, check_overfit, check_grad_accumulation, check_kv_cache, check_resume,
    check_dpo, check_mixed_precision]


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------
def run_checks(cfg: TrainConfig, checks=None) -> list[CheckResult]:
    """Run every check (or ``checks``) on ``cfg``; a check that raises is a failure."""
    config = model_config(cfg)
    results = []
    for check in CHECKS if checks is None else checks:
        start = time.perf_counter()
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                result = check(config, cfg)
        except Exception as error:  # noqa: BLE001  (a crashing check is a failed check, reported in its row)
            name = check.__name__.removeprefix("check_").replace("_", " ")
            result = CheckResult(name, False, f"raised {type(error).__name__}: {str(error)[:200]}", "no error",
                                 "the code path this check exercises is broken", check.__doc__.split(".")[0] + ".")
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def format_table(results: list[CheckResult]) -> str:
    rows = [("check", "result", "measured", "threshold", "time")]
    rows += [(r.name, r.status, r.measured, r.threshold, f"{r.seconds:.1f}s") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    for r in results:
        if r.passed is False:
            lines.append(f"\nFAIL {r.name}: {r.measured}\n  usually means: {r.meaning}\n  look at: {r.look_at}")
    return "\n".join(lines)


def run_doctor(cfg: TrainConfig, out=None, checks=None) -> list[CheckResult]:
    """Run the checks, print the table to ``out``; raise :class:`DoctorFailed` (exit 4) if any failed."""
    out = out or sys.stdout
    config = model_config(cfg)
    twin = shrink(config)
    start = time.perf_counter()
    print(f"minillm doctor: {cfg.model.preset} model, {config.n_layer} layers x {config.n_embd} wide, "
          f"{config.n_head}/{config.n_kv_head} heads, vocab {config.vocab_size}, context {config.block_size}, "
          f"{cfg.loop.precision}; most checks on a twin with {twin.n_layer} layers x {twin.n_embd}, "
          f"vocab {twin.vocab_size}, context {twin.block_size}", file=out)
    results = run_checks(cfg, checks)
    print(format_table(results), file=out)
    failed = [r.name for r in results if r.passed is False]
    elapsed = time.perf_counter() - start
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed or skipped in {elapsed:.1f}s", file=out)
    if failed:
        raise DoctorFailed(f"{len(failed)} doctor check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)} "
                           "(the table above says what each usually means and what to look at)")
    return results


class DoctorConfig(TrainConfig):
    """``minillm doctor``: the training config it checks (the same options as ``minillm train``)."""

    description: ClassVar[str] = ("Preflight checks of a training config in seconds on a CPU (initial loss, "
                                  "gradcheck, overfitting one batch, gradient accumulation, KV cache, exact resume, "
                                  "DPO at step 0, mixed precision). Exit status 4 when a check fails.")


def run_doctor_command(cfg: DoctorConfig) -> int:
    run_doctor(cfg)
    return 0


def register(subparsers) -> None:
    commandline.register(subparsers, "doctor", DoctorConfig, run_doctor_command,
                         help="preflight checks of a training config (exit 4 when one fails)")
