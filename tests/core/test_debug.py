"""Debugging aids: anomaly detection names the op and the user's line; DOT export."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm.autograd import AnomalyError

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NaNs here are planted


def test_anomaly_detection_reports_the_first_nan_in_forward_with_the_users_line():
    x = mm.tensor(np.array([1.0, -1.0]), requires_grad=True)
    with mm.debug.detect_anomaly():
        with pytest.raises(AnomalyError) as info:
            F.log(x)  # the line the report must point at
    text = str(info.value)
    assert "Log" in text and "test_debug.py" in text and "F.log(x)" in text


def test_anomaly_detection_reports_a_nan_gradient_in_backward():
    x = mm.tensor(np.array([0.0, 4.0]), requires_grad=True)
    with mm.debug.detect_anomaly():
        y = F.sqrt(x)      # finite forward, infinite gradient at 0
        with pytest.raises(AnomalyError, match=r"Sqrt produced NaN/Inf in its gradient for input 0"):
            y.sum().backward()


def test_anomaly_mode_is_off_outside_the_block():
    with mm.debug.detect_anomaly():
        pass
    y = F.log(mm.tensor(np.array([-1.0])))   # no error: just a NaN
    assert np.isnan(y.numpy()[0])


def test_node_names_appear_in_labels():
    x = mm.tensor(np.array([-1.0]), requires_grad=True)
    y = F.log(x)
    y.grad_fn.name = "block3.attn.log"
    assert "Log(block3.attn.log)" in repr(y)


def test_to_dot_lists_ops_leaves_and_shapes(tmp_path):
    w = mm.tensor(np.ones((3, 2), dtype=np.float32), requires_grad=True, name="w")
    x = mm.tensor(np.ones((4, 3), dtype=np.float32))
    loss = F.softmax(F.matmul(x, w)).sum()
    path = tmp_path / "graph.dot"
    text = mm.debug.to_dot(loss, path=str(path))
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    for piece in ("Softmax", "MatMul", "Sum", "w\\n(3, 2) float32", "(4, 2) float32"):
        assert piece in text
    assert path.read_text() == text
