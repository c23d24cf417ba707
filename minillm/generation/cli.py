"""``minillm generate``, ``minillm sample`` and ``minillm chat``: text from a checkpoint.

    minillm generate --checkpoint runs/shakespeare/last.safetensors --prompt "ROMEO:" --max-new-tokens 200
    minillm sample --checkpoint CKPT --prompt "ROMEO:" --num-samples 3 --seed 0
    minillm chat --checkpoint runs/sft/model.safetensors --temperature 0.7

``generate`` streams one continuation as it is produced; ``sample`` prints several independent
samples of the same prompt (one batch, not streamed); ``chat`` is an interactive loop (see
:mod:`minillm.generation.chat`). Stop strings given with ``--stop`` may use the escapes ``\\n``,
``\\t`` and ``\\\\``; a checkpoint whose tokenizer has ``<|endoftext|>`` stops there by default.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar

from minillm import commandline
from minillm.backend import DEVICES
from minillm.commandline import unescape
from minillm.config import Config, Section, option
from minillm.generation import IncrementalDetokenizer, split_stop, stream_text
from minillm.generation.chat import ChatSession, chat_loop
from minillm.generation.sampling import MIN_TEMPERATURE, temperature_too_small
from minillm.tokenizer.special import END_OF_TEXT
from minillm.train.checkpoint import MODEL_HELP, check_model_choice, load_model_for_text, model_source


@dataclass
class GenerationSection(Section):
    """What every text command takes: the checkpoint, the sampling and the stops."""

    checkpoint: str = option("", "a checkpoint (.safetensors) written by training")
    model: str = option("", MODEL_HELP)
    tokenizer: str = option("", "a tokenizer file; empty = the tokenizer stored in the checkpoint")
    max_new_tokens: int = option(200, "tokens to generate at most", minimum=0)
    temperature: float = option(0.8, f"softmax temperature; 0 = greedy, else >= {MIN_TEMPERATURE:g}", minimum=0.0)
    top_k: int | None = option(None, "sample among the k most likely tokens only", minimum=1)
    top_p: float | None = option(None, "nucleus sampling: the smallest set of tokens with this much probability",
                                 above=0.0, maximum=1.0)
    repetition_penalty: float | None = option(None, "CTRL repetition penalty (> 1 discourages repeats; 1 = off)",
                                              above=0.0)
    seed: int | None = option(None, "seed for reproducible sampling", minimum=0)
    stop: list[str] = option([], r"stop at this text (repeatable; the escapes \n \t \\ work)", metavar="TEXT",
                             text=True)
    stop_id: list[int] = option([], "stop at this token id (repeatable)", metavar="ID")
    device: str = option("cpu", "where to run the model", choices=DEVICES)
    cache: bool = option(True, "decode with the key/value cache (--no-cache recomputes every step: slow)")

    def check(self) -> None:
        check_model_choice(self)
        if 0 < self.temperature < MIN_TEMPERATURE:     # the option's bounds cannot say "0, or >= 1e-3"
            raise ValueError(temperature_too_small(f"{self.name}.temperature", self.temperature))


@dataclass
class GenerateSection(GenerationSection):
    name: ClassVar[str] = "generate"
    prompt: str = option("", "the text to continue; empty = start a new document", text=True)


@dataclass
class SampleSection(GenerationSection):
    name: ClassVar[str] = "sample"
    prompt: str = option("", "the text to continue; empty = start a new document", text=True)
    num_samples: int = option(3, "how many samples", minimum=1)


@dataclass
class ChatSection(GenerationSection):
    name: ClassVar[str] = "chat"
    system: str | None = option(None, "a system message (chat-tuned checkpoints with <|system|>)", text=True)


@dataclass
class GenerateConfig(Config):
    description: ClassVar[str] = "Continue --prompt with the model of --checkpoint; the text is printed as it is generated."
    generate: GenerateSection = field(default_factory=GenerateSection)


@dataclass
class SampleConfig(Config):
    description: ClassVar[str] = "Print --num_samples independent continuations of --prompt (one batch)."
    sample: SampleSection = field(default_factory=SampleSection)


@dataclass
class ChatConfig(Config):
    description: ClassVar[str] = ("Chat with the model of --checkpoint: the chat template when its tokenizer has "
                                  "<|user|>, <|assistant|>, <|end|>, plain continuation otherwise. /reset starts "
                                  "over, /exit leaves, Ctrl-C stops a reply.")
    defaults: ClassVar[dict] = {"chat.max_new_tokens": 256, "chat.temperature": 0.7}
    chat: ChatSection = field(default_factory=ChatSection)


def register(subparsers) -> None:
    commandline.register(subparsers, "generate", GenerateConfig, run_generate,
                         help="continue a prompt with a checkpoint, streaming the text")
    commandline.register(subparsers, "sample", SampleConfig, run_sample,
                         help="several samples of one prompt (a batch, not streamed)")
    commandline.register(subparsers, "chat", ChatConfig, run_chat, help="an interactive conversation with a checkpoint")


def _load(args: GenerationSection):
    source, hub = model_source(args)
    return load_model_for_text(source, device=args.device, hub=hub, tokenizer_path=args.tokenizer)


def _sampling(args: GenerationSection) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, use_cache=args.cache)


def _prompt_ids(tokenizer, prompt: str, block_size: int) -> list[int]:
    """The prompt's token ids; checked here, before the prompt is echoed, so a prompt that cannot
    run is not printed first (and the message shows its length, not its text)."""
    if prompt:
        ids = tokenizer.encode(prompt, allowed_special="all")
        if len(ids) > block_size:
            raise ValueError(f"--prompt ({len(prompt)} characters) encodes to {len(ids)} tokens, more than the "
                             f"model's context block_size={block_size}; expected a prompt of at most {block_size} "
                             "tokens: shorten it (or keep its end)")
        return ids
    if END_OF_TEXT not in tokenizer.special_tokens:
        raise ValueError(f"--prompt is empty and the tokenizer has no {END_OF_TEXT!r} to start a document "
                         "from; expected a non-empty --prompt")
    return [tokenizer.special_tokens[END_OF_TEXT]]


def _stops(args, tokenizer) -> list:
    stops = [unescape(text) for text in args.stop] + list(args.stop_id)
    if END_OF_TEXT in tokenizer.special_tokens:
        stops.append(tokenizer.special_tokens[END_OF_TEXT])
    return stops


def run_generate(cfg: GenerateConfig, out=None) -> int:
    args, out = cfg.generate, out or sys.stdout
    model, tokenizer = _load(args)
    ids = _prompt_ids(tokenizer, args.prompt, model.config.block_size)
    out.write(args.prompt)
    out.flush()
    try:
        for chunk in stream_text(model, tokenizer, ids, args.max_new_tokens, stop=_stops(args, tokenizer),
                                 seed=args.seed, **_sampling(args)):
            out.write(chunk)
            out.flush()
    finally:                    # also after a failure: its message then starts a line of its own
        out.write("\n")
        out.flush()
    return 0


def run_sample(cfg: SampleConfig, out=None) -> int:
    args, out = cfg.sample, out or sys.stdout
    model, tokenizer = _load(args)
    ids = _prompt_ids(tokenizer, args.prompt, model.config.block_size)
    stops = _stops(args, tokenizer)
    stop_ids, stop_strings = split_stop(stops)
    rows = model.generate([ids] * args.num_samples, args.max_new_tokens, stop=stops, seed=args.seed,
                          tokenizer=tokenizer, **_sampling(args))
    for index, row in enumerate(rows):
        detokenizer = IncrementalDetokenizer(tokenizer, stop_strings)
        text = "".join(detokenizer.push(t) for t in row[len(ids):] if t not in stop_ids) + detokenizer.finish()
        out.write(f"{'-' * 20} sample {index + 1} {'-' * 20}\n{args.prompt}{text}\n")
    return 0


def _terminal_lines(out):
    """Lines typed at a terminal (prompt ``you> ``); Ctrl-C at the prompt does not leave."""
    while True:
        try:
            line = input("you> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(/exit or Ctrl-D leaves)\n")
            continue
        yield line


def run_chat(cfg: ChatConfig, lines=None, out=None) -> int:
    args, out = cfg.chat, out or sys.stdout
    if args.max_new_tokens < 1:
        raise ValueError(f"chat.max_new_tokens={args.max_new_tokens}; expected an int >= 1 (a reply needs a token)")
    model, tokenizer = _load(args)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          stop=[unescape(text) for text in args.stop] + list(args.stop_id), seed=args.seed,
                          **_sampling(args))
    if lines is None:
        lines = _terminal_lines(out) if sys.stdin.isatty() else sys.stdin
    return chat_loop(session, lines, out)
