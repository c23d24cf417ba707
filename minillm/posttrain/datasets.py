"""SFT and DPO data: JSON-lines files (read strictly, written atomically) and rendering to token ids.

Files (UTF-8, one JSON object per line)
---------------------------------------
SFT, either form on each line::

    {"instruction": "Name a colour.", "input": "", "output": "Red."}        # Alpaca
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Alpaca lines become ``[user, assistant]`` with user content ``instruction`` plus ``"\\n\\n" + input``
when ``input`` is non-empty (``input`` is optional and may be ``""``, as in the Alpaca data).
``messages`` must follow the chat rules (``chat.check_conversation``) and end with an assistant
message. DPO lines::

    {"prompt": "...", "chosen": "...", "rejected": "..."}

where ``prompt`` is the user turn and ``chosen``/``rejected`` are two assistant replies to it.
Both kinds may carry an optional ``"meta"`` JSON object (provenance, e.g. which answers the task
generator corrupted); the loaders check it is an object and do not use it for training.

Strictness: blank (whitespace-only) lines are skipped, so a trailing newline or a spacer line is
harmless; every other line must be a valid record. Invalid UTF-8, bad JSON, a non-object, missing or
unexpected keys, wrong types, empty or whitespace-only texts, and DPO pairs whose chosen equals
rejected are all errors. The loader reads the whole file, then raises ONE ValueError naming the file
and listing every bad line number with its reason (the first ``MAX_ERRORS_SHOWN``, then a count):
nothing is dropped silently, and nothing is returned from a file with bad lines. A file with no
records raises too.

Batching lives in ``minillm.posttrain.batches`` (re-exported here): ``sft_batch``, ``dpo_batch``,
``SFTBatchSampler``, ``DPOBatchSampler``. This module turns files into conversations and pairs, and
renders them into token ids with a ``ChatTemplate``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from minillm.fileio import atomic_write_text
from minillm.posttrain.batches import (
    IGNORE_INDEX,
    DPOBatchSampler,
    RenderedPair,
    SFTBatchSampler,
    _check_list,
    dpo_batch,
    sft_batch,
)
from minillm.tokenizer.chat import ChatTemplate, check_conversation

MAX_ERRORS_SHOWN = 20

ALPACA_KEYS = ("instruction", "input", "output")
DPO_KEYS = ("prompt", "chosen", "rejected")
META_KEY = "meta"


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example: the user ``prompt`` and two replies, ``chosen`` preferred over ``rejected``.

    ``meta`` is optional provenance (a JSON-serialisable dict); it takes no part in equality.
    """
    prompt: str
    chosen: str
    rejected: str
    meta: dict | None = field(default=None, compare=False)


class _BadRecord(ValueError):
    """A record that fails validation; the reader turns it into one line of its report."""


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------

def load_sft_jsonl(path: str | os.PathLike) -> list[list[dict]]:
    """Conversations from an SFT JSON-lines file (see the module docstring for the format).

    Returns one list of ``{"role", "content"}`` messages per record, in file order.
    """
    return [conversation for conversation, _meta in _read_jsonl(path, "SFT", _parse_sft_record)]


def load_dpo_jsonl(path: str | os.PathLike) -> list[PreferencePair]:
    """Preference pairs from a DPO JSON-lines file (``prompt``, ``chosen``, ``rejected``, optional ``meta``)."""
    return _read_jsonl(path, "DPO", _parse_dpo_record)


def read_jsonl_records(path: str | os.PathLike, kind: str, parse_record) -> list:
    """Read a JSON-lines file with the loaders' rules (blank lines skipped, every bad line reported).

    ``parse_record(obj) -> value`` validates one decoded JSON value and raises ValueError with the
    reason when it is malformed. ``kind`` names the file in messages (e.g. ``"eval"``).
    """
    return _read_jsonl(path, kind, parse_record)


