"""Cached greedy generation on the same device: minillm vs Hugging Face ``transformers``, GPT-2 small.

    python benchmarks/bench_generate_hf.py --device cuda               # batch 1 and 8, 128 new tokens
    python benchmarks/bench_generate_hf.py --device cuda --batches 1 --new-tokens 64 --repeats 5

Model: GPT-2 small's shape (12 layers, 12 heads, 768 wide, 1024 positions, vocab 50304), float32,
minillm's GPT-2 initialisation with seed 0; the Hugging Face ``GPT2LMHeadModel`` gets the very
same weights (its Conv1D matrices are the transposes of minillm's Linear weights, q/k/v fused into
``c_attn``), so both contenders compute the same function: the share of identical greedy tokens is
reported beside the speed (random weights give flat logits, so near-ties may still differ in the
last bits).

Method: each contender runs in a fresh process of its own, rounds alternate the order. A process
builds the model, runs one short warm-up call, then ``--repeats`` timed calls of
``generate(prompt (B, P), max_new_tokens=N)`` -- greedy, key/value cache on; HF with
``do_sample=False, min_new_tokens=N`` so neither stops early -- each synchronised with the device.
tokens/s = B·N / median call time (prefill included).

Results: benchmarks/results/generate_hf_<time>.json and .md, or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

MODEL = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
TARGET_RATIO = 1.0          # minillm tokens/s >= 1.0x HF's


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--batches", default="1,8", help="batch sizes (comma-separated)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length P")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per call, N")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (one process each)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per contender process")
    parser.add_argument("--child", choices=("minillm", "hf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.prompt < 1 or args.new_tokens < 2 or args.repeats < 1 or min(args.batches) < 1:
        parser.error("--prompt, --batches and --repeats must be >= 1 and --new-tokens >= 2")
    if args.prompt + args.new_tokens > MODEL["block_size"]:
        parser.error(f"--prompt + --new-tokens must fit block_size={MODEL['block_size']}")
    return args


def minillm_model(device: str):
    import minillm as mm
    from minillm.nn import GPT, GPTConfig

    mm.manual_seed(0)
    return GPT(GPTConfig.gpt2(**MODEL, dropout=0.0))


def hf_state_dict(model) -> dict:
    """minillm GPT-2 weights under Hugging Face GPT2LMHeadModel's names and layouts (host arrays)."""
    import numpy as np

    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["norm_f.weight"], "transformer.ln_f.bias": sd["norm_f.bias"],
           "lm_head.weight": sd["tok_emb.weight"]}
    for i in range(MODEL["n_layer"]):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        out[h + "ln_1.weight"], out[h + "ln_1.bias"] = sd[p + "norm1.weight"], sd[p + "norm1.bias"]
        out[h + "ln_2.weight"], out[h + "ln_2.bias"] = sd[p + "norm2.weight"], sd[p + "norm2.bias"]
        qkv = [sd[p + f"attn.{n}_proj.weight"] for n in "qkv"]                       # (C, C) each, (out, in)
        out[h + "attn.c_attn.weight"] = np.concatenate([w.T for w in qkv], axis=1)   # Conv1D: (in, out)
        out[h + "attn.c_attn.bias"] = np.concatenate([sd[p + f"attn.{n}_proj.bias"] for n in "qkv"])
        out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = sd[p + "attn.o_proj.weight"].T, sd[p + "attn.o_proj.bias"]
        out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = sd[p + "mlp.up_proj.weight"].T, sd[p + "mlp.up_proj.bias"]
        out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = sd[p + "mlp.down_proj.weight"].T, sd[p + "mlp.down_proj.bias"]
    return out


def child(args) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    host = minillm_model(args.device)
    results = {}
    if args.child == "hf":
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.backends.cuda.matmul.allow_tf32 = False
        config = GPT2Config(vocab_size=MODEL["vocab_size"], n_positions=MODEL["block_size"], n_embd=MODEL["n_embd"],
                            n_layer=MODEL["n_layer"], n_head=MODEL["n_head"], activation_function="gelu_new",
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                            tie_word_embeddings=True)
        model = GPT2LMHeadModel(config)
        weights = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_state_dict(host).items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [m for m in missing if not m.endswith("attn.bias") and not m.endswith("masked_bias")]
        if missing or unexpected:
            raise RuntimeError(f"HF weights: missing {missing}, unexpected {unexpected}")
        device = "cuda" if args.device == "cuda" else "cpu"
        model = model.to(device).eval()

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        def generate(prompt, n):
            ids = torch.from_numpy(prompt).to(device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0, use_cache=True)
            return out[:, prompt.shape[1]:].cpu().numpy()
    else:
        from minillm.backend import synchronize, to_numpy

        model = host.to(args.device).eval()

        def sync():
            synchronize(args.device)

        def generate(prompt, n):
            out = model.generate(prompt, n, temperature=0.0)       # host prompt in, device ids out
            return to_numpy(out)[:, prompt.shape[1]:]
    for batch in args.batches:
        prompt = rng.integers(0, MODEL["vocab_size"], size=(batch, args.prompt))
        generate(prompt, 8)                                        # warm-up (kernels, caches)
        sync()
        times, tokens = [], None
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            out = generate(prompt, args.new_tokens)
            sync()
            times.append(time.perf_counter() - start)
            tokens = out.tolist() if tokens is None else tokens
        results[str(batch)] = {"times": times, "tokens": tokens}
    print("RESULT " + json.dumps(results), flush=True)


def run_child(contender: str, args) -> dict:
    argv = ["--device", args.device, "--child", contender, "--batches", ",".join(map(str, args.batches)),
            "--prompt", str(args.prompt), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
            "--threads", str(args.threads)]
    from common import run_script_child

    return run_script_child(__file__, argv, args.threads, args.timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    from common import alternate_rounds, child_errors, format_table, save_results

    contenders = ["minillm", "hf"]
    runs = alternate_rounds(contenders, args.rounds, lambda c: run_child(c, args))
    rows, payload = [], {"args": {k: v for k, v in vars(args).items() if k != "child"}, "model": MODEL, "runs": runs}
    for batch in args.batches:
        speed, tokens = {}, {}
        for contender in contenders:
            good = [r[str(batch)] for r in runs[contender] if "error" not in r]
            if good:
                speed[contender] = batch * args.new_tokens / statistics.median([t for r in good for t in r["times"]])
                tokens[contender] = good[0]["tokens"]
        same = ""
        if len(tokens) == 2:
            pairs = [(a == b) for ra, rb in zip(tokens["minillm"], tokens["hf"]) for a, b in zip(ra, rb)]
            same = f"{100 * sum(pairs) / len(pairs):.0f}%"
        ratio = f"{speed['minillm'] / speed['hf']:.2f}x (target >= {TARGET_RATIO}x)" if len(speed) == 2 else ""
        rows.append([batch, *(f"{speed[c]:.0f}" if c in speed else "failed" for c in contenders), ratio, same])
    headers = ["batch", "minillm tok/s", "HF transformers tok/s", "minillm / HF", "same greedy tokens"]
    text = format_table(headers, rows) + (
        f"\n{args.device}, float32 GPT-2 small shape, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, "
        f"KV cache; medians of {args.repeats} calls x {args.rounds} round(s), each contender its own process.")
    text += child_errors({c: runs[c] for c in contenders})
    print(text)
    label = f"generate_hf_{args.device}_{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"results: {save_results(label, payload, text, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
