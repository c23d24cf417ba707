"""Every op in minillm.functional passes a float64 gradcheck with a random upstream gradient."""
import pathlib
import re

import pytest

import minillm as mm
from minillm import functional as F
from tests.core.op_cases import CASES

TESTS_DIR = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gradcheck(case, rng, device):
    if case.host_only and device != "cpu":
        pytest.skip(f"{case.id} uses float128, which the GPU does not have")
    tensors = [mm.tensor(a, device=device) for a in case.inputs(rng)]
    assert mm.gradcheck(case.fn, tensors)


def _gradchecked_names() -> set[str]:
    """Op names that some test gradchecks: OpCase names here, plus `F.name` calls in any test
    module that calls gradcheck (the fused-op and model tests live in other modules)."""
    names = {case.op for case in CASES}
    for path in TESTS_DIR.rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        if "gradcheck(" in text:
            names.update(re.findall(r"\bF\.([a-z_0-9]+)\(", text))
    return names


def test_every_functional_op_has_a_gradcheck():
    missing = sorted(set(F.__all__) - _gradchecked_names())
    assert not missing, f"ops in minillm.functional without a gradcheck test: {missing}"


def test_gradcheck_covers_broadcasting_for_every_binary_op():
    broadcast = {case.op for case in CASES if "broadcast" in case.label}
    assert {"add", "sub", "mul", "div", "pow", "maximum", "where", "matmul"} <= broadcast
