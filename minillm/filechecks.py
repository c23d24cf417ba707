"""Checks shared by the readers of files that come from elsewhere (checkpoints, LoRA adapters).

Each reader validates every field of a file before it allocates anything from it, and reports a
fault as ``bad(what, problem)``: a function the reader defines that raises a ``ValueError``
naming the file (``checkpoint 'PATH': field 'step' is ...; expected ...``). These helpers are
the pieces two readers need; see :mod:`minillm.train.checkpoint` and :mod:`minillm.posttrain.lora`.
"""
from __future__ import annotations

# Dtypes of trained numbers (weights, optimizer moments, adapters): BF16 is widened to F32 on load.
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def is_int(value) -> bool:
    """An int that is not a bool (JSON ``true`` decodes to one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_kind(value) -> str:
    """A JSON value's kind, for messages."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def count_field(bad, key: str, text) -> int:
    """A non-negative integer metadata field stored as a decimal string (``step``, ``version``,
    ``vocab_size``): ASCII digits only, at most 30 of them (no sign, exponent or padding)."""
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 30:
        bad(f"field {key!r}", f"is {text!r:.40}; expected a non-negative integer")
    return int(text)
