"""Chat template: conversations to token ids, with the loss mask that SFT trains on.

Format
------
Every message is its role marker, its content, and the end marker, with nothing in between
(no newlines, no spaces added)::

    [<|system|> system text <|end|>] <|user|> user text <|end|> <|assistant|> reply <|end|> <|user|> ...

For example ``[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]``
renders as the token sequence of ``<|user|>hi<|end|><|assistant|>hello<|end|>``, where each
``<|...|>`` marker is ONE special-token id and the texts are BPE-encoded.

Conversation rules (``check_conversation``): an optional ``system`` message first, then turns
alternating ``user``, ``assistant``, ``user``, ... A training conversation (``render``) ends with an
assistant message; a generation prompt (``render_prompt``) ends with a user message and the ids end
with ``<|assistant|>``, so the model's next tokens are its reply, which it ends with ``<|end|>``.

Message content is always encoded with ``encode_ordinary``: a user (or assistant) text that
contains the string ``"<|end|>"`` is encoded as those characters, never as the control token, so
text cannot forge turn boundaries.

Loss mask
---------
``render`` returns ``(ids, loss_mask)`` of equal length. ``loss_mask[i]`` is True when ``ids[i]``
is a token the model must learn to produce: the content tokens of every assistant message and the
``<|end|>`` that closes it. Everything else (system and user turns, their markers, and the
``<|assistant|>`` marker itself, which the prompt supplies at generation time) is False.

Mapping onto next-token training: the input at position t is ``ids[t]`` and its target is
``ids[t+1]``; that target is supervised iff ``loss_mask[t+1]``. So with ``x = ids[:-1]`` and
``y = ids[1:]``, position t contributes to the loss iff ``loss_mask[1:][t]``
(``minillm.posttrain.datasets.sft_batch`` builds exactly this, with -100 where not supervised).
``loss_mask[0]`` is never a target (no token precedes it) and is always False here.

Special tokens and the model
----------------------------
The markers must be special tokens of the tokenizer. ``ensure_chat_tokens(tokenizer)`` (also
available as ``ChatTemplate.ensure_special_tokens``) adds the missing ones with
``add_special_tokens`` and returns the ids it added. Those ids are new rows of the vocabulary
(``tokenizer.vocab_size`` grows), so a model pretrained with the old vocabulary must grow its token
embedding (and untied output layer) to ``tokenizer.vocab_size`` rows before it sees them.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
SYSTEM_TOKEN = "<|system|>"
CHAT_SPECIAL_TOKENS = (USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN, SYSTEM_TOKEN)
ROLES = ("system", "user", "assistant")
ROLE_MARKERS = {"system": SYSTEM_TOKEN, "user": USER_TOKEN, "assistant": ASSISTANT_TOKEN}
MESSAGE_KEYS = ("role", "content")

_ALTERNATION_HELP = "an optional system message first, then turns alternating user, assistant, user, ..."


def ensure_chat_tokens(tokenizer, include_system: bool = True) -> list[int]:
    """Add the chat markers the tokenizer lacks; returns the ids added, in increasing order.

    The markers are ``<|user|>``, ``<|assistant|>``, ``<|end|>`` and (with ``include_system``)
    ``<|system|>``. An empty list means the tokenizer already had them all. Non-empty means the
    vocabulary grew to ``tokenizer.vocab_size``: resize the model's embedding (and an untied
    output layer) so these ids have rows before training on chat data.
    """
    _check_tokenizer(tokenizer)
    wanted = CHAT_SPECIAL_TOKENS if include_system else CHAT_SPECIAL_TOKENS[:3]
    existing = tokenizer.special_tokens
    missing = [token for token in wanted if token not in existing]
    if not missing:
        return []
    return list(tokenizer.add_special_tokens(missing))


def check_conversation(messages, last_role: str | None = None) -> None:
    """Validate a conversation (see the module docstring); raise naming the bad message.

    ``messages``: a non-empty list of ``{"role": "user"|"assistant"|"system", "content": str}``
    dicts with exactly those two keys. ``last_role``: ``"assistant"`` (a training conversation),
    ``"user"`` (a generation prompt) or None (either).
    """
    if last_role not in (None, "user", "assistant"):
        raise ValueError(f"last_role={last_role!r}; expected 'user', 'assistant' or None")
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages has type {type(messages).__name__}; expected a list of "
                        "{'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError(f"messages is empty; expected {_ALTERNATION_HELP}")
    turn = 0  # index among the non-system messages: even -> user, odd -> assistant
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"messages[{index}] has type {type(message).__name__}; expected a dict "
                            "{'role': ..., 'content': ...}")
        keys = set(message)
        if keys != set(MESSAGE_KEYS):
            missing = sorted(set(MESSAGE_KEYS) - keys)
            extra = sorted(keys - set(MESSAGE_KEYS), key=str)
            raise ValueError(f"messages[{index}] has keys {sorted(keys, key=str)} (missing {missing}, unexpected "
                             f"{extra}); expected exactly 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{index}]: role={role!r}; expected one of {list(ROLES)}")
        if not isinstance(content, str):
            raise TypeError(f"messages[{index}]: content has type {type(content).__name__}; expected str")
        if role == "system":
            if index != 0:
                raise ValueError(f"messages[{index}]: role='system' is only allowed as the first message; "
                                 f"expected {_ALTERNATION_HELP}")
            continue
        expected = "user" if turn % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"messages[{index}]: role={role!r}; expected {expected!r} ({_ALTERNATION_HELP})")
        turn += 1
    if turn == 0:
        raise ValueError("messages holds only a system message; expected at least one user message after it")
    final = messages[-1]["role"]
    if last_role is not None and final != last_role:
        purpose = "a training conversation" if last_role == "assistant" else "a generation prompt"
        raise ValueError(f"messages[{len(messages) - 1}]: role={final!r} ends the conversation; expected "
                         f"{last_role!r} to end {purpose}")


class Reply(NamedTuple):
    """A generated reply cut at its end: ``text`` (decoded), ``ids`` (before the cut), and
    ``ended`` (True iff the reply was closed by ``<|end|>``)."""
    text: str
    ids: list[int]
    ended: bool


class ChatTemplate:
    """Renders conversations for ``tokenizer`` (BPETokenizer or CharTokenizer).

    The tokenizer must already have ``<|user|>``, ``<|assistant|>`` and ``<|end|>`` as special
    tokens (``ChatTemplate.ensure_special_tokens(tokenizer)`` adds them); ``<|system|>`` is needed
    only for conversations with a system message. Attributes: ``user_id``, ``assistant_id``,
    ``end_id``, ``system_id`` (None when absent) and ``marker_ids`` (all of them present).
    """

    ensure_special_tokens = staticmethod(ensure_chat_tokens)

    def __init__(self, tokenizer):
        _check_tokenizer(tokenizer)
        specials = tokenizer.special_tokens
        missing = [token for token in (USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN) if token not in specials]
        if missing:
            raise ValueError(f"tokenizer lacks the chat special tokens {missing} (it has {sorted(specials)}); "
                             "call ChatTemplate.ensure_special_tokens(tokenizer) first, then grow the model's "
                             "embedding to tokenizer.vocab_size")
        self.tokenizer = tokenizer
        self.user_id = specials[USER_TOKEN]
        self.assistant_id = specials[ASSISTANT_TOKEN]
        self.end_id = specials[END_TOKEN]
        self.system_id = specials.get(SYSTEM_TOKEN)
        self._marker_of_role = {"user": self.user_id, "assistant": self.assistant_id, "system": self.system_id}
        self.marker_ids = frozenset(i for i in self._marker_of_role.values() if i is not None) | {self.end_id}

    def __repr__(self) -> str:
        return (f"ChatTemplate(user_id={self.user_id}, assistant_id={self.assistant_id}, end_id={self.end_id}, "
                f"system_id={self.system_id})")

    # -- rendering ---------------------------------------------------------------------------------
    def render(self, messages) -> tuple[list[int], list[bool]]:
        """``(ids, loss_mask)`` of a training conversation that ends with an assistant message.

        ``loss_mask[i]`` is True exactly on the assistant content tokens and the ``<|end|>`` after
        each assistant message (see the module docstring for how it maps onto targets).
        """
        check_conversation(messages, last_role="assistant")
        self._check_system_supported(messages)
        ids: list[int] = []
        mask: list[bool] = []
        for message in messages:
            if message["role"] == "assistant":
                ids.append(self.assistant_id)
                mask.append(False)           # given by the prompt at generation time, never predicted
                reply = self.render_reply(message["content"])
                ids += reply
                mask += [True] * len(reply)  # the content and the <|end|> the model must emit
            else:
                turn = self._render_turn(message)
                ids += turn
                mask += [False] * len(turn)
        return ids, mask

    def render_prompt(self, messages) -> list[int]:
        """Ids of a conversation that ends with a user message, followed by ``<|assistant|>``:
        the input for generating the next assistant reply."""
        check_conversation(messages, last_role="user")
        self._check_system_supported(messages)
        ids: list[int] = []
        for message in messages:
            if message["role"] == "assistant":
                ids.append(self.assistant_id)
                ids += self.render_reply(message["content"])
            else:
                ids += self._render_turn(message)
        ids.append(self.assistant_id)
        return ids

    def render_reply(self, content: str) -> list[int]:
        """Ids of an assistant reply as the model should produce it: content then ``<|end|>``.

        ``render(conversation)`` equals ``render_prompt(conversation[:-1]) + render_reply(last)``.
        """
        if not isinstance(content, str):
            raise TypeError(f"content has type {type(content).__name__}; expected str")
        return list(self.tokenizer.encode_ordinary(content)) + [self.end_id]

    def _render_turn(self, message: dict) -> list[int]:
        marker = self._marker_of_role[message["role"]]
        return [marker] + list(self.tokenizer.encode_ordinary(message["content"])) + [self.end_id]

    def _check_system_supported(self, messages) -> None:
        if self.system_id is None and messages[0]["role"] == "system":
            raise ValueError(f"messages[0] is a system message but the tokenizer has no {SYSTEM_TOKEN!r} special "
                             "token; call ChatTemplate.ensure_special_tokens(tokenizer) (include_system=True) "
                             "and rebuild the template")

    # -- generation --------------------------------------------------------------------------------
    def parse_reply(self, ids: Iterable[int]) -> Reply:
        """Cut generated ids (the continuation after the prompt) at the end of the reply.

        The reply stops at the first ``<|end|>`` (``ended=True``). A model that skips the end marker
        and starts another turn (``<|user|>``, ``<|assistant|>``, ``<|system|>``) is cut there with
        ``ended=False``; with no marker at all the whole sequence is the reply and ``ended=False``
        (generation ran out of tokens).
        """
        reply: list[int] = []
        for position, token in enumerate(ids):
            token = _as_token_id(token, f"ids[{position}]")
            if token == self.end_id:
                return Reply(self.tokenizer.decode(reply), reply, True)
            if token in self.marker_ids:
                return Reply(self.tokenizer.decode(reply), reply, False)
            reply.append(token)
        return Reply(self.tokenizer.decode(reply), reply, False)

    # -- inspection --------------------------------------------------------------------------------
    def show(self, ids, mask) -> str:
        """The decoded text with each supervised span wrapped in ``[[`` ... ``]]``.

        Example: ``<|user|>hi<|end|><|assistant|>[[hello<|end|>]]``. Runs of tokens with the same
        mask value are decoded together (a multi-byte character split across a run boundary would
        show as U+FFFD; chat markers always sit on boundaries, so this does not happen in practice).
        """
        ids = [_as_token_id(token, f"ids[{position}]") for position, token in enumerate(ids)]
        mask = [bool(flag) for flag in mask]
        if len(ids) != len(mask):
            raise ValueError(f"ids has {len(ids)} tokens but mask has {len(mask)} entries; expected equal lengths")
        pieces: list[str] = []
        start = 0
        while start < len(ids):
            end = start
            while end < len(ids) and mask[end] == mask[start]:
                end += 1
            text = self.tokenizer.decode(ids[start:end])
            pieces.append(f"[[{text}]]" if mask[start] else text)
            start = end
        return "".join(pieces)


def _check_tokenizer(tokenizer) -> None:
    for name in ("special_tokens", "encode_ordinary", "decode", "add_special_tokens", "vocab_size"):
        if not hasattr(tokenizer, name):
            raise TypeError(f"tokenizer of type {type(tokenizer).__name__} has no {name!r}; expected a "
                            "minillm tokenizer (BPETokenizer or CharTokenizer)")


def _as_token_id(token, where: str) -> int:
    # NumPy integers are accepted (generated ids often come back as an array row); bools are not.
    if isinstance(token, bool) or not hasattr(token, "__index__"):
        raise TypeError(f"{where}={token!r} has type {type(token).__name__}; expected an int token id")
    return int(token)
