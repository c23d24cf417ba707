"""From generated token ids to text, one token at a time: multi-byte characters and stop strings.

A byte-level BPE token is a run of bytes, not of characters: an emoji (4 UTF-8 bytes) may be
split over two or more tokens, and decoding each token alone would print U+FFFD garbage. So
tokens are turned into bytes (``tokenizer.decode_bytes``) and fed to an incremental UTF-8
decoder (``codecs.getincrementaldecoder("utf-8")(errors="replace")``), which keeps an incomplete
character until its last byte arrives; bytes that can never be valid UTF-8 become U+FFFD.

Stop strings: text is released only when it cannot be the beginning of a stop string. The
longest end of the pending text that is a prefix of some stop string is held back; once a stop
string appears, the text before it is released and decoding stops (the stop string itself is not
part of the text). So the streamed text equals the full decoded text cut before the first stop
string, whatever the token boundaries.
"""
from __future__ import annotations

import codecs


class IncrementalDetokenizer:
    """Token ids in (``push``), text out, with stop strings cut (see the module docstring).

    Attributes: ``stopped`` (a stop string was found), ``text`` (everything released so far).
    ``finish()`` releases what is still held (an incomplete character becomes U+FFFD).
    """

    def __init__(self, tokenizer, stop_strings=()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that is now safe to show ("" while held back)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(self.tokenizer.decode_bytes([token_id]))
        return self._release(final=False)

    def finish(self) -> str:
        """The end of the stream: flush the UTF-8 decoder and release the held text."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        pending = self._pending
        cut = min((i for i in (pending.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = pending[:cut], "", True
        else:
            hold = 0 if final else self._held_suffix(pending)
            out, self._pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
        self.text += out
        return out

    def _held_suffix(self, pending: str) -> int:
        """Length of the longest end of ``pending`` that a stop string starts with."""
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(pending)), longest, -1):
                if stop.startswith(pending[len(pending) - size:]):
                    longest = size
                    break
        return longest


def split_stop(stop) -> tuple[list[int], list[str]]:
    """``stop`` (None, an int id, a str, or a list/tuple of them) -> (ids, strings), checked."""
    if stop is None:
        return [], []
    items = list(stop) if isinstance(stop, (list, tuple)) else [stop]
    ids, strings = [], []
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise ValueError(f"stop[{index}]='' is an empty string; expected a non-empty stop string")
            strings.append(item)
        elif hasattr(item, "__index__") and not isinstance(item, bool):
            ids.append(int(item))
        else:
            raise TypeError(f"stop[{index}]={item!r} has type {type(item).__name__}; expected a token id "
                            "(int) or a stop string (str)")
    return ids, strings


def stream_text(model, tokenizer, prompt_ids, max_new_tokens: int, stop=None, **sampling):
    """Yield the text of ONE prompt's continuation as it is generated (str chunks).

    Multi-byte characters are never split and stop strings never shown (see the module
    docstring); a stop token id ends the text without its own text (``<|end|>`` is not printed).
    ``sampling``: temperature, top_k, top_p, repetition_penalty, seed, ... (``model.stream``'s).
    ``model.stream`` itself gets only the stop ids; the strings are cut here, and leaving this
    generator early closes the model's one, so generation stops with it.
    """
    stop_ids, stop_strings = split_stop(stop)
    detokenizer = IncrementalDetokenizer(tokenizer, stop_strings)
    ids = set(stop_ids)
    for token in model.stream(prompt_ids, max_new_tokens, stop=stop_ids or None, **sampling):
        if token in ids:
            break
        chunk = detokenizer.push(token)
        if chunk:
            yield chunk
        if detokenizer.stopped:
            return
    tail = detokenizer.finish()
    if tail:
        yield tail
