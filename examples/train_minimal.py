"""The whole pretraining loop on one page, on minillm's public API (in the spirit of nanoGPT's train.py).

    python examples/train_minimal.py                   # 200 steps of a 0.87M-parameter GPT on the CPU
    python examples/train_minimal.py --device cuda     # the same on a GPU (pip install -e ".[cuda13]")
    python examples/train_minimal.py --steps 500 --n_embd 192     # any default below can be overridden

Corpus -> BPE tokenizer -> token arrays -> GPT -> AdamW + warmup/cosine + clipping -> evaluation
in bits per byte -> a sample. `minillm train` runs the same pipeline with checkpoints, token
shards, gradient accumulation and mixed precision (minillm/train/); this file shows the loop itself.
"""
import argparse
import math
import sys

import numpy as np

import minillm as mm
from minillm.data import clean_documents, default_corpus_path, read_corpus, split_train_val
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, clip_grad_norm_, decay_groups, set_lr
from minillm.tokenizer import BPETokenizer

DEFAULTS = dict(
    device="cpu",           # "cuda" for a GPU
    steps=200,              # optimizer updates
    vocab_size=512,         # 256 bytes + 256 merges
    n_layer=4, n_embd=128,  # 4 heads of 32
    block_size=64,          # context length T
    batch_size=32,          # sequences per step B: 2,048 tokens
    lr=3e-3,                # peak learning rate; warmup over the first 10% of steps, cosine to lr/10
    eval_interval=50,       # steps between evaluations (and one at the start and at the end)
    eval_tokens=8192,       # validation tokens scored per evaluation (the start of the split)
    sample_tokens=60,       # tokens generated at the end
    seed=0,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    args = parser.parse_args(argv)
    mm.manual_seed(args.seed)                          # initialisation and sampling
    rng = np.random.default_rng(args.seed)             # batch positions
    T, B = args.block_size, args.batch_size

    # Data: the embedded Shakespeare, cleaned; the last 10% of the text is the validation split.
    docs, _ = clean_documents(read_corpus(default_corpus_path()))
    train_docs, val_docs = split_train_val(docs, 0.1)
    tokenizer = BPETokenizer.train(train_docs, vocab_size=args.vocab_size, pattern="gpt4")
    train_ids = np.array(tokenizer.encode("\n\n".join(train_docs)), dtype=np.int64)
    val_ids = np.array(tokenizer.encode("\n\n".join(val_docs)), dtype=np.int64)[:args.eval_tokens + 1]
    token_bytes = np.array([len(tokenizer.vocab[i]) for i in range(tokenizer.vocab_size)])
    print(f"{len(train_ids):,} training tokens, {len(val_ids) - 1:,} validation tokens scored")

    model = GPT(GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=T, n_layer=args.n_layer, n_head=4,
                               n_embd=args.n_embd, dropout=0.0), device=args.device)
    # The schedule owns the learning rate: warmup over the first 10% of steps, cosine decay to lr/10.
    schedule = CosineSchedule(args.lr, args.lr / 10, warmup_steps=args.steps // 10, total_steps=args.steps)
    # Weight decay on matrices and embeddings only; biases and LayerNorm gains are exempt.
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=schedule(0), betas=(0.9, 0.95))
    print(f"{model.num_parameters():,} parameters on {args.device}")

    def random_batch():
        """B windows at random positions: inputs x (B, T) and targets y, the next token of each."""
        starts = rng.integers(0, len(train_ids) - T, size=B)
        x = np.stack([train_ids[s:s + T] for s in starts])
        y = np.stack([train_ids[s + 1:s + 1 + T] for s in starts])
        return x, y

    def evaluate():
        """Mean loss (nats/token) over the validation tokens in consecutive windows, and bits per
        byte = total nats / (ln 2 * UTF-8 bytes of the predicted tokens), comparable across tokenizers."""
        n = (len(val_ids) - 1) // T
        x, y = val_ids[:n * T].reshape(n, T), val_ids[1:n * T + 1].reshape(n, T)
        nats = 0.0
        model.eval()
        with mm.no_grad():
            for i in range(0, n, B):
                _, loss = model(x[i:i + B], y[i:i + B])
                nats += loss.item() * y[i:i + B].size    # the batch's mean back to a sum
        model.train()
        return nats / y.size, nats / (math.log(2) * int(token_bytes[y].sum()))

    history = []
    for step in range(args.steps + 1):
        if step % args.eval_interval == 0 or step == args.steps:
            val_loss, bpb = evaluate()
            history.append({"step": step, "val_loss": val_loss, "bits_per_byte": bpb})
            print(f"step {step:4d}  val loss {val_loss:.3f}  bits/byte {bpb:.3f}")
        if step == args.steps:
            break
        lr = schedule(step)
        set_lr(optimizer, lr)
        x, y = random_batch()
        _, loss = model(x, y)                          # logits (B, T, V), mean cross-entropy over B*T
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)       # one L2 norm over all gradients, scaled to <= 1
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            print(f"step {step:4d}  train loss {loss.item():.3f}  lr {lr:.2e}")

    prompt = tokenizer.encode("ROMEO:\n")
    out = model.generate(prompt, max_new_tokens=args.sample_tokens, temperature=0.8, top_k=40, seed=args.seed)
    print(tokenizer.decode(out))
    return history


if __name__ == "__main__":
    main(sys.argv[1:])
