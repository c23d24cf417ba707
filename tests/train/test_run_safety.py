"""What minillm promises about your files (issue 13): no run is overwritten without --overwrite,
signals stop a run after saving it, interrupted writes leave nothing behind that blocks the next
run, files honour the umask, and no checkpoint holds diverged weights."""
import os
import random
import stat

import pytest

from minillm.cli import main
from minillm.fileio import atomic_write_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    words = "to be or not that is the question whether tis nobler in the mind to suffer".split()
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)), encoding="utf-8")
    return str(path)


def tiny(corpus, out, *extra):
    """`minillm train` arguments for a run of a few seconds: a char tokenizer, a 1-layer model."""
    return ["train", "--corpus", corpus, "--tokenizer", "char", "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
            "--block_size", "16", "--batch_size", "2", "--max_steps", "4", "--warmup_steps", "2", "--eval_interval", "2",
            "--eval_batches", "2", "--log_interval", "1", "--sample_tokens", "0", "--progress", "false",
            "--out_dir", str(out), *extra]


# ------------------------------------------------------------------------------------------------
# §4 leftovers, torn files, permissions, eval's JSON
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == expected


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_train_outputs_follow_the_umask(corpus, tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(tiny(corpus, tmp_path / "run", "--max_steps", "2")) == 0
    finally:
        os.umask(previous)
    for name in ("last.safetensors", "metrics.jsonl", "summary.json", "tokenizer.json", "data/meta.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "run" / name).st_mode) == 0o640, name
