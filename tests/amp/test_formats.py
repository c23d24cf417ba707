"""The formats' bits (minillm.amp.formats): bf16 rounding bit for bit (by hand, and the same function
in serialization and on the GPU path), the fast float16 casts bit-identical to astype."""
import numpy as np

from minillm import backend, serialization
from minillm.amp import formats


def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


# ------------------------------------------------------------------------------------------------
# bfloat16 rounding: round to nearest even on the float32 bit pattern
# ------------------------------------------------------------------------------------------------
# (float32 bits, expected bfloat16 bits), worked out by hand: bf16 keeps the top 16 bits; the
# dropped low half is compared with 0x8000 (a tie goes to the even kept pattern).
BF16_CASES = [
    (0x3F800000, 0x3F80),   # 1.0: exact
    (0x3F807FFF, 0x3F80),   # just below the halfway point: down
    (0x3F808000, 0x3F80),   # tie, kept pattern 0x3F80 is even: down
    (0x3F808001, 0x3F81),   # just above halfway: up
    (0x3F818000, 0x3F82),   # tie, 0x3F81 is odd: up to the even 0x3F82
    (0x3F81FFFF, 0x3F82),   # up, carrying into the next pattern
    (0xBF808000, 0xBF80),   # negative tie to even: magnitude down
    (0xBF818000, 0xBF82),   # negative tie to even: magnitude up
    (0x3FFFFFFF, 0x4000),   # 1.99999988: the carry bumps the exponent (-> 2.0)
    (0x7F7F7FFF, 0x7F7F),   # below halfway under the largest bf16: stays finite
    (0x7F7F8000, 0x7F80),   # tie with odd 0x7F7F: rounds up into +inf, as bf16 overflows
    (0x7F7FFFFF, 0x7F80),   # float32 max -> +inf
    (0xFF7FFFFF, 0xFF80),   # -float32 max -> -inf
    (0x7F800000, 0x7F80),   # +inf
    (0xFF800000, 0xFF80),   # -inf
    (0x7FC00000, 0x7FC0),   # quiet NaN
    (0x7F800001, 0x7FC0),   # signalling NaN with only a low bit: stays NaN (quiet bit forced), never inf
    (0xFFFFFFFF, 0xFFFF),   # negative NaN with every bit set: no wrap into -0.0
    (0x80000000, 0x8000),   # -0.0
    (0x00000001, 0x0000),   # smallest subnormal: rounds to +0
    (0x00008000, 0x0000),   # subnormal tie with even 0x0000: down
    (0x00018000, 0x0002),   # subnormal tie with odd 0x0001: up
    (0x00008001, 0x0001),   # subnormal above halfway: up
    (0x007FFFFF, 0x0080),   # largest subnormal rounds up to the smallest normal 2^-126
]


def test_bf16_rounding_matches_hand_computed_bit_patterns():
    inputs = f32([c[0] for c in BF16_CASES])
    expected = np.array([c[1] for c in BF16_CASES], dtype=np.uint16)
    np.testing.assert_array_equal(formats.float32_to_bf16_bits(inputs), expected)
    rounded = formats.round_to_bf16(inputs).view(np.uint32)
    np.testing.assert_array_equal(rounded, expected.astype(np.uint32) << 16)
    np.testing.assert_array_equal(formats.bf16_bits_to_float32(expected).view(np.uint32),
                                  expected.astype(np.uint32) << 16)


def test_round_to_bf16_is_bits_then_widen_and_serialization_uses_the_same_function(rng):
    with np.errstate(over="ignore"):
        wide = (rng.standard_normal(5000) * 10.0 ** rng.integers(-40, 39, 5000)).astype(np.float32)
    x = np.concatenate([wide, f32([c[0] for c in BF16_CASES])])
    bits = formats.float32_to_bf16_bits(x)
    np.testing.assert_array_equal(formats.round_to_bf16(x).view(np.uint32),
                                  formats.bf16_bits_to_float32(bits).view(np.uint32))
    np.testing.assert_array_equal(serialization.float32_to_bf16_bits(x), bits)
    assert formats.round_to_bf16(formats.round_to_bf16(x)).tobytes() == formats.round_to_bf16(x).tobytes()


def test_bf16_rounding_runs_on_the_gpu_path(gpu_device):
    x = f32([c[0] for c in BF16_CASES])
    device_bits = formats.float32_to_bf16_bits(backend.to_device(x, gpu_device))
    assert backend.device_of(device_bits) == "cuda"
    np.testing.assert_array_equal(backend.to_numpy(device_bits), formats.float32_to_bf16_bits(x))


# ------------------------------------------------------------------------------------------------
# the host's float16 casts: bit-identical to astype
# ------------------------------------------------------------------------------------------------
def test_fast_float32_to_float16_is_bit_identical_to_astype():
    every_4093rd = np.arange(0, 2 ** 32, 4093, dtype=np.uint64).astype(np.uint32).view(np.float32)
    specials = np.array([0.0, -0.0, 65504, 65519.996, 65520, 65536, -65520, 2.0 ** -24, 2.0 ** -25,
                         3 * 2.0 ** -26, 2.0 ** -14, 6.1e-5, 1e-8, np.inf, -np.inf], dtype=np.float32)
    x = np.concatenate([every_4093rd, specials])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16)
    got = formats.cast(x, np.float16)
    finite_or_inf = ~np.isnan(x)
    np.testing.assert_array_equal(got.view(np.uint16)[finite_or_inf], expected.view(np.uint16)[finite_or_inf])
    assert np.isnan(got[~finite_or_inf]).all()


def test_fast_float16_to_float32_is_exact_for_every_pattern():
    every = np.tile(np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16), 2).view(np.float16)
    expected = every.astype(np.float32)
    got = formats.cast(every, np.float32)
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(got.view(np.uint32)[ok], expected.view(np.uint32)[ok])
    assert np.isnan(got[~ok]).all()


def test_cast_keeps_the_memory_order_of_a_transposed_view(rng):
    x = rng.standard_normal((2, 64, 3, 16)).astype(np.float32).transpose(0, 2, 1, 3)   # (B, H, T, D) view
    y = formats.cast(x, np.float16)
    assert y.strides == x.astype(np.float16).strides
    np.testing.assert_array_equal(y, x.astype(np.float16))
    assert formats.cast(y, np.float16) is y
