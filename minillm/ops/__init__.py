"""Differentiable ops, one family per module. Each op is a Function subclass (forward and
backward side by side) plus a snake_case wrapper; minillm.functional re-exports the wrappers."""
