"""Per-layer training health: what ``minillm train --health_interval N`` records
(:mod:`minillm.health.observer`) and the ``minillm health RUN_DIR`` report and dashboard
(:mod:`minillm.health.report`)."""
from minillm.health.observer import DEAD_THRESHOLD, OUTLIER_FACTOR, HealthObserver, attention_entropy, is_health_step

__all__ = ["DEAD_THRESHOLD", "OUTLIER_FACTOR", "HealthObserver", "attention_entropy", "is_health_step"]
