"""The ``minillm tokenizer`` command: train, encode, decode.

    minillm tokenizer train --input corpus.txt --vocab-size 4096 --special '<|endoftext|>' --output tok.json
    minillm tokenizer encode --tokenizer tok.json --text "To be, or not to be"
    minillm tokenizer encode --tokenizer tok.json --input play.txt > ids.txt
    minillm tokenizer decode --tokenizer tok.json 1234 56 789      (no ids: read them from stdin)

``register(subparsers)`` adds ``tokenizer train | encode | decode`` to minillm's main parser (the
options come from the config classes below; the conventions, exit status 2 on bad input
included, from :mod:`minillm.commandline`). ``main(argv)`` runs the command on its own:
``python -m minillm.tokenizer.cli train ...``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

from minillm import commandline
from minillm.config import Config, Section, option
from minillm.fileio import read_text_file, refuse_to_overwrite, remove_stale_temp_files

from . import BPETokenizer, CharTokenizer, load_tokenizer
from .display import format_compression_report

IDS_PER_LINE = 1024  # encode --input writes the ids in lines of this many


@dataclass
class TrainSection(Section):
    name: ClassVar[str] = "train"
    title: ClassVar[str] = "train a tokenizer on text files"

    input: str = option("", "a UTF-8 text file, or a directory: all its *.txt files", required=True)
    output: str = option("", "where to write the tokenizer (JSON)", required=True)
    vocab_size: int = option(4096, "number of tokens, including the 256 byte tokens and the special tokens "
                             "(ignored by --type char)", minimum=1)
    pattern: str = option("gpt4", "split pattern: gpt2, gpt4, none (raw bytes), or a regex", text=True)
    special: list[str] = option([], "a special token such as '<|endoftext|>' (repeat for more)", metavar="TOKEN",
                                text=True)
    type: str = option("bpe", "tokenizer type", choices=("bpe", "char"))
    quiet: bool = option(False, "no progress bar")
    overwrite: bool = option(False, "replace an existing --output file")


@dataclass
class EncodeSection(Section):
    name: ClassVar[str] = "encode"
    title: ClassVar[str] = "print the token ids of a text (--text or --input)"

    tokenizer: str = option("", "a tokenizer file written by 'train'", required=True)
    text: str | None = option(None, "the text to encode", text=True)
    input: str | None = option(None, "a UTF-8 text file to encode (streamed)")
    allowed_special: str = option("none_raise", "none_raise (special token text is an error), none (encode it as "
                                  "text), all, or a comma-separated list of special tokens", text=True)

    def check(self) -> None:
        if (self.text is None) == (self.input is None):
            raise ValueError("encode: give exactly one of --text and --input")


@dataclass
class DecodeSection(Section):
    name: ClassVar[str] = "decode"
    title: ClassVar[str] = "print the text of token ids (the bare words; none: whitespace-separated ids from stdin)"

    tokenizer: str = option("", "a tokenizer file written by 'train'", required=True)
    ids: list[str] = option([], "token ids", positional=True, metavar="ID")


@dataclass
class TrainTokenizerConfig(Config):
    description: ClassVar[str] = "Train a byte-level BPE (or character) tokenizer on text files."
    aliases: ClassVar[dict] = {}
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class EncodeConfig(Config):
    description: ClassVar[str] = "Print the token ids of --text or of the file --input."
    encode: EncodeSection = field(default_factory=EncodeSection)


@dataclass
class DecodeConfig(Config):
    description: ClassVar[str] = "Print the text of token ids (given as words, or read from stdin)."
    decode: DecodeSection = field(default_factory=DecodeSection)


def register(subparsers):
    """Add ``tokenizer {train,encode,decode}`` to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer, encode text, decode ids",
                                   description="Train a byte-level BPE (or character) tokenizer, encode "
                                               "text to ids and decode ids to text.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="{train,encode,decode}")
    commandline.register(commands, "train", TrainTokenizerConfig, run_train, help="train a tokenizer on text files",
                         parent="tokenizer")
    commandline.register(commands, "encode", EncodeConfig, run_encode, help="print the token ids of a text",
                         parent="tokenizer")
    commandline.register(commands, "decode", DecodeConfig, run_decode, help="print the text of token ids",
                         parent="tokenizer")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``minillm tokenizer ...`` on its own (``argv`` starts with ``"tokenizer"``)."""
    from minillm.cli import main as minillm_main  # noqa: PLC0415  (minillm.cli imports this module)

    return minillm_main(sys.argv[1:] if argv is None else argv)


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


def run_train(cfg: TrainTokenizerConfig) -> int:
    args = cfg.train
    files = input_files(args.input)
    # All checked before training, which can take minutes, rather than after it.
    if all(os.path.getsize(path) == 0 for path in files):
        what = "is an empty file" if files == [args.input] else f"holds only empty *.txt files ({len(files)})"
        raise ValueError(f"--input {args.input!r} {what}; expected UTF-8 text to train the tokenizer on")
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a directory; expected a file path such as "
                         f"{os.path.join(args.output, 'tokenizer.json')!r}")
    refuse_to_overwrite(f"--output {args.output!r}", "", [args.output] if os.path.lexists(args.output) else [],
                        args.overwrite, "pick another --output, or pass --overwrite to replace it")
    folder, name = os.path.split(os.path.abspath(args.output))
    stale = remove_stale_temp_files(folder, targets=[name])
    if stale:
        print(f"removed {len(stale)} temporary file(s) left in {folder} by interrupted saves of {name}")
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


def run_encode(cfg: EncodeConfig) -> int:
    args, out = cfg.encode, sys.stdout
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
    return 0


def run_decode(cfg: DecodeConfig) -> int:
    args = cfg.decode
    tokenizer = load_tokenizer(args.tokenizer)
    words = args.ids if args.ids else sys.stdin.read().split()
    ids = []
    for position, word in enumerate(words):
        try:
            ids.append(int(word))
        except ValueError:
            raise ValueError(f"ids[{position}]={word!r} is not an integer token id") from None
    text = tokenizer.decode(ids)
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
