"""The ``minillm tokenizer`` command: train, encode, decode.

    minillm tokenizer train --input corpus.txt --vocab-size 4096 --special '<|endoftext|>' --output tok.json
    minillm tokenizer encode --tokenizer tok.json --text "To be, or not to be"
    minillm tokenizer encode --tokenizer tok.json --input play.txt > ids.txt
    minillm tokenizer decode --tokenizer tok.json 1234 56 789      (no ids: read them from stdin)

``register(subparsers)`` adds the ``tokenizer`` command to minillm's main parser; each
subcommand sets ``handler`` (the project's convention) to a function that takes the parsed
arguments and returns an exit code (0 ok, 1 error: the message goes to stderr). ``main(argv)`` runs the command on its own:
``python -m minillm.tokenizer.cli train ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Iterator

from . import BPETokenizer, CharTokenizer, load_tokenizer
from .display import format_compression_report

IDS_PER_LINE = 1024  # encode --input writes the ids in lines of this many


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``tokenizer {train,encode,decode}`` to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer, encode text, decode ids",
                                   description="Train a byte-level BPE (or character) tokenizer, encode "
                                               "text to ids and decode ids to text.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="{train,encode,decode}")
    commands.required = True

    train = commands.add_parser("train", help="train a tokenizer on text files")
    train.add_argument("--input", required=True, help="a UTF-8 text file, or a directory: all its *.txt files")
    train.add_argument("--vocab-size", type=int, default=4096,
                       help="number of tokens, including the 256 byte tokens and the special tokens "
                            "(default 4096; ignored by --type char)")
    train.add_argument("--pattern", default="gpt4",
                       help="split pattern: gpt2, gpt4 (default), none (raw bytes), or a regex")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help="a special token such as '<|endoftext|>' (repeat for more)")
    train.add_argument("--type", choices=["bpe", "char"], default="bpe", help="tokenizer type (default bpe)")
    train.add_argument("--output", required=True, help="where to write the tokenizer (JSON)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train)

    encode = commands.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("--tokenizer", required=True, help="a tokenizer file written by 'train'")
    source = encode.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to encode")
    source.add_argument("--input", help="a UTF-8 text file to encode (streamed)")
    encode.add_argument("--allowed-special", default="none_raise",
                        help="none_raise (default: special token text is an error), none (encode it as "
                             "text), all, or a comma-separated list of special tokens")
    encode.set_defaults(handler=run_encode)

    decode = commands.add_parser("decode", help="print the text of token ids")
    decode.add_argument("--tokenizer", required=True, help="a tokenizer file written by 'train'")
    decode.add_argument("ids", nargs="*", help="token ids (default: whitespace-separated ids from stdin)")
    decode.set_defaults(handler=run_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minillm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def _fail(command: str, exc: Exception) -> int:
    print(f"minillm tokenizer {command}: error: {exc}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------

def input_files(path: str) -> list[str]:
    """``path`` itself if it is a file; the sorted ``*.txt`` files in it if it is a directory."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.endswith(".txt") and os.path.isfile(os.path.join(path, name)))
        if not files:
            raise ValueError(f"--input {path!r} is a directory without *.txt files; expected text files")
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path!r} does not exist; expected a text file or a directory")
    return [path]


def read_text_file(path: str) -> str:
    """The file's text (UTF-8, line endings kept as they are); non-UTF-8 raises ValueError naming it."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path!r} is not UTF-8 text (invalid byte at offset {exc.start}); expected "
                         "UTF-8 encoded text") from None


def run_train(args: argparse.Namespace) -> int:
    try:
        files = input_files(args.input)
        pattern = None if args.pattern == "none" else args.pattern
        started = time.perf_counter()
        if args.type == "char":
            text = "".join(read_text_file(path) for path in files)
            tokenizer = CharTokenizer.train(text, special_tokens=args.special)
        else:
            texts: Iterator[str] = (read_text_file(path) for path in files)
            tokenizer = BPETokenizer.train(texts, vocab_size=args.vocab_size, pattern=pattern,
                                           special_tokens=args.special, verbose=not args.quiet)
        seconds = time.perf_counter() - started
        tokenizer.save(args.output)
    except (ValueError, TypeError, OSError) as exc:
        return _fail("train", exc)
    print(f"trained {tokenizer!r} on {len(files)} file(s) in {seconds:.1f} s; saved to {args.output}")
    sample = read_text_file(files[0])[:200_000]
    if sample:
        print(format_compression_report(tokenizer.compression_report(sample)))
    return 0


# ------------------------------------------------------------------------------------------------
# encode / decode
# ------------------------------------------------------------------------------------------------

def parse_allowed_special(value: str) -> str | set[str]:
    if value in ("none_raise", "none", "all"):
        return value
    return {token for token in value.split(",") if token}


def run_encode(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        allowed = parse_allowed_special(args.allowed_special)
        if args.text is not None:
            ids = tokenizer.encode(args.text, allowed_special=allowed)
            out.write(" ".join(map(str, ids)) + "\n")
            return 0
        with open(args.input, encoding="utf-8", newline="") as handle:
            batch: list[int] = []
            try:
                for token_id in tokenizer.encode_iterable(handle, allowed_special=allowed):
                    batch.append(token_id)
                    if len(batch) == IDS_PER_LINE:
                        out.write(" ".join(map(str, batch)) + "\n")
                        batch = []
            except UnicodeDecodeError as exc:
                raise ValueError(f"{args.input!r} is not UTF-8 text ({exc.reason} at byte {exc.start} of a "
                                 "read block); expected UTF-8 encoded text") from None
            if batch:
                out.write(" ".join(map(str, batch)) + "\n")
    except (ValueError, TypeError, OSError) as exc:
        return _fail("encode", exc)
    return 0


def run_decode(args: argparse.Namespace) -> int:
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        words = args.ids if args.ids else sys.stdin.read().split()
        ids = []
        for position, word in enumerate(words):
            try:
                ids.append(int(word))
            except ValueError:
                raise ValueError(f"ids[{position}]={word!r} is not an integer token id") from None
        text = tokenizer.decode(ids)
    except (ValueError, TypeError, OSError) as exc:
        return _fail("decode", exc)
    # Write UTF-8 bytes so any text survives, whatever the terminal's encoding.
    stream = getattr(sys.stdout, "buffer", None)
    if stream is not None:
        sys.stdout.flush()
        stream.write(text.encode("utf-8"))
        stream.flush()
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
