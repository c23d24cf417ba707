"""Data preparation: reading, cleaning, de-duplication, token shards and batch loaders.

The pipeline behind ``minillm prepare``::

    docs = read_corpus(default_corpus_path())            # documents.py
    docs, cleaning = clean_documents(docs)               # clean.py
    docs, dedup = deduplicate(docs, threshold=0.8)       # dedup.py (MinHash + LSH in minhash.py)
    prepare_dataset(docs, tokenizer, "data/shakespeare") # dataset.py, token shards in shards.py
    ds = TokenDataset("data/shakespeare")
    loader = RandomWindowLoader(ds.tokens("train"), batch_size=8, block_size=256, seed=0)  # loader.py

Everything here is host-side NumPy and needs no autograd.
"""
from minillm.data.clean import CleaningReport, clean_document, clean_documents
from minillm.data.dataset import TokenDataset, bits_per_byte, prepare_dataset, split_train_val
from minillm.data.dedup import DedupReport, DedupResult, UnionFind, deduplicate, find_duplicates
from minillm.data.documents import default_corpus_path, read_corpus, split_documents
from minillm.data.loader import RandomWindowLoader, sequential_windows
from minillm.data.minhash import LSHIndex, MinHasher, candidate_probability, estimate_jaccard, optimal_bands
from minillm.data.shards import ConcatenatedTokens, read_shard, read_shard_header, token_dtype, write_shard

__all__ = [
    "CleaningReport", "clean_document", "clean_documents",
    "TokenDataset", "bits_per_byte", "prepare_dataset", "split_train_val",
    "DedupReport", "DedupResult", "UnionFind", "deduplicate", "find_duplicates",
    "default_corpus_path", "read_corpus", "split_documents",
    "RandomWindowLoader", "sequential_windows",
    "LSHIndex", "MinHasher", "candidate_probability", "estimate_jaccard", "optimal_bands",
    "ConcatenatedTokens", "read_shard", "read_shard_header", "token_dtype", "write_shard",
]
