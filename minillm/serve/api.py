"""The OpenAI request bodies of ``minillm serve``: checked field by field, turned into prompts.

Supported (``POST /v1/completions`` and ``POST /v1/chat/completions``):

    model        str, optional; when given it must be the served model's id (else 404)
    prompt       completions: a str or a list of 1..16 str ("" starts a new document at
                 <|endoftext|> when the tokenizer has it)
    messages     chat: [{"role": "system"|"user"|"assistant", "content": str or [{"type": "text",
                 "text": str}, ...]}, ...] ending with a user message; rendered with the
                 post-training chat template when the tokenizer has <|user|>, <|assistant|> and
                 <|end|>, else as plain lines (each content + "\\n", the reply ends at a blank line)
    max_tokens   int >= 1 (chat also reads max_completion_tokens); prompt + max_tokens must fit the
                 context (block_size). Default: 16 for completions (as OpenAI), what is left of the
                 context for chat
    temperature  number in [0, 2] (default 1; 0 = greedy)     top_p  number in (0, 1] (default 1)
    top_k        int >= 1 (an extension, as vLLM)      repetition_penalty  number > 0 (extension)
    stop         a str or a list of up to 4 non-empty str
    seed         int in [0, 2^63): the request gets its own generator; choice i of n uses seed + i
    n            int in [1, 8]: choices sampled as separate rows of the batch
    stream       bool; stream_options {"include_usage": bool}
    user, presence_penalty = 0, frequency_penalty = 0, logprobs = false/null, echo = false: accepted

Any other field is ignored (as OpenAI-compatible servers do), but a known field of the wrong type
or out of range, and unsupported features (tools, logprobs, echo, non-zero penalties), are refused
with :class:`ApiError`: status 400 and the OpenAI error body naming the field in ``param``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_STOP = 4
MAX_N = 8
MAX_PROMPTS = 16
MAX_SEED = 2 ** 63


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Generation:
    """A checked request: prompts (token ids) and what applies to each of their n choices."""

    prompts: list[list[int]]
    max_tokens: int
    n: int
    stream: bool
    include_usage: bool
    stop_strings: list[str]
    stop_ids: list[int]
    sampling: dict = field(default_factory=dict)
    seed: int | None = None


# ---------------------------------------------------------------------------------------------
# Field checks
# ---------------------------------------------------------------------------------------------
def _bad(name: str, value, expected: str) -> ApiError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ApiError(400, f"Invalid value for '{name}': {shown} ({type(value).__name__}); expected {expected}.",
                    param=name, code="invalid_value")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: dict, name: str, default, low: float, high: float, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    if not _is_number(value) or value < low or value > high or (low_open and value == low):
        raise _bad(name, value, expected)
    return float(value)


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _bad(name, value, expected)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, value, "true or false")
    return value


def _unsupported(body: dict, name: str, allowed, what: str) -> None:
    """Refuse a feature this server lacks unless the field holds one of the ``allowed`` no-op values."""
    value = body.get(name)
    if value is None or any(value == a and type(value) is type(a) for a in allowed):
        return
    raise ApiError(400, f"'{name}'={value!r:.60} is not supported by this server; {what}.", param=name,
                   code="unsupported_value")


def check_model(body: dict, model_id: str) -> None:
    value = body.get("model")
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad("model", value, f"a model id string ({model_id!r})")
    if value != model_id:
        raise ApiError(404, f"The model '{value[:100]}' does not exist; this server serves '{model_id}' "
                       "(GET /v1/models).", param="model", code="model_not_found")


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_STOP \
            or not all(isinstance(s, str) and s for s in items):
        raise _bad("stop", value, f"a non-empty string or a list of 1 to {MAX_STOP} non-empty strings")
    return list(items)


def _common(body: dict) -> dict:
    """The fields both endpoints share, checked."""
    _unsupported(body, "logprobs", (False, None), "token log-probabilities are not returned")
    _unsupported(body, "presence_penalty", (0, 0.0), "use repetition_penalty")
    _unsupported(body, "frequency_penalty", (0, 0.0), "use repetition_penalty")
    if body.get("tools") or body.get("functions"):
        param = "tools" if body.get("tools") else "functions"
        raise ApiError(400, f"'{param}' is not supported by this server (no tool calling).", param=param,
                       code="unsupported_value")
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", options, 'an object such as {"include_usage": true}')
        include_usage = _boolean(options, "include_usage", False)
    sampling = {"temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
                "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
                "top_k": _integer(body, "top_k", None, 1)}
    penalty = _number(body, "repetition_penalty", None, 0.0, 100.0, low_open=True)
    if penalty is not None:
        sampling["repetition_penalty"] = penalty
    if 0 < sampling["temperature"] < 1e-3:
        sampling["temperature"] = 0.0                            # greedy to float64 precision anyway
    if sampling["top_p"] == 1.0:
        sampling["top_p"] = None
    return dict(stream=stream, include_usage=include_usage, sampling=sampling, stop_strings=_stop(body),
                n=_integer(body, "n", 1, 1, MAX_N), seed=_integer(body, "seed", None, 0, MAX_SEED - 1))


def _max_tokens(body: dict, names: tuple[str, ...], prompts: list[list[int]], block_size: int,
                default: int | None) -> int:
    name, value = names[0], None
    for candidate in names:
        if body.get(candidate) is not None:
            name, value = candidate, body[candidate]
            break
    longest = max(len(p) for p in prompts)
    room = block_size - longest
    if value is None:
        return min(default, room) if default is not None else room
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(name, value, f"an integer >= 1 (at most {room} here)")
    if value > room:
        raise ApiError(400, f"This model's maximum context length is {block_size} tokens. However, you requested "
                       f"{longest + value} tokens ({longest} in the prompt, {value} for the completion): "
                       f"'{name}' may be at most {room} for this prompt.", param=name,
                       code="context_length_exceeded")
    return value


def _check_prompt_length(ids: list[int], block_size: int, param: str) -> None:
    if len(ids) >= block_size:
        raise ApiError(400, f"This model's maximum context length is {block_size} tokens, and the prompt has "
                       f"{len(ids)} tokens: expected at most {block_size - 1} to leave room for one new token. "
                       f"Shorten '{param}'.", param=param, code="context_length_exceeded")


# ---------------------------------------------------------------------------------------------
# The two endpoints
# ---------------------------------------------------------------------------------------------
class RequestReader:
    """Turns request bodies into :class:`Generation` for one model and tokenizer.

    ``end_of_text``: the <|endoftext|> id or None; ``template``: a ChatTemplate or None.
    """

    def __init__(self, tokenizer, block_size: int, template=None, end_of_text: int | None = None):
        self.tokenizer, self.block_size, self.template, self.end_of_text = tokenizer, block_size, template, end_of_text

    def _encode(self, text: str, param: str, special: bool) -> list[int]:
        try:
            if special:
                return list(self.tokenizer.encode(text, allowed_special="all"))
            return list(self.tokenizer.encode_ordinary(text))
        except (ValueError, TypeError, KeyError) as error:      # e.g. a character the tokenizer lacks
            raise ApiError(400, f"'{param}' cannot be encoded by this model's tokenizer: {error}", param=param,
                           code="invalid_value") from None

    def completion(self, body: dict) -> Generation:
        common = _common(body)
        _unsupported(body, "echo", (False, None), "the prompt is not repeated in the reply")
        _unsupported(body, "suffix", (None, ""), "no insertion (suffix) mode")
        if "prompt" not in body:
            raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
        value = body["prompt"]
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_PROMPTS or not all(isinstance(t, str) for t in texts):
            raise _bad("prompt", value, f"a string or a list of 1 to {MAX_PROMPTS} strings")
        prompts = []
        for text in texts:
            ids = self._encode(text, "prompt", special=True) if text else []
            if not ids:
                if self.end_of_text is None:
                    raise ApiError(400, "'prompt' is empty and this tokenizer has no <|endoftext|> to start a "
                                   "document from; expected a non-empty prompt.", param="prompt", code="invalid_value")
                ids = [self.end_of_text]
            _check_prompt_length(ids, self.block_size, "prompt")
            prompts.append(ids)
        stop_ids = [] if self.end_of_text is None else [self.end_of_text]
        max_tokens = _max_tokens(body, ("max_tokens",), prompts, self.block_size, default=16)
        return Generation(prompts, max_tokens, common["n"], common["stream"], common["include_usage"],
                          common["stop_strings"], stop_ids, common["sampling"], common["seed"])

    def chat(self, body: dict) -> Generation:
        common = _common(body)
        if "messages" not in body:
            raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                           code="missing_required_parameter")
        messages = _messages(body["messages"])
        stop_strings, stop_ids = list(common["stop_strings"]), []
        if self.template is not None:
            try:
                ids = self.template.render_prompt(messages)
            except (ValueError, TypeError, KeyError) as error:
                raise ApiError(400, f"'messages' cannot be rendered with the chat template: {error}",
                               param="messages", code="invalid_value") from None
            stop_ids = sorted(self.template.marker_ids)
        else:
            if messages[-1]["role"] != "user":
                raise ApiError(400, f"messages[{len(messages) - 1}] has role {messages[-1]['role']!r}; the "
                               "conversation must end with a user message.", param="messages", code="invalid_value")
            ids = self._encode("".join(m["content"] + "\n" for m in messages), "messages", special=False)
            stop_strings = stop_strings or ["\n\n"]
        if self.end_of_text is not None:
            stop_ids.append(self.end_of_text)
        _check_prompt_length(ids, self.block_size, "messages")
        max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"), [ids], self.block_size, default=None)
        return Generation([ids], max_tokens, common["n"], common["stream"], common["include_usage"],
                          stop_strings, stop_ids, common["sampling"], common["seed"])


def _messages(value) -> list[dict]:
    """OpenAI messages -> [{"role", "content": str}], content parts joined; checked."""
    if not isinstance(value, list) or not value:
        raise _bad("messages", value, 'a non-empty list of {"role": ..., "content": ...} objects')
    out = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, message, 'an object {"role": ..., "content": ...}')
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"Invalid value for '{where}.role': {role!r:.40}; expected 'system', 'user' or "
                           "'assistant'.", param=f"{where}.role", code="invalid_value")
        if isinstance(content, list):
            parts = []
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.content[{part_index}]", part, 'a text part {"type": "text", "text": str}')
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content", content, "a string or a list of text parts")
        out.append({"role": role, "content": content})
    return out
