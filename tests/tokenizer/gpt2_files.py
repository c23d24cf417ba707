"""Where GPT-2's real vocabulary files are: ``shared/data/gpt2`` of the project, next to the
repository (``../shared``) or next to a folder above it (a worktree of it)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def gpt2_files() -> tuple[Path, Path]:
    """``(encoder.json, vocab.bpe)``; skips the test, with the reason, when they are not found."""
    for folder in REPO_ROOT.parents:
        candidate = folder / "shared" / "data" / "gpt2"
        if (candidate / "encoder.json").is_file() and (candidate / "vocab.bpe").is_file():
            return candidate / "encoder.json", candidate / "vocab.bpe"
    pytest.skip("GPT-2's encoder.json and vocab.bpe are not found in shared/data/gpt2 next to the repository "
                "or a folder above it")
