"""Argument checks shared by the tokenizers: each raises TypeError/ValueError that names the
argument, the value and what was expected."""
from __future__ import annotations

import regex

_SURROGATE = regex.compile(r"[\ud800-\udfff]")

SURROGATE_POLICY = (
    "lone surrogates (U+D800..U+DFFF) are not Unicode characters and have no UTF-8 encoding, so "
    "they are rejected; clean such text first, e.g. text.encode('utf-8', 'replace').decode('utf-8')"
)


def short_repr(value: object, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters so a huge text does not flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(text: object, argument: str = "text") -> str:
    """``text`` must be a str (not bytes)."""
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{argument} is {type(text).__name__} {short_repr(text)}; expected str "
                        "(decode bytes first, e.g. data.decode('utf-8'))")
    raise TypeError(f"{argument}={short_repr(text)} has type {type(text).__name__}; expected str")


def find_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, or None (fast for ASCII text)."""
    if text.isascii():
        return None
    match = _SURROGATE.search(text)
    return match.start() if match else None


def surrogate_error(text: str, argument: str = "text") -> ValueError:
    """The error for a text that contains a lone surrogate (call when encoding it failed)."""
    position = find_surrogate(text)
    if position is None:  # not expected: only surrogates make str.encode('utf-8') fail
        return ValueError(f"{argument} cannot be encoded as UTF-8; {SURROGATE_POLICY}")
    return ValueError(
        f"{argument} contains the lone surrogate U+{ord(text[position]):04X} at index {position}; "
        f"{SURROGATE_POLICY}"
    )


def check_no_surrogates(text: str, argument: str = "text") -> None:
    if find_surrogate(text) is not None:
        raise surrogate_error(text, argument)


def check_special_token_list(special_tokens: object, argument: str = "special_tokens") -> list[str]:
    """A list/tuple of distinct, non-empty str (a bare str is refused: it is one token, not a list)."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, (str, bytes)) or not isinstance(special_tokens, (list, tuple)):
        raise TypeError(f"{argument}={short_repr(special_tokens)}; expected a list of str such as "
                        "['<|endoftext|>']")
    seen: set[str] = set()
    for index, token in enumerate(special_tokens):
        if not isinstance(token, str):
            raise TypeError(f"{argument}[{index}]={token!r} has type {type(token).__name__}; expected str")
        if token == "":
            raise ValueError(f"{argument}[{index}] is the empty string; expected a non-empty str")
        check_no_surrogates(token, f"{argument}[{index}]")
        if token in seen:
            raise ValueError(f"{argument}[{index}]={token!r} is listed twice; expected distinct tokens")
        seen.add(token)
    return list(special_tokens)


def check_ids(ids: object, table: list, vocab_size: int, argument: str = "ids") -> list:
    """Look every id up in ``table`` (id -> entry, None for an unassigned id); returns the entries.

    Accepts any iterable of integers (list, tuple, NumPy array...). Negative, too large,
    unassigned and non-integer ids raise ValueError/TypeError naming the position and the value.
    """
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{argument}={short_repr(ids)}; expected a sequence of int token ids")
    if hasattr(ids, "tolist"):  # NumPy/CuPy arrays: one conversion instead of a scalar per element
        ids = ids.tolist()
    try:
        ids = list(ids)
    except TypeError:
        raise TypeError(f"{argument}={short_repr(ids)} has type {type(ids).__name__}; expected a "
                        "sequence of int token ids") from None
    try:
        # Fast path: plain list indexing. Negative ids would index from the end, so check them.
        entries = [table[i] for i in ids]
        if ids and min(ids) >= 0 and None not in entries:
            return entries
    except (IndexError, TypeError):
        pass
    for position, token_id in enumerate(ids):
        if not hasattr(token_id, "__index__"):
            raise TypeError(f"{argument}[{position}]={token_id!r} has type {type(token_id).__name__}; "
                            "expected an int token id")
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"{argument}[{position}]={token_id} is out of range; expected "
                             f"0 <= id < vocab_size={vocab_size}")
        if table[token_id] is None:
            raise ValueError(f"{argument}[{position}]={token_id} is not assigned to any token (a gap between "
                             "special token ids)")
    return [table[i] for i in ids]  # every id is valid here (e.g. an empty sequence)


def check_byte_ids(byte_ids: object) -> list[int]:
    if byte_ids is None:
        return list(range(256))
    if not isinstance(byte_ids, (list, tuple)):
        raise TypeError(f"byte_ids={short_repr(byte_ids)}; expected a list of 256 ints")
    byte_ids = list(byte_ids)
    if (len(byte_ids) != 256 or not all(isinstance(v, int) and not isinstance(v, bool) for v in byte_ids)
            or sorted(byte_ids) != list(range(256))):
        raise ValueError(f"byte_ids={short_repr(byte_ids)}; expected the ids 0..255 in some order "
                         "(byte_ids[b] = id of byte b)")
    return byte_ids


def check_merges(merges: object) -> list[tuple[int, int]]:
    if not isinstance(merges, (list, tuple)):
        raise TypeError(f"merges={short_repr(merges)} has type {type(merges).__name__}; expected a list of "
                        "(left_id, right_id) pairs")
    checked: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for k, pair in enumerate(merges):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise TypeError(f"merges[{k}]={pair!r:.80}; expected a pair of int token ids")
        left, right = pair
        limit = 256 + k
        if not (0 <= left < limit and 0 <= right < limit):
            raise ValueError(f"merges[{k}]={tuple(pair)} uses an id outside 0..{limit - 1}; merge {k} may only "
                             "combine bytes and tokens made by earlier merges")
        if (left, right) in seen:
            raise ValueError(f"merges[{k}]={tuple(pair)} repeats an earlier merge; expected distinct pairs")
        seen.add((left, right))
        checked.append((left, right))
    return checked


# Special token ids may leave a gap after the ordinary tokens (tiktoken's cl100k_base leaves 15:
# <|endofprompt|> is 100276), but not an unbounded one: the vocabulary, and so the embedding and
# the decoding table, reaches the largest id.
MAX_SPECIAL_ID_GAP = 2 ** 16


def assign_special_ids(special_tokens: object, first_id: int) -> dict[str, int]:
    """A list gets ids first_id, first_id + 1, ...; a dict keeps its ids (which must be >= first_id)."""
    if not isinstance(special_tokens, dict):
        tokens = check_special_token_list(special_tokens)
        return {token: first_id + index for index, token in enumerate(tokens)}
    check_special_token_list(list(special_tokens))
    assigned: dict[int, str] = {}
    for token, token_id in special_tokens.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise TypeError(f"special_tokens[{token!r}]={token_id!r}; expected an int id")
        if token_id < first_id:
            raise ValueError(f"special_tokens[{token!r}]={token_id} collides with the byte/merge tokens; "
                             f"expected an id >= {first_id}")
        if token_id >= first_id + len(special_tokens) + MAX_SPECIAL_ID_GAP:
            raise ValueError(f"special_tokens[{token!r}]={token_id} leaves more than {MAX_SPECIAL_ID_GAP:,} unassigned "
                             f"ids after the {first_id} byte/merge tokens; expected an id below "
                             f"{first_id + len(special_tokens) + MAX_SPECIAL_ID_GAP} (every id up to the largest "
                             "takes a row of the model's embedding)")
        if token_id in assigned:
            raise ValueError(f"special_tokens[{token!r}]={token_id} is also the id of {assigned[token_id]!r}; "
                             "expected distinct ids")
        assigned[token_id] = token
    return dict(special_tokens)
