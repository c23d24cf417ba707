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

import argparse
import re
import sys

END_OF_TEXT = "<|endoftext|>"
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def register(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="continue a prompt with a checkpoint, streaming the text",
                                     description="Continue --prompt with the model of --checkpoint; the text "
                                                 "is printed as it is generated.")
    _add_common(generate, max_new_tokens=200, temperature=0.8)
    generate.add_argument("--prompt", default="", help="the text to continue (default: start a new document)")
    generate.set_defaults(handler=run_generate)

    sample = subparsers.add_parser("sample", help="several samples of one prompt (a batch, not streamed)",
                                   description="Print --num-samples independent continuations of --prompt.")
    _add_common(sample, max_new_tokens=200, temperature=0.8)
    sample.add_argument("--prompt", default="", help="the text to continue (default: start a new document)")
    sample.add_argument("--num-samples", type=int, default=3, help="how many samples (default: 3)")
    sample.set_defaults(handler=run_sample)

    chat = subparsers.add_parser("chat", help="an interactive conversation with a checkpoint",
                                 description="Chat with the model of --checkpoint: the chat template when its "
                                             "tokenizer has <|user|>, <|assistant|>, <|end|>, plain continuation "
                                             "otherwise. /reset starts over, /exit leaves, Ctrl-C stops a reply.")
    _add_common(chat, max_new_tokens=256, temperature=0.7)
    chat.add_argument("--system", default=None, help="a system message (chat-tuned checkpoints with <|system|>)")
    chat.set_defaults(handler=run_chat)


def _add_common(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint (.safetensors) written by training")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer file (default: the tokenizer stored in the checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"tokens to generate at most (default: {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"softmax temperature; 0 = greedy (default: {temperature})")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the smallest set of tokens with this much probability")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="CTRL repetition penalty (> 1 discourages repeats; 1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop at this text (repeatable; escapes \\n \\t \\\\)")
    parser.add_argument("--stop-id", action="append", type=int, default=[], metavar="ID",
                        help="stop at this token id (repeatable)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole context at every step (slow; for comparison)")


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in a command-line stop string -> newline, tab, backslash."""
    return re.sub(r"\\([nt\\])", lambda match: _ESCAPES[match.group(1)], text)


def _load(args):
    from minillm.tokenizer import load_tokenizer  # noqa: PLC0415  (heavy imports on demand)
    from minillm.train.checkpoint import load_model  # noqa: PLC0415

    model, tokenizer, _ = load_model(args.checkpoint, device=args.device)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise ValueError(f"checkpoint {args.checkpoint!r} holds no tokenizer; pass --tokenizer PATH")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"vocab_size={model.config.vocab_size}; expected the tokenizer the model was trained with")
    return model, tokenizer


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, use_cache=args.use_cache)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    if prompt:
        return tokenizer.encode(prompt, allowed_special="all")
    if END_OF_TEXT not in tokenizer.special_tokens:
        raise ValueError(f"--prompt is empty and the tokenizer has no {END_OF_TEXT!r} to start a document "
                         "from; expected a non-empty --prompt")
    return [tokenizer.special_tokens[END_OF_TEXT]]


def _stops(args, tokenizer) -> list:
    stops = [unescape(text) for text in args.stop] + list(args.stop_id)
    if END_OF_TEXT in tokenizer.special_tokens:
        stops.append(tokenizer.special_tokens[END_OF_TEXT])
    return stops


def _check_count(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"--{name}={value}; expected an int >= {minimum}")


def run_generate(args: argparse.Namespace, out=None) -> int:
    from minillm.generation import stream_text  # noqa: PLC0415

    out = out or sys.stdout
    _check_count("max-new-tokens", args.max_new_tokens, 0)
    model, tokenizer = _load(args)
    ids = _prompt_ids(tokenizer, args.prompt)
    out.write(args.prompt)
    out.flush()
    for chunk in stream_text(model, tokenizer, ids, args.max_new_tokens, stop=_stops(args, tokenizer),
                             seed=args.seed, **_sampling(args)):
        out.write(chunk)
        out.flush()
    out.write("\n")
    return 0


def run_sample(args: argparse.Namespace, out=None) -> int:
    from minillm.generation import IncrementalDetokenizer, split_stop  # noqa: PLC0415

    out = out or sys.stdout
    _check_count("max-new-tokens", args.max_new_tokens, 0)
    _check_count("num-samples", args.num_samples, 1)
    model, tokenizer = _load(args)
    ids = _prompt_ids(tokenizer, args.prompt)
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


def run_chat(args: argparse.Namespace, lines=None, out=None) -> int:
    from minillm.generation.chat import ChatSession, chat_loop  # noqa: PLC0415

    out = out or sys.stdout
    _check_count("max-new-tokens", args.max_new_tokens, 1)
    model, tokenizer = _load(args)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          stop=[unescape(text) for text in args.stop] + list(args.stop_id), seed=args.seed,
                          **_sampling(args))
    if lines is None:
        lines = _terminal_lines(out) if sys.stdin.isatty() else sys.stdin
    return chat_loop(session, lines, out)
