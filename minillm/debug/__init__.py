"""Debugging aids: gradcheck (and its named checks), anomaly detection (NaN/Inf provenance),
graph export (DOT)."""
from minillm.debug.anomaly import detect_anomaly
from minillm.debug.gradcheck import (
    BackwardRun,
    GradcheckCase,
    GradcheckError,
    check_against_finite_differences,
    check_no_input_mutation,
    check_repeatable,
    check_shapes_and_dtypes,
    forward_backward,
    gradcheck,
    numeric_gradient,
    prepare_case,
)
from minillm.debug.graph import to_dot

__all__ = [
    "BackwardRun", "GradcheckCase", "GradcheckError", "check_against_finite_differences",
    "check_no_input_mutation", "check_repeatable", "check_shapes_and_dtypes", "detect_anomaly",
    "forward_backward", "gradcheck", "numeric_gradient", "prepare_case", "to_dot",
]
