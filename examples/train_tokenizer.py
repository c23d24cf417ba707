"""Train a byte-level BPE tokenizer on Shakespeare's tragedies and look at what it learned.

    python examples/train_tokenizer.py                                # the corpus shipped with minillm
    python examples/train_tokenizer.py my_corpus.txt --vocab-size 8192 --output runs/my_tokenizer.json

The last 10% of the text is held out: the compression report is measured on text the tokenizer
has not seen. Takes a few seconds on a laptop CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import minillm
from minillm.tokenizer import BPETokenizer, format_compression_report

PACKAGE_CORPUS = os.path.join(os.path.dirname(minillm.__file__), "data", "corpus", "shakespeare_tragedies.txt")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CORPUS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "shakespeare_tragedies.txt")


def find_corpus(path: str | None) -> str:
    """The given path, else the corpus shipped in the package, else the project's shared copy."""
    if path is not None:
        return path
    for candidate in (PACKAGE_CORPUS, SHARED_CORPUS):
        if os.path.isfile(candidate):
            return candidate
    sys.exit(f"no corpus found at {PACKAGE_CORPUS} or {SHARED_CORPUS}; pass a text file: "
             "python examples/train_tokenizer.py PATH")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="UTF-8 text file (default: Shakespeare's tragedies)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokens including 256 bytes and specials")
    parser.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 or a regex (default gpt4)")
    parser.add_argument("--output", default=os.path.join("runs", "tokenizer", "shakespeare_bpe.json"))
    args = parser.parse_args()

    path = find_corpus(args.path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    split = int(len(text) * 0.9)
    train_text, heldout_text = text[:split], text[split:]
    print(f"corpus: {path} ({len(text):,} characters; training on the first 90%)")

    started = time.perf_counter()
    tokenizer = BPETokenizer.train(train_text, vocab_size=args.vocab_size, pattern=args.pattern,
                                   special_tokens=["<|endoftext|>"], verbose=True)
    print(f"trained {tokenizer!r} in {time.perf_counter() - started:.1f} s")
    tokenizer.save(args.output)
    print(f"saved to {args.output}\n")

    print("compression on the held-out 10%:")
    print(format_compression_report(tokenizer.compression_report(heldout_text)))

    print("\ntoken boundaries on a held-out passage:")
    passage = heldout_text[heldout_text.find("\n", 2000) + 1:][:300]
    print(tokenizer.visualize(passage))

    learned = [tokenizer.vocab[256 + k] for k in range(len(tokenizer.merges))]
    print("\nfirst merges:", [token.decode("utf-8", "replace") for token in learned[:12]])
    print("longest tokens:", [token.decode("utf-8", "replace") for token in sorted(learned, key=len)[-8:]])

    ids = tokenizer.encode(heldout_text)
    assert tokenizer.decode(ids) == heldout_text  # byte-level BPE round-trips any text
    return 0


if __name__ == "__main__":
    sys.exit(main())