def _read_jsonl(path, kind: str, parse_record) -> list:
    path = os.fspath(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(b"\xef\xbb\xbf"):     # a UTF-8 byte-order mark from some editors
        raw = raw[3:]
    records, errors = [], []
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append((number, f"not valid UTF-8 (byte {exc.start} of the line: {exc.reason})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append((number, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        try:
            records.append(parse_record(obj))
        except ValueError as exc:
            errors.append((number, str(exc)))
    if errors:
        shown = "\n".join(f"  line {number}: {reason}" for number, reason in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        total = len(records) + len(errors)
        raise ValueError(f"{kind} file {path!r}: {len(errors)} malformed line(s) out of {total} non-blank "
                         f"line(s); nothing was loaded:\n{shown}{more}")
    if not records:
        what = "is empty" if not raw else "has only blank lines"
        raise ValueError(f"{kind} file {path!r} {what}: no records; expected one JSON object per line")
    return records


def _parse_sft_record(obj) -> tuple[list[dict], dict | None]:
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    meta = _check_meta(obj)
    keys = set(obj) - {META_KEY}
    if "messages" in keys:
        if keys != {"messages"}:
            raise _BadRecord(f"has 'messages' and also {sorted(keys - {'messages'})}; expected either "
                             "'messages' or the Alpaca keys, not both")
        messages = obj["messages"]
        try:
            check_conversation(messages, last_role="assistant")
        except (ValueError, TypeError) as exc:
            raise _BadRecord(str(exc)) from None
        for index, message in enumerate(messages):
            if not message["content"].strip():
                raise _BadRecord(f"messages[{index}]: content is empty; expected non-empty text")
        return [{"role": m["role"], "content": m["content"]} for m in messages], meta
    if "instruction" not in keys and "output" not in keys:
        raise _BadRecord(f"has keys {sorted(obj)}; expected 'messages', or 'instruction' and 'output' "
                         "(optional 'input')")
    unexpected = sorted(keys - set(ALPACA_KEYS))
    if unexpected:
        raise _BadRecord(f"unexpected key(s) {unexpected}; expected 'instruction', 'output', optional 'input' "
                         f"and '{META_KEY}'")
    for key in ("instruction", "output"):
        _check_text_field(obj, key)
    extra_input = obj.get("input", "")
    if not isinstance(extra_input, str):
        raise _BadRecord(f"'input' has type {type(extra_input).__name__}; expected a string (may be empty)")
    user = obj["instruction"] + ("\n\n" + extra_input if extra_input else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}], meta


def _parse_dpo_record(obj) -> PreferencePair:
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    meta = _check_meta(obj)
    keys = set(obj) - {META_KEY}
    missing = [key for key in DPO_KEYS if key not in keys]
    unexpected = sorted(keys - set(DPO_KEYS))
    if missing or unexpected:
        raise _BadRecord(f"missing key(s) {missing}, unexpected key(s) {unexpected}; expected exactly "
                         f"'prompt', 'chosen', 'rejected' and optional '{META_KEY}'")
    for key in DPO_KEYS:
        _check_text_field(obj, key)
    if obj["chosen"] == obj["rejected"]:
        raise _BadRecord("'chosen' equals 'rejected'; a pair of identical replies carries no preference")
    return PreferencePair(obj["prompt"], obj["chosen"], obj["rejected"], meta)


def _check_text_field(obj: dict, key: str) -> None:
    if key not in obj:
        raise _BadRecord(f"missing key {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise _BadRecord(f"{key!r} has type {type(value).__name__}; expected a non-empty string")
    if not value.strip():
        raise _BadRecord(f"{key!r} is {value!r}; expected a non-empty string")


def _check_meta(obj: dict) -> dict | None:
    meta = obj.get(META_KEY)
    if META_KEY in obj and not isinstance(meta, dict):
        raise _BadRecord(f"'{META_KEY}' has type {type(meta).__name__}; expected a JSON object")
    return meta


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------

def save_sft_jsonl(path: str | os.PathLike, examples) -> None:
    """Write SFT examples as ``{"messages": [...]}`` lines (plus ``"meta"`` when given), atomically.

    ``examples``: a list whose items are conversations (lists of messages) or records
    ``{"messages": conversation, "meta": dict}``. Every item is validated with the loader's rules
    first, so the file written always loads; bad items raise ValueError listing their indices.
    """
    lines, errors = [], []
    for index, example in enumerate(_check_list(examples, "examples")):
        record = {"messages": example} if isinstance(example, (list, tuple)) else example
        try:
            _parse_sft_record(record)
            lines.append(_dump_line(record))
        except ValueError as exc:
            errors.append((index, str(exc)))
    _raise_item_errors(errors, "examples", path)
    atomic_write_text(path, "".join(lines))


def save_dpo_jsonl(path: str | os.PathLike, pairs) -> None:
    """Write ``PreferencePair``s as ``{"prompt", "chosen", "rejected"[, "meta"]}`` lines, atomically."""
    lines, errors = [], []
    for index, pair in enumerate(_check_list(pairs, "pairs")):
        if not isinstance(pair, PreferencePair):
            errors.append((index, f"has type {type(pair).__name__}; expected PreferencePair"))
            continue
        record = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
        if pair.meta is not None:
            record[META_KEY] = pair.meta
        try:
            _parse_dpo_record(record)
            lines.append(_dump_line(record))
        except ValueError as exc:
            errors.append((index, str(exc)))
    _raise_item_errors(errors, "pairs", path)
    atomic_write_text(path, "".join(lines))


def _dump_line(record: dict) -> str:
    try:
        return json.dumps(record, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:     # e.g. a set or an object inside meta
        raise _BadRecord(f"is not JSON-serialisable: {exc}") from None


def _raise_item_errors(errors: list, name: str, path) -> None:
    if errors:
        shown = "\n".join(f"  {name}[{index}]: {reason}" for index, reason in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ValueError(f"not writing {os.fspath(path)!r}: {len(errors)} invalid item(s) in {name}:\n{shown}{more}")


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------

def render_sft_examples(template: ChatTemplate, conversations) -> list[tuple[list[int], list[bool]]]:
    """``[template.render(c) for c in conversations]``, with errors naming the conversation index."""
    rendered = []
    for index, conversation in enumerate(_check_list(conversations, "conversations")):
        try:
            rendered.append(template.render(conversation))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"conversations[{index}]: {exc}") from None
    return rendered


def render_preference_pairs(template: ChatTemplate, pairs) -> list[RenderedPair]:
    """Render each pair: the prompt as a user turn ending in ``<|assistant|>``, the replies with ``<|end|>``."""
    rendered = []
    for index, pair in enumerate(_check_list(pairs, "pairs")):
        if not isinstance(pair, PreferencePair):
            raise TypeError(f"pairs[{index}] has type {type(pair).__name__}; expected PreferencePair")
        prompt_ids = template.render_prompt([{"role": "user", "content": pair.prompt}])
        rendered.append(RenderedPair(prompt_ids, template.render_reply(pair.chosen),
                                     template.render_reply(pair.rejected)))
    return rendered


__all__ = [
    "PreferencePair", "load_sft_jsonl", "load_dpo_jsonl", "read_jsonl_records", "save_sft_jsonl", "save_dpo_jsonl",
    "render_sft_examples", "render_preference_pairs",
    # re-exported from minillm.posttrain.batches
    "IGNORE_INDEX", "RenderedPair", "sft_batch", "dpo_batch", "SFTBatchSampler", "DPOBatchSampler",
]
