"""An interactive chat session over a model: the conversation, its context budget, streaming replies.

Two modes, chosen by the tokenizer:

- chat template: when the tokenizer has the special tokens ``<|user|>``, ``<|assistant|>`` and
  ``<|end|>`` (a post-trained model), the conversation is a list of messages rendered with
  :class:`minillm.tokenizer.chat.ChatTemplate`; a reply ends at ``<|end|>`` (or at any other
  turn marker, as ``ChatTemplate.parse_reply`` cuts).
- plain continuation (a pretrained model): the conversation is a running transcript; each line
  typed is appended with a newline and the model continues the transcript. A reply ends at a
  blank line (stop string ``"\\n\\n"``) unless other stop strings are given, and at
  ``<|endoftext|>`` when the tokenizer has it.

Either way the prompt is kept within the context: the oldest turns are dropped (the system
message stays) until the prompt leaves room for ``min(max_new_tokens, block_size // 2)`` new
tokens, and a single turn that is still too long keeps only its last tokens.

:func:`chat_loop` reads lines from any iterable (stdin, or a list in tests) and writes to any
text stream: ``/reset`` starts a new conversation, ``/exit`` (or the end of input) leaves, and a
KeyboardInterrupt (Ctrl-C) while a reply streams stops that reply only: what was shown of it
stays in the conversation, and the loop reads the next line. A message that cannot be encoded
or generated from (a character the tokenizer lacks) prints one error line and leaves the
conversation as it was.
"""
from __future__ import annotations

from typing import Iterable, TextIO

from minillm.generation.text import stream_text
from minillm.tokenizer.chat import ASSISTANT_TOKEN, END_TOKEN, USER_TOKEN, ChatTemplate
from minillm.tokenizer.special import END_OF_TEXT

COMMANDS_HELP = "commands: /reset (new conversation), /exit (leave); Ctrl-C stops a reply"
PLAIN_STOP = "\n\n"


def chat_template_for(tokenizer):
    """A ChatTemplate when ``tokenizer`` has the chat special tokens, else None (plain mode)."""
    specials = tokenizer.special_tokens
    if all(token in specials for token in (USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)):
        return ChatTemplate(tokenizer)
    return None


class ChatSession:
    """A conversation with ``model``. ``reply(text, out)`` adds the user's ``text``, streams the
    model's reply to ``out`` and returns it (the text shown).

    Args:
        system: a system message (chat-template mode, tokenizer with ``<|system|>``), or None.
        max_new_tokens: the longest reply, in tokens.
        stop: extra stop strings and/or token ids (plain mode: a blank line when no string is given).
        seed: None (minillm's global generator) or an int: reply i is sampled with seed + i, so a
            session is reproducible and its replies still differ.
        sampling: temperature, top_k, top_p, repetition_penalty (``model.stream``'s).
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 256,
                 stop: Iterable | None = None, seed: int | None = None, **sampling):
        self.model, self.tokenizer = model, tokenizer
        self.template = chat_template_for(tokenizer)
        if system is not None and (self.template is None or self.template.system_id is None):
            raise ValueError("system: a system message needs a tokenizer with the <|system|> special token "
                             "(a chat-tuned checkpoint)")
        self.system, self.max_new_tokens, self.seed, self.sampling = system, max_new_tokens, seed, sampling
        self.extra_stops = list(stop or [])
        self.turns = 0
        self.truncated = False
        self.reset()

    @property
    def mode(self) -> str:
        return "chat template" if self.template is not None else "plain continuation"

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.transcript: list[int] = []

    # -- the prompt ----------------------------------------------------------------------------
    def _budget(self) -> int:
        block = self.model.config.block_size
        return max(1, block - min(self.max_new_tokens, block // 2))

    def _prompt(self, user_text: str) -> list[int]:
        """The ids to continue for the next reply (the user's turn added), within the budget."""
        budget = self._budget()
        self.truncated = False
        if self.template is None:
            self.transcript += self.tokenizer.encode(user_text + "\n", allowed_special="all")
            if len(self.transcript) > budget:
                self.transcript, self.truncated = self.transcript[-budget:], True
            return list(self.transcript)
        self.messages.append({"role": "user", "content": user_text})
        first = 1 if self.system is not None else 0
        ids = self.template.render_prompt(self.messages)
        while len(ids) > budget and len(self.messages) - first > 1:
            del self.messages[first:first + 2]                   # the oldest user/assistant pair
            self.truncated = True
            ids = self.template.render_prompt(self.messages)
        if len(ids) > budget:
            ids, self.truncated = ids[-budget:], True
        return ids

    def _restore(self, messages: list, transcript: list) -> None:
        self.messages, self.transcript = messages, transcript

    def _stops(self) -> list:
        if self.template is not None:
            return sorted(self.template.marker_ids) + self.extra_stops   # <|end|> and every turn marker
        stops = list(self.extra_stops)
        if not any(isinstance(stop, str) for stop in stops):
            stops.append(PLAIN_STOP)
        if END_OF_TEXT in self.tokenizer.special_tokens:
            stops.append(self.tokenizer.special_tokens[END_OF_TEXT])
        return stops

    # -- a reply -------------------------------------------------------------------------------
    def reply(self, user_text: str, out: TextIO) -> str:
        """Stream the reply to ``user_text`` to ``out``; returns the text shown. Ctrl-C ends the
        reply early (the part shown is kept in the conversation)."""
        saved = (list(self.messages), list(self.transcript))
        pieces: list[str] = []
        try:
            prompt = self._prompt(user_text)
            if self.truncated:
                out.write("(older parts of the conversation were dropped to fit the context)\n")
            seed = None if self.seed is None else self.seed + self.turns
            self.turns += 1
            for chunk in stream_text(self.model, self.tokenizer, prompt, self.max_new_tokens,
                                     stop=self._stops(), seed=seed, **self.sampling):
                out.write(chunk)
                pieces.append(chunk)                             # kept once shown
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except (ValueError, TypeError):
            self._restore(*saved)                                # a bad message leaves no trace
            raise
        out.write("\n")
        out.flush()
        text = "".join(pieces)
        if self.template is None:
            self.transcript += self.tokenizer.encode(text + "\n", allowed_special="all")
        else:
            self.messages.append({"role": "assistant", "content": text})
        return text


def chat_loop(session: ChatSession, lines: Iterable[str], out: TextIO) -> int:
    """Run the session over ``lines`` (each one user message or a command); returns 0."""
    out.write(f"minillm chat ({session.mode}); {COMMANDS_HELP}\n")
    out.flush()
    for line in lines:
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            session.reset()
            out.write("(new conversation)\n")
            out.flush()
            continue
        if command == "/help":
            out.write(COMMANDS_HELP + "\n")
            continue
        try:
            session.reply(text, out)
        except (ValueError, TypeError) as error:                 # e.g. a character the tokenizer lacks
            out.write(f"error: {error}\n")
            out.flush()
    return 0
