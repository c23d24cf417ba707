"""Looking at a tokenization: token boundaries and compression statistics (any tokenizer)."""
from __future__ import annotations

_VISIBLE_CONTROLS = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def show_token(data: bytes) -> str:
    """One token as text: UTF-8 where valid, ``\\xNN`` for stray bytes, controls escaped."""
    text = data.decode("utf-8", errors="backslashreplace")
    if text.isprintable():
        return text
    return "".join(_escape_unprintable(char) for char in text)


def _escape_unprintable(char: str) -> str:
    if char in _VISIBLE_CONTROLS:
        return _VISIBLE_CONTROLS[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visualize(tokenizer, text: str, allowed_special: object = "all") -> str:
    """``text`` with every token in brackets: ``"[To][ be][,][ or][ not]"``.

    Newlines and tabs inside tokens are shown as ``\\n``/``\\t``; a token that holds only part of
    a multi-byte character shows its bytes as ``\\xNN``. Special tokens are recognized by
    default (``allowed_special="all"``) and shown by their string.
    """
    ids = tokenizer.encode(text, allowed_special=allowed_special)
    return "".join(f"[{show_token(tokenizer.decode_bytes([token_id]))}]" for token_id in ids)


def compression_report(tokenizer, text: str) -> dict:
    """Token and size statistics of ``tokenizer`` on ``text`` (special token strings as text).

    Returns ``{"characters", "bytes", "tokens", "bytes_per_token", "characters_per_token",
    "vocab_size"}``; ``format_compression_report`` prints it.
    """
    ids = tokenizer.encode_ordinary(text)
    num_bytes = len(text.encode("utf-8"))
    num_tokens = len(ids)
    return {
        "characters": len(text),
        "bytes": num_bytes,
        "tokens": num_tokens,
        "bytes_per_token": num_bytes / num_tokens if num_tokens else 0.0,
        "characters_per_token": len(text) / num_tokens if num_tokens else 0.0,
        "vocab_size": tokenizer.vocab_size,
    }


def format_compression_report(report: dict) -> str:
    """The report of ``compression_report`` as a few aligned lines of text."""
    return "\n".join([
        f"vocab size            {report['vocab_size']:>12,}",
        f"characters            {report['characters']:>12,}",
        f"UTF-8 bytes           {report['bytes']:>12,}",
        f"tokens                {report['tokens']:>12,}",
        f"bytes per token       {report['bytes_per_token']:>12.3f}",
        f"characters per token  {report['characters_per_token']:>12.3f}",
    ])
