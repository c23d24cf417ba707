"""``minillm prepare``: corpus -> cleaned, de-duplicated documents -> token shards + meta.json.

    minillm prepare --output DIR --tokenizer tok.json [--input PATH_OR_GLOB ...] [--text_field text]
                    [--workers N] [--val_fraction 0.1] [--no-dedup]

The corpus is streamed (``minillm.data.stream``): documents are read one at a time, cleaned,
fingerprinted and tokenized by ``--workers`` processes, de-duplicated as they arrive, and written
to shards as they come; memory does not grow with the corpus.

``register(subparsers)`` adds the command to the main ``minillm`` parser (the options, their
defaults and checks come from :class:`PrepareConfig`; see :mod:`minillm.commandline` for the
conventions every command shares). ``main(argv)`` runs it standalone
(``python -m minillm.data.cli --output DIR --tokenizer tok.json``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar

from minillm import commandline
from minillm.commandline import unescape
from minillm.config import Config, Section, option
from minillm.data.clean import DEFAULT_MIN_CHARS
from minillm.data.dataset import DEFAULT_SHARD_TOKENS
from minillm.data.documents import default_corpus_path
from minillm.data.stream import default_workers, prepare_corpus
from minillm.tokenizer import load_tokenizer
from minillm.tokenizer.special import END_OF_TEXT as EOT_TOKEN


@dataclass
class PrepareSection(Section):
    name: ClassVar[str] = "prepare"
    title: ClassVar[str] = "corpus in, token shards out"

    input: list[str] = option([], "corpus: UTF-8 text files, JSON-lines files (*.jsonl, *.ndjson: one object per "
                              "line), folders (their *.txt and *.jsonl files) or quoted glob patterns ('data/**/*.jsonl'); "
                              "repeat --input for several; none = the embedded Shakespeare tragedies")
    text_field: str = option("text", "the field of each JSON-lines object that holds the document's text", text=True)
    workers: int = option(0, "processes that clean, fingerprint and tokenize; 0 = one per core", minimum=0)
    output: str = option("", "folder for the shards and meta.json", required=True)
    tokenizer: str = option("", "a saved tokenizer JSON file", required=True)
    val_fraction: float = option(0.1, "fraction of the text (its tail) held out for validation", above=0.0, below=1.0)
    min_chars: int = option(DEFAULT_MIN_CHARS, "drop documents shorter than this after cleaning", minimum=0)
    dedup: bool = option(True, "exact and near (MinHash) de-duplication; --no-dedup skips it")
    dedup_threshold: float = option(0.8, "Jaccard similarity of word 5-shingles above which documents are near "
                                    "duplicates", minimum=0.0, maximum=1.0)
    doc_separator: str | None = option(None, r"split each file into documents on this exact string (escapes \n \t "
                                       r"\f allowed); none = one document per file", text=True)
    eot_token: str = option("", f"special token put between documents; empty = {EOT_TOKEN!r} when the tokenizer has "
                            "it; none = no separator token", text=True)
    shard_tokens: int = option(DEFAULT_SHARD_TOKENS, "tokens per shard file", minimum=1)
    seed: int = option(0, "seed of the MinHash functions", minimum=0)
    overwrite: bool = option(False, "replace a dataset already in the output folder")


@dataclass
class PrepareConfig(Config):
    description: ClassVar[str] = "Clean, de-duplicate and tokenize a corpus into token shards."

    prepare: PrepareSection = field(default_factory=PrepareSection)


def register(subparsers) -> None:
    """Add the ``prepare`` sub-command to an ``argparse`` sub-parser collection."""
    commandline.register(subparsers, "prepare", PrepareConfig, run_prepare,
                         help="clean, de-duplicate and tokenize a corpus into token shards")


def _resolve_eot(tokenizer, name: str) -> int | None:
    special = dict(getattr(tokenizer, "special_tokens", {}) or {})
    if name.lower() == "none":
        return None
    if not name:
        return special.get(EOT_TOKEN)
    if name not in special:
        raise ValueError(f"prepare.eot_token={name!r} is not a special token of the tokenizer; it has {sorted(special)}")
    return special[name]


def run_prepare(cfg: PrepareConfig, tokenizer=None) -> int:
    """Run the command; ``tokenizer`` (optional) replaces loading ``prepare.tokenizer``."""
    args = cfg.prepare
    inputs = list(args.input) or [default_corpus_path()]
    separator = unescape(args.doc_separator) if args.doc_separator is not None else None
    tokenizer_path = None
    if tokenizer is None:
        tokenizer = load_tokenizer(args.tokenizer)
        tokenizer_path = args.tokenizer
    eot_token_id = _resolve_eot(tokenizer, args.eot_token)
    workers = args.workers or default_workers()
    result = prepare_corpus(inputs, tokenizer, args.output, tokenizer_path=tokenizer_path, text_field=args.text_field,
                            doc_separator=separator, val_fraction=args.val_fraction, min_chars=args.min_chars,
                            dedup=args.dedup, dedup_threshold=args.dedup_threshold, seed=args.seed,
                            shard_tokens=args.shard_tokens, eot_token_id=eot_token_id, workers=workers,
                            overwrite=args.overwrite)
    print(f"read {result['cleaning'].docs_in:,} document(s) from {len(result['files'])} file(s) "
          f"({result['workers']} worker(s))")
    print(result["cleaning"])
    print(result["dedup"] if result["dedup"] is not None else "dedup skipped (--no-dedup)")
    meta = result["meta"]
    for split, info in meta["splits"].items():
        print(f"{split:>5}: {info['tokens']:>12,} tokens  {info['bytes']:>12,} bytes  "
              f"{info['documents']:>8,} documents  {len(info['shards'])} shard(s)  "
              f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)")
    print(f"wrote {args.output} (vocab_size {meta['vocab_size']}, dtype {meta['dtype']}, "
          f"eot_token_id {meta['eot_token_id']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return commandline.run(PrepareConfig, run_prepare, "prepare", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
