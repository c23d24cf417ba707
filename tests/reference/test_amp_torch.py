"""bfloat16 / float16 rounding against PyTorch's own conversions (skipped without torch)."""
import numpy as np
import pytest

from minillm.amp import formats

torch = pytest.importorskip("torch")


def sample_patterns():
    every_7919th = np.arange(0, 2 ** 32, 7919, dtype=np.uint64).astype(np.uint32)
    return every_7919th[~np.isnan(every_7919th.view(np.float32))].view(np.float32)   # NaN payloads differ by design


def test_round_to_bf16_matches_torch_bfloat16_bit_for_bit():
    x = sample_patterns()
    expected = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(formats.float32_to_bf16_bits(x), expected)
    assert np.isnan(formats.round_to_bf16(np.array([np.nan], np.float32))).all()


def test_fast_float16_cast_matches_torch_half_bit_for_bit():
    x = sample_patterns()
    expected = torch.from_numpy(x.copy()).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(formats.cast(x, np.float16).view(np.uint16), expected)
