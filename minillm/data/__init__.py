"""Data preparation: reading, cleaning, de-duplication, token shards and batch loaders.

The pipeline behind ``minillm prepare``::

    docs = read_corpus(default_corpus_path())            # documents.py
    docs, cleaning = clean_documents(docs)               # clean.py
    docs, dedup = deduplicate(docs, threshold=0.8)       # dedup.py (MinHash + LSH in minhash.py)
    prepare_dataset(docs, tokenizer, "data/shakespeare") # dataset.py, token shards in shards.py
    ds = TokenDataset("data/shakespeare")
    loader = RandomWindowLoader(ds.tokens("train"), batch_size=8, block_size=256, seed=0)  # loader.py

``minillm prepare`` runs the streaming version of the first four steps (stream.py): many inputs
(globs, JSON lines), worker processes, dedup as documents arrive, shards as they fill::

    prepare_corpus(["crawl/*.jsonl"], tokenizer, "data/web", tokenizer_path="tok.json", workers=2)

Everything here is host-side NumPy and needs no autograd.
"""
from minillm.data.clean import CleaningReport, clean_document, clean_documents
from minillm.data.dataset import TokenDataset, bits_per_byte, prepare_dataset, split_train_val
from minillm.data.dedup import (
    DedupReport,
    DedupResult,
    StreamingDeduplicator,
    UnionFind,
    deduplicate,
    find_duplicates,
    find_duplicates_streaming,
)
from minillm.data.documents import default_corpus_path, expand_inputs, iter_documents, read_corpus, split_documents
from minillm.data.loader import RandomWindowLoader, sequential_windows
from minillm.data.minhash import LSHIndex, MinHasher, candidate_probability, estimate_jaccard, optimal_bands
from minillm.data.shards import (
    ConcatenatedTokens,
    ShardWriter,
    file_sha256,
    read_shard,
    read_shard_header,
    token_dtype,
    write_shard,
)
from minillm.data.stream import prepare_corpus

__all__ = [
    "CleaningReport", "clean_document", "clean_documents",
    "TokenDataset", "bits_per_byte", "prepare_dataset", "split_train_val",
    "DedupReport", "DedupResult", "StreamingDeduplicator", "UnionFind", "deduplicate", "find_duplicates",
    "find_duplicates_streaming",
    "default_corpus_path", "expand_inputs", "iter_documents", "read_corpus", "split_documents",
    "RandomWindowLoader", "sequential_windows",
    "LSHIndex", "MinHasher", "candidate_probability", "estimate_jaccard", "optimal_bands",
    "ConcatenatedTokens", "ShardWriter", "file_sha256", "read_shard", "read_shard_header", "token_dtype",
    "write_shard", "prepare_corpus",
]
