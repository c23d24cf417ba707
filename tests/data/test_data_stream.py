"""Streaming `minillm prepare`: many inputs, JSONL, workers, streaming dedup, manifest, crashes, memory."""
import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minillm import commandline
from minillm.data import TokenDataset, clean_documents, deduplicate, find_duplicates, prepare_dataset
from minillm.data import stream as stream_module
from minillm.data.cli import PrepareConfig, run_prepare
from minillm.data.dedup import StreamingDeduplicator, find_duplicates_streaming
from minillm.data.documents import expand_inputs, iter_documents, read_document_at
from minillm.data.minhash import band_keys
from minillm.data.shards import ShardWriter, read_shard, read_shard_header
from minillm.data.stream import prepare_corpus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WORDS = ("thou art the king of shreds and patches who hath murdered sleep and the morrow creeps in this petty "
          "pace from day to day to the last syllable of recorded time").split()


def _document(rng: np.random.Generator, words: int = 120) -> str:
    """Random lines of words from a small vocabulary: distinct documents share few 5-word shingles."""
    picked = rng.choice(_WORDS, size=words)
    return "\n".join(" ".join(picked[i:i + 12]) for i in range(0, words, 12))


def _near_copy(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    words[int(rng.integers(len(words)))] = "CHANGED"          # one word in ~120: Jaccard ~0.95
    return " ".join(words)


def _docs_with_duplicates(seed: int = 0, originals: int = 30) -> list[str]:
    """Originals, exact copies and near copies of them, shuffled: every duplicate relation is a
    clique (copies of one original), where streaming and clustering dedup agree."""
    rng = np.random.default_rng(seed)
    docs = [_document(rng) for _ in range(originals)]
    docs += [docs[int(i)] for i in rng.integers(originals, size=8)]
    docs += [_near_copy(rng, docs[int(i)]) for i in rng.integers(originals, size=8)]
    docs += ["tiny"]                                            # dropped by cleaning
    order = rng.permutation(len(docs))
    return [docs[int(i)] for i in order]


def _write_corpus(folder, docs: list[str]) -> None:
    """Half the documents as JSON lines in two files (with a blank line), the rest in a text file
    split on form feeds."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    with open(folder / "part1.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs[:half // 2]:
            handle.write(json.dumps({"id": 1, "text": doc}) + "\n")
        handle.write("\n")
    with open(folder / "part2.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs[half // 2:half]:
            handle.write(json.dumps({"text": doc}) + "\n")
    (folder / "rest.txt").write_text("\f".join(docs[half:]), encoding="utf-8")


def _files(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def bpe_tokenizer_path(tmp_path_factory):
    from minillm.tokenizer import BPETokenizer

    text = " ".join(_WORDS) * 20
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    BPETokenizer.train(text, vocab_size=300, special_tokens=["<|endoftext|>"]).save(str(path))
    return str(path)


def test_output_is_identical_for_any_number_of_workers(tmp_path, bpe_tokenizer_path, monkeypatch):
    from minillm.tokenizer import load_tokenizer

    _write_corpus(tmp_path / "corpus", _docs_with_duplicates())
    monkeypatch.setattr(stream_module, "BATCH_DOCS", 3)        # many batches, so every worker gets some
    tokenizer = load_tokenizer(bpe_tokenizer_path)
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}"
        result = prepare_corpus([str(tmp_path / "corpus")], tokenizer, out, tokenizer_path=bpe_tokenizer_path,
                                doc_separator="\f", shard_tokens=700, eot_token_id=tokenizer.special_tokens[
                                    "<|endoftext|>"], workers=workers)
        assert result["workers"] == workers
        outputs.append(_files(out))
    assert len(outputs[0]) > 4                                  # several shards per split
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]


@pytest.mark.parametrize("val_fraction", [0.05, 0.3, 0.5, 0.93])
@pytest.mark.parametrize("eot", [256, None])
def test_streaming_prepare_equals_the_in_memory_pipeline(tmp_path, byte_tokenizer, monkeypatch, val_fraction, eot):
    docs = _docs_with_duplicates(seed=1)
    _write_corpus(tmp_path / "corpus", docs)
    monkeypatch.setattr(stream_module, "BATCH_DOCS", 5)
    prepare_corpus([str(tmp_path / "corpus")], byte_tokenizer, tmp_path / "stream", doc_separator="\f",
                   val_fraction=val_fraction, shard_tokens=2000, eot_token_id=eot)
    in_order = [d for d in docs[:len(docs) // 2]] + [d for d in docs[len(docs) // 2:] if d.strip()]
    kept, _ = deduplicate(clean_documents(in_order)[0])
    prepare_dataset(kept, byte_tokenizer, tmp_path / "memory", val_fraction=val_fraction, shard_tokens=2000,
                    eot_token_id=eot)
    assert _files(tmp_path / "stream") == _files(tmp_path / "memory")


def test_prepare_command_takes_globs_jsonl_and_a_text_field(tmp_path, byte_tokenizer, capsys):
    nested = tmp_path / "data" / "deep"
    nested.mkdir(parents=True)
    with open(tmp_path / "data" / "a.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"body": "first document, " * 10}) + "\n")
    with open(nested / "b.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"body": "second document, " * 10}) + "\n\n")
        handle.write(json.dumps({"body": "third document, " * 10}) + "\n")
    (tmp_path / "data" / "ignored.md").write_text("not matched by the glob", encoding="utf-8")
    run = functools.partial(commandline.run, PrepareConfig, functools.partial(run_prepare, tokenizer=byte_tokenizer),
                            "prepare")
    assert run(["--input", str(tmp_path / "data" / "**" / "*.jsonl"), "--text-field", "body", "--output",
                str(tmp_path / "out"), "--tokenizer", "x", "--workers", "1"]) == 0
    assert "read 3 document(s) from 2 file(s)" in capsys.readouterr().out
    meta = TokenDataset(tmp_path / "out").meta
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 4   # one cut in two
    # the default field name is "text": these objects lack it -> exit 2, file and line named
    assert run(["--input", str(tmp_path / "data" / "**" / "*.jsonl"), "--output", str(tmp_path / "o2"),
                "--tokenizer", "x"]) == 2
    err = capsys.readouterr().err
    assert "a.jsonl' line 1 has no 'text' field" in err and "'body'" in err
    assert run(["--input", str(tmp_path / "nothing-*.jsonl"), "--output", str(tmp_path / "o3"),
                "--tokenizer", "x"]) == 2
    assert "matches no files" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('["a list"]', "line 2 is a JSON list, not an object"),
    ('{"text": 7}', "line 2: field 'text' is a JSON int, expected a string"),
    ('{"text": "unterminated', "line 2 is not valid JSON"),
    ('{"text": "\\ud800"}', "line 2: field 'text' holds a lone surrogate"),
])
def test_bad_jsonl_lines_are_errors_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl") as error:
        list(iter_documents(expand_inputs([str(path)])))
    assert message in str(error.value)


def test_documents_are_read_again_from_their_byte_range(tmp_path):
    (tmp_path / "a.txt").write_text("\ufeffé first\f\f  \fsecond ü\fthird", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('\ufeff{"text": "ünï"}\n\n{"text": "two"}', encoding="utf-8")
    files = expand_inputs([str(tmp_path / "a.txt"), str(tmp_path), str(tmp_path / "a.txt")])
    assert [os.path.basename(f) for f in files] == ["a.txt", "b.jsonl"]      # each file once
    docs = list(iter_documents(files, doc_separator="\f", block_bytes=3))    # blocks split characters
    assert [d[0] for d in docs] == ["é first", "second ü", "third", "ünï", "two"]
    for text, file_index, offset, length in docs:
        assert read_document_at(files[file_index], offset, length) == text


def test_streaming_dedup_equals_clustering_dedup_on_copies(tmp_path):
    docs = clean_documents(_docs_with_duplicates(seed=2))[0]
    batch = find_duplicates(docs)
    streamed = find_duplicates_streaming(docs)
    assert batch.report.exact_duplicates > 0 and batch.report.near_duplicates > 0
    np.testing.assert_array_equal(streamed.keep, batch.keep)
    np.testing.assert_array_equal(streamed.cluster, batch.cluster)
    assert (streamed.report.exact_duplicates, streamed.report.near_duplicates, streamed.report.duplicate_clusters) \
        == (batch.report.exact_duplicates, batch.report.near_duplicates, batch.report.duplicate_clusters)


def test_streaming_dedup_keeps_the_far_end_of_a_chain():
    """A ~ B and B ~ C, A !~ C: clustering drops B and C, streaming drops B only (module docstring)."""
    num_perm, bands, rows = 20, 20, 1
    a = np.arange(num_perm, dtype=np.uint32)
    b = a.copy()
    b[:2] += 100                                    # J(a, b) ~ 0.9
    c = b.copy()
    c[2:4] += 100                                   # J(b, c) ~ 0.9, J(a, c) ~ 0.8
    dedup = StreamingDeduplicator(threshold=0.85, num_perm=num_perm, bands=bands, rows=rows)
    verdicts = [dedup.offer(bytes([i]) * 16, 10, s, band_keys(s[None, :], bands, rows)[0])
                for i, s in enumerate((a, b, c))]
    assert verdicts == [-1, 0, -1]


def test_loader_verifies_the_manifest_checksums(tmp_path, byte_tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\f".join(f"document number {i} " * 8 for i in range(40)), encoding="utf-8")
    out = tmp_path / "out"
    prepare_corpus([str(corpus)], byte_tokenizer, out, doc_separator="\f", shard_tokens=1000, eot_token_id=256)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    entry = meta["splits"]["train"]["manifest"][1]
    assert set(entry) == {"name", "tokens", "sha256"} and entry["tokens"] == 1000
    TokenDataset(out)                                                        # verifies: fine
    shard = out / entry["name"]
    data = bytearray(shard.read_bytes())
    data[40] ^= 1                                                            # one bit, size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{entry['name']}.*SHA-256"):
        TokenDataset(out)
    TokenDataset(out, verify_checksums=False)                                # opt-out still opens it


def test_an_interrupted_shard_leaves_no_file_under_its_name(tmp_path):
    path = tmp_path / "train_000000.bin"
    with pytest.raises(RuntimeError, match="killed"):
        with ShardWriter(path, 300) as writer:
            writer.append(np.arange(100))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    writer = ShardWriter(path, 300)
    writer.append(np.arange(10))
    writer.append(np.arange(5))
    assert writer.close()[0] == 15
    np.testing.assert_array_equal(read_shard(path), np.r_[np.arange(10), np.arange(5)])


def test_an_interrupted_prepare_leaves_no_complete_looking_dataset(tmp_path, byte_tokenizer, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\f".join(f"document number {i} " * 8 for i in range(60)), encoding="utf-8")
    monkeypatch.setattr(stream_module, "BATCH_DOCS", 4)
    calls = {"n": 0}
    encode = byte_tokenizer.encode_ordinary

    def failing(text):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt                                          # as if Ctrl-C came mid-stream
        return encode(text)

    monkeypatch.setattr(byte_tokenizer, "encode_ordinary", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([str(corpus)], byte_tokenizer, out, doc_separator="\f", shard_tokens=1000, eot_token_id=256)
    names = os.listdir(out)
    assert "meta.json" not in names and names                               # some shards were finished
    assert not [name for name in names if name.endswith(".tmp")]            # the one in progress is gone
    for name in names:
        read_shard_header(out / name)                                        # every file is a whole shard
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TokenDataset(out)


_MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[3])
    from minillm.data.stream import prepare_corpus

    class ByteTokenizer:
        vocab_size, special_tokens = 257, {"<|endoftext|>": 256}
        def encode_ordinary(self, text):
            return list(text.encode("utf-8"))
        def to_dict(self):
            return {"type": "bytes"}

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepare_corpus([sys.argv[1]], ByteTokenizer(), sys.argv[2], dedup=False, eot_token_id=256)
    print(json.dumps({"growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
""")


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS growth of a prepare run: 4 MB vs 20 MB of JSON lines; holding the corpus (or its
    tokens) would add at least the extra 16 MB, streaming adds a few batches at most."""
    rng = np.random.default_rng(0)
    vocabulary = np.array(_WORDS + [f"w{i}" for i in range(500)])
    line = json.dumps({"text": " ".join(rng.choice(vocabulary, size=700))}) + "\n"     # ~4 KB
    growth = {}
    for megabytes in (4, 20):
        corpus = tmp_path / f"c{megabytes}.jsonl"
        with open(corpus, "w", encoding="utf-8") as handle:
            for i in range(megabytes * 2**20 // len(line)):
                handle.write(line.replace('"text": "', f'"text": "{i} ', 1))
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(corpus), str(tmp_path / f"o{megabytes}"),
                               REPO_ROOT], capture_output=True, text=True, check=True)
        growth[megabytes] = json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"] / 1024
    assert growth[20] - growth[4] < 6, growth                                # MB; in memory it would be >= 16


def test_a_worker_that_cannot_load_the_tokenizer_is_an_error_not_a_hang(tmp_path, byte_tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words to prepare " * 10, encoding="utf-8")
    (tmp_path / "tok.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="worker process could not load the tokenizer"):
        prepare_corpus([str(corpus)], byte_tokenizer, tmp_path / "out", tokenizer_path=str(tmp_path / "tok.json"),
                       workers=2)
