"""``minillm prepare``: corpus -> cleaned, de-duplicated documents -> token shards + meta.json.

``register(subparsers)`` adds the command to the main ``minillm`` parser; the parsed namespace
carries ``handler`` (``args.handler(args)`` returns the exit code: 0 on success, 2 on bad input,
with the error printed as one line, as every ``minillm`` command does). ``main(argv)`` runs the
command standalone (``python -m minillm.data.cli --output DIR --tokenizer tok.json``).
"""
from __future__ import annotations

import argparse
import sys

from minillm.data.clean import DEFAULT_MIN_CHARS, clean_documents
from minillm.data.dataset import DEFAULT_SHARD_TOKENS, prepare_dataset
from minillm.data.dedup import deduplicate
from minillm.data.documents import default_corpus_path, read_corpus

EOT_TOKEN = "<|endoftext|>"
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\f": "\f", "\\\\": "\\"}


def _unescape(text: str) -> str:
    """Turn the escapes \\n \\t \\r \\f \\\\ typed on a command line into the characters."""
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, metavar="PATH",
                        help="corpus: a UTF-8 text file or a folder of *.txt files (default: the embedded "
                             "Shakespeare tragedies)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the shards and meta.json")
    parser.add_argument("--tokenizer", required=True, metavar="PATH", help="a saved tokenizer JSON file")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the text (its tail) held out for validation (default 0.1)")
    parser.add_argument("--min-chars", type=int, default=DEFAULT_MIN_CHARS,
                        help=f"drop documents shorter than this after cleaning (default {DEFAULT_MIN_CHARS})")
    parser.add_argument("--dedup-threshold", type=float, default=0.8,
                        help="Jaccard similarity of word 5-shingles above which documents are near duplicates")
    parser.add_argument("--no-dedup", action="store_true", help="skip exact and near de-duplication")
    parser.add_argument("--doc-separator", default=None, metavar="STR",
                        help="split each file into documents on this exact string (escapes \\n \\t \\f allowed); "
                             "default: one document per file")
    parser.add_argument("--eot-token", default=None, metavar="NAME",
                        help=f"special token put between documents (default {EOT_TOKEN!r} when the tokenizer "
                             f"has it); 'none' disables it")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MinHash functions")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``prepare`` sub-command to an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser("prepare", help="clean, de-duplicate and tokenize a corpus into token shards",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(handler=run_prepare)
    return parser


def _load_tokenizer(path: str):
    from minillm.tokenizer import load_tokenizer   # imported here: the data layer needs no tokenizer code
    return load_tokenizer(path)


def _resolve_eot(tokenizer, name: str | None) -> int | None:
    special = dict(getattr(tokenizer, "special_tokens", {}) or {})
    if name is None:
        return special.get(EOT_TOKEN)
    if name.lower() == "none":
        return None
    if name not in special:
        raise ValueError(f"--eot-token {name!r} is not a special token of the tokenizer; it has {sorted(special)}")
    return special[name]


def run_prepare(args: argparse.Namespace, tokenizer=None) -> int:
    """Run the command for parsed ``args``; ``tokenizer`` (optional) replaces loading ``--tokenizer``."""
    try:
        input_path = args.input if args.input is not None else default_corpus_path()
        separator = _unescape(args.doc_separator) if args.doc_separator is not None else None
        if tokenizer is None:
            tokenizer = _load_tokenizer(args.tokenizer)
        eot_token_id = _resolve_eot(tokenizer, args.eot_token)

        docs = read_corpus(input_path, doc_separator=separator)
        print(f"read {len(docs):,} document(s) from {input_path}")
        docs, cleaning = clean_documents(docs, min_chars=args.min_chars)
        print(cleaning)
        if not docs:
            raise ValueError(f"every document was dropped by cleaning (min_chars={args.min_chars})")
        if args.no_dedup:
            print("dedup skipped (--no-dedup)")
        else:
            docs, dedup = deduplicate(docs, threshold=args.dedup_threshold, seed=args.seed)
            print(dedup)
        meta = prepare_dataset(docs, tokenizer, args.output, val_fraction=args.val_fraction,
                               shard_tokens=args.shard_tokens, eot_token_id=eot_token_id,
                               overwrite=args.overwrite)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"minillm prepare: error: {exc}", file=sys.stderr)
        return 2
    for split, info in meta["splits"].items():
        print(f"{split:>5}: {info['tokens']:>12,} tokens  {info['bytes']:>12,} bytes  "
              f"{info['documents']:>8,} documents  {len(info['shards'])} shard(s)  "
              f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)")
    print(f"wrote {args.output} (vocab_size {meta['vocab_size']}, dtype {meta['dtype']}, "
          f"eot_token_id {meta['eot_token_id']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minillm prepare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_prepare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
