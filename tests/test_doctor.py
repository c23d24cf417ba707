"""``minillm doctor``: every check passes on the real code and fails on a bug planted for it
(by monkeypatching), and the command exits 4 with the failing check named."""
import numpy as np
import pytest

import minillm.functional as F
from minillm import cli, doctor
from minillm.errors import EXIT_DOCTOR
from minillm.nn import GPT
from minillm.nn.kv_cache import LayerKVCache
from minillm.ops import norm as norm_ops
from minillm.optim import Optimizer
from minillm.posttrain import dpo
from minillm.train import trainer as trainer_module
from minillm.train.trainer import Trainer


def doctor_exit(capsys, *args):
    """(exit status, stdout, stderr) of ``minillm doctor ARGS``."""
    status = cli.main(["doctor", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def rows(out: str) -> dict:
    """{check name: PASS/FAIL/skip} from the printed table."""
    found = {}
    for line in out.splitlines():
        for name in ("initial loss", "gradcheck", "overfit", "grad accumulation", "kv cache", "resume", "dpo",
                     "mixed precision"):
            if line.startswith(name + "  "):
                found[name] = line[len(name):].split()[0]
    return found


def only(check):
    return [getattr(doctor, f"check_{check}")]


def test_the_command_passes_on_the_real_code_and_prints_the_table(capsys):
    status, out, err = doctor_exit(capsys, "--config", "examples/configs/shakespeare_bpe.toml", "--precision", "fp16")
    assert status == 0, out + err
    assert set(rows(out).values()) == {"PASS"} and len(rows(out)) == 8
    assert "ln 4096 = 8.3178" in out and "8 of 8 checks passed" in out and err == ""


def test_gpt2_preset_and_bf16_pass_and_fp32_skips_mixed_precision(capsys):
    status, out, _ = doctor_exit(capsys, "--preset", "gpt2", "--n-kv-head", "4", "--precision", "bf16")
    assert status == 0 and set(rows(out).values()) == {"PASS"}
    status, out, _ = doctor_exit(capsys)
    assert status == 0 and rows(out)["mixed precision"] == "skip"


def fails_alone(check: str, capsys) -> doctor.CheckResult:
    """Run one check through run_doctor: it must fail, raise DoctorFailed (exit 4) naming it."""
    with pytest.raises(doctor.DoctorFailed, match=check) as raised:
        doctor.run_doctor(doctor.DoctorConfig.load(None, {"loop.precision": "fp16"}), checks=only(check.replace(" ", "_")))
    assert raised.value.exit_code == EXIT_DOCTOR
    out = capsys.readouterr().out
    assert f"FAIL {check}" in out and "usually means:" in out and "look at:" in out
    return out


def test_scaled_initial_logits_fail_the_initial_loss_check(monkeypatch, capsys):
    real = GPT._init_weights

    def too_large(self):
        real(self)
        for p in self.parameters():
            p.data = p.data * 20

    monkeypatch.setattr(GPT, "_init_weights", too_large)
    fails_alone("initial loss", capsys)


def test_a_wrong_rmsnorm_gradient_fails_the_gradcheck(monkeypatch, capsys):
    real = norm_ops.RMSNorm.backward

    def dropped_term(self, gy):
        gx, gw = real(self, gy)
        return gx * 1.01, gw              # a wrong scale on the input gradient

    monkeypatch.setattr(norm_ops.RMSNorm, "backward", dropped_term)
    out = fails_alone("gradcheck", capsys)
    assert "analytic" in out and "numeric" in out


def test_an_optimizer_that_does_not_step_fails_the_overfit_check(monkeypatch, capsys):
    monkeypatch.setattr(Optimizer, "step", lambda self: None)        # whichever the config chooses
    fails_alone("overfit", capsys)


def test_accumulation_divided_by_k_plus_1_fails_the_accumulation_check(monkeypatch, capsys):
    def off_by_one(self, loss):
        (loss * (1.0 / (self.loop.grad_accum_steps + 1))).backward()

    monkeypatch.setattr(Trainer, "_backward", off_by_one)
    fails_alone("grad accumulation", capsys)


def test_a_kv_cache_that_drops_a_position_fails_the_kv_check(monkeypatch, capsys):
    real = LayerKVCache.update

    def drops_first(self, k, v):
        keys, values = real(self, k, v)
        return (keys[:, :, 1:], values[:, :, 1:]) if keys.shape[2] > 1 else (keys, values)

    monkeypatch.setattr(LayerKVCache, "update", drops_first)
    fails_alone("kv cache", capsys)


def test_a_causal_mask_that_sees_the_next_position_fails_the_kv_check(monkeypatch, capsys):
    real = F.scaled_dot_product_attention

    def leaky(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        if is_causal and attn_mask is None:
            t, s = q.shape[2], k.shape[2]
            rows_, cols = np.arange(t)[:, None] + (s - t), np.arange(s)[None, :]
            attn_mask, is_causal = cols <= rows_ + 1, False          # one position into the future
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

    monkeypatch.setattr(F, "scaled_dot_product_attention", leaky)
    out = fails_alone("kv cache", capsys)
    assert "causal mask" in out


def test_a_resume_that_does_not_restore_the_rng_fails_the_resume_check(monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "set_rng_state", lambda state: None)
    fails_alone("resume", capsys)


def test_a_reference_that_is_not_a_copy_fails_the_dpo_check(monkeypatch, capsys):
    real = dpo.frozen_copy

    def reinitialised(model):
        copy = real(model)
        for p in copy.parameters():
            p.data = p.data * 1.5
        return copy

    monkeypatch.setattr(doctor, "frozen_copy", reinitialised)
    fails_alone("dpo", capsys)


def test_an_fp16_scaler_that_does_not_back_off_fails_the_mixed_precision_check(monkeypatch, capsys):
    monkeypatch.setattr(doctor.GradScaler, "update", lambda self: setattr(self, "found_inf", None))
    out = fails_alone("mixed precision", capsys)
    assert "65536 -> 65536 on inf" in out


def test_a_crashing_check_fails_with_the_exception_and_the_command_exits_4(monkeypatch, capsys):
    def broken(self, k, v):
        raise RuntimeError("cache exploded")

    monkeypatch.setattr(LayerKVCache, "update", broken)
    status, out, err = doctor_exit(capsys)
    assert status == EXIT_DOCTOR
    assert rows(out)["kv cache"] == "FAIL" and "RuntimeError: cache exploded" in out
    assert "minillm doctor: error: 1 doctor check failed: kv cache" in err


def test_train_with_doctor_stops_with_status_4_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(trainer_module, "set_rng_state", lambda state: None)
    ran = []
    monkeypatch.setattr("minillm.train.cli.run_pretraining", lambda cfg: ran.append(cfg))
    status = cli.main(["train", "--doctor", "--out-dir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert status == EXIT_DOCTOR and not ran
    assert "FAIL resume" in captured.out and "minillm train: error: 1 doctor check failed: resume" in captured.err
