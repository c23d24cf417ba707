"""The text the tokenizer tests train on (also used by tests/reference)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_CANDIDATES = [
    REPO_ROOT / "minillm" / "data" / "corpus" / "shakespeare_tragedies.txt",  # shipped with the package
    REPO_ROOT.parent / "shared" / "data" / "shakespeare_tragedies.txt",  # the project's shared data
]


def load_corpus_text() -> str:
    """The first 120,000 characters of the Shakespeare tragedies corpus."""
    for path in CORPUS_CANDIDATES:
        if path.is_file():
            return path.read_text(encoding="utf-8")[:120_000]
    raise FileNotFoundError(f"the Shakespeare corpus is missing; looked for {[str(p) for p in CORPUS_CANDIDATES]}")
