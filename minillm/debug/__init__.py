"""Debugging aids: gradcheck, anomaly detection (NaN/Inf provenance), graph export (DOT)."""
from minillm.debug.anomaly import detect_anomaly
from minillm.debug.gradcheck import GradcheckError, gradcheck
from minillm.debug.graph import to_dot

__all__ = ["GradcheckError", "detect_anomaly", "gradcheck", "to_dot"]
