"""Loading a Hugging Face model directory, then using it: minillm vs Hugging Face ``transformers`` on the CPU.

    python benchmarks/bench_pretrained.py                     # GPT-2 small shape, 2 rounds, 2 threads
    python benchmarks/bench_pretrained.py --rounds 1 --repeats 2 --new-tokens 64

Model: a random GPT-2 of GPT-2 small's shape (124M parameters: 12 layers, 12 heads, 768 wide,
1024 positions, vocabulary 50257, tied head; minillm's GPT-2 initialisation, seed 0), written once
to a temporary directory by ``GPT.save_pretrained`` (config.json + a float32 model.safetensors),
which both contenders read: minillm with ``GPT.from_pretrained(dir)``, transformers with
``AutoModelForCausalLM.from_pretrained(dir)``.

Method: each contender runs in a fresh process of its own (``benchmarks/common.py``), rounds
alternate the order, every process has the same BLAS / OpenMP thread count (torch's intra-op
threads too). A process imports its library, then measures:

- load: wall time of the from_pretrained call, and the peak resident memory during it (the
  kernel's high-water mark VmHWM, reset just before through /proc/self/clear_refs) minus the
  resident memory before it, as a multiple of the weights file's size;
- forward: ``--repeats`` timed forwards over one sequence of 1024 tokens (batch 1, no gradient),
  after one warm-up; tokens/s = 1024 / median time;
- generate: ``--repeats`` timed greedy generations, batch 1, a 64-token prompt, ``--new-tokens``
  (128) new tokens, key/value cache on (transformers with ``do_sample=False, min_new_tokens=N``,
  as in bench_generate_hf.py), after one short warm-up; tokens/s = N / median time.

``minillm-verify`` is minillm's load again with its SHA-256 checksums verified (files minillm writes
carry them; files from the hub do not, so ``minillm`` loads this one as it would a hub file, with
verify=False: the structural checks only). Parity: the max absolute difference of the two
libraries' logits at five positions of the 1024-token forward, and the share of identical greedy
tokens (random weights give flat logits: near-ties may differ in the last bits).

``--parity`` instead prints the parity table of the small shapes the reference tests build with
transformers (tests/reference/test_pretrained_transformers.py: GPT-2, Llama with GQA + untied head
+ rope_theta 500, Llama tied, Mistral with one key/value head), in one process: the max absolute
logit difference of minillm loading transformers' files, of transformers loading minillm's export,
and whether 20 greedy tokens agree.

Targets (issue 14): load <= 2 s, peak extra memory <= 2x the weights, tokens/s >= 1.0x HF.
Results: benchmarks/results/pretrained_<time>.json and .md, or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

MODEL = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
FORWARD_TOKENS = 1024
PROMPT_TOKENS = 64
PARITY_POSITIONS = (0, 255, 511, 767, 1023)
CONTENDERS = ("minillm", "minillm-verify", "hf")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (one process per contender each)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards / generations per process")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per call")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every contender")
    parser.add_argument("--model-dir", default=None, help="use this model directory (default: write a random one)")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender process")
    parser.add_argument("--parity", action="store_true", help="only the parity table of the test shapes")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--logits-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.new_tokens < 2 or args.threads < 1:
        parser.error("--rounds, --repeats, --threads must be >= 1 and --new-tokens >= 2")
    return args


def _memory_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")              # 5: reset the peak resident set size (VmHWM) to the current one
        return True
    except OSError:
        return False


def child(args) -> None:
    import numpy as np
    from common import time_calls

    rng = np.random.default_rng(0)
    forward_ids = rng.integers(0, MODEL["vocab_size"], size=(1, FORWARD_TOKENS))
    prompt = rng.integers(0, MODEL["vocab_size"], size=(1, PROMPT_TOKENS))
    if args.child == "hf":
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(args.threads)

        def load():
            return AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()

        def forward(model):
            with torch.no_grad():
                return model(torch.from_numpy(forward_ids)).logits[0].numpy()

        def generate(model, n):
            ids = torch.from_numpy(prompt)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0, use_cache=True)
            return out[0, PROMPT_TOKENS:].numpy()
    else:
        import minillm as mm
        from minillm.backend import to_numpy
        from minillm.nn import GPT

        verify = args.child == "minillm-verify"

        def load():
            return GPT.from_pretrained(args.model_dir, verify=verify)

        def forward(model):
            with mm.no_grad():
                return to_numpy(model(forward_ids)[0].data)[0]

        def generate(model, n):
            return to_numpy(model.generate(prompt, n, temperature=0.0))[0, PROMPT_TOKENS:]

    before_kb = _memory_kb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - start
    peak_kb = _memory_kb("VmHWM")
    result = {"load_s": load_s, "rss_before_mb": before_kb / 1024, "peak_mb": peak_kb / 1024,
              "peak_extra_mb": (peak_kb - before_kb) / 1024 if reset else None,
              "rss_after_mb": _memory_kb("VmRSS") / 1024}
    if args.child != "minillm-verify":
        logits = forward(model)
        if args.logits_out:
            np.save(args.logits_out, logits[list(PARITY_POSITIONS)])
        result["forward"] = time_calls(lambda: forward(model), args.repeats)
        generate(model, 4)
        tokens = []
        result["generate"] = time_calls(lambda: tokens.append(generate(model, args.new_tokens).tolist()), args.repeats)
        result["tokens"] = tokens[0]
    print("RESULT " + json.dumps(result), flush=True)


def write_model(directory: str) -> None:
    import minillm as mm
    from minillm.nn import GPT, GPTConfig

    mm.manual_seed(0)
    GPT(GPTConfig.gpt2(**MODEL)).save_pretrained(directory)


def parity() -> str:
    """The parity table of the reference tests' shapes (module docstring)."""
    import numpy as np
    import torch
    from common import format_table

    from tests.reference import test_pretrained_transformers as shapes

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in sorted(shapes.BUILDERS):
            for dtype in (torch.float32, torch.bfloat16) if name.startswith("llama-gqa") else (torch.float32,):
                reference = shapes.build(name).to(dtype)
                folder = os.path.join(scratch, f"{name}-{dtype}")
                reference.save_pretrained(folder)
                reference = shapes.transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
                from minillm.nn import GPT

                ours = GPT.from_pretrained(folder)
                expected = shapes.hf_logits(reference)
                loaded = np.abs(shapes.our_logits(ours) - expected).max()
                ours.save_pretrained(folder + "-out")
                back = shapes.transformers.AutoModelForCausalLM.from_pretrained(folder + "-out").eval()
                exported = np.abs(shapes.hf_logits(back) - shapes.our_logits(ours)).max()
                prompt = shapes.IDS[:1, :5]
                with torch.no_grad():
                    theirs = reference.generate(torch.from_numpy(prompt), attention_mask=torch.ones(1, 5, dtype=torch.long),
                                                max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
                from minillm.backend import to_numpy

                same = np.array_equal(to_numpy(ours.generate(prompt, 20, temperature=0.0)), theirs.numpy())
                c = ours.config
                shape = (f"{c.n_layer}L {c.n_embd}w {c.n_head}/{c.n_kv_head} heads, "
                         f"{'tied' if c.tie_weights else 'untied'}" + (f", θ {c.rope_theta:g}" if c.pos == "rope" else ""))
                rows.append([name, shape, str(dtype).replace("torch.", ""), f"{np.abs(expected).max():.2f}",
                             f"{loaded:.1e}", f"{exported:.1e}", "yes" if same else "NO"])
    return format_table(["model", "shape", "file dtype", "largest logit", "HF files -> minillm: max abs diff",
                         "minillm export -> HF: max abs diff", "20 greedy tokens equal"], rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.parity:
        print(parity())
        return 0
    import numpy as np
    from common import alternate_rounds, child_errors, format_table, run_script_child, save_results, spread

    scratch = tempfile.mkdtemp(prefix="bench_pretrained_")
    if args.model_dir is None:
        args.model_dir = os.path.join(scratch, "gpt2-small-random")
        started = time.perf_counter()
        write_model(args.model_dir)
        print(f"wrote {args.model_dir} in {time.perf_counter() - started:.1f} s", flush=True)
    weights_mb = os.path.getsize(os.path.join(args.model_dir, "model.safetensors")) / 2 ** 20
    counter = iter(range(10 ** 6))

    def run(contender):
        logits = os.path.join(scratch, f"logits_{contender}_{next(counter)}.npy")
        argv = ["--child", contender, "--model-dir", args.model_dir, "--repeats", str(args.repeats), "--new-tokens",
                str(args.new_tokens), "--threads", str(args.threads), "--logits-out", logits]
        result = run_script_child(__file__, argv, args.threads, args.timeout)
        if "error" not in result and os.path.exists(logits):
            result["logits_file"] = logits
        return result

    runs = alternate_rounds(list(CONTENDERS), args.rounds, run, describe=lambda r: f"load {r['load_s']:.2f} s")
    good = {c: [r for r in runs[c] if "error" not in r] for c in CONTENDERS}
    rows = []
    summary = {}
    for contender in CONTENDERS:
        results = good[contender]
        if not results:
            rows.append([contender, "failed", "", "", "", ""])
            continue
        loads = [r["load_s"] for r in results]
        extra = [r["peak_extra_mb"] / weights_mb for r in results if r["peak_extra_mb"] is not None]
        entry = {"load_s": statistics.median(loads), "load_spread": spread(loads),
                 "peak_extra_x": statistics.median(extra) if extra else None,
                 "peak_mb": statistics.median(r["peak_mb"] for r in results)}
        for key, tokens in (("forward", FORWARD_TOKENS), ("generate", args.new_tokens)):
            times = [t for r in results if key in r for t in r[key]["times"]]
            if times:
                entry[f"{key}_tok_s"] = tokens / statistics.median(times)
                entry[f"{key}_spread"] = spread([tokens / statistics.median(r[key]["times"]) for r in results])
        summary[contender] = entry
        rows.append([contender, f"{entry['load_s']:.2f} ({entry['load_spread']})",
                     "" if entry["peak_extra_x"] is None else f"{entry['peak_extra_x']:.2f}x",
                     f"{entry['peak_mb']:.0f}",
                     f"{entry['forward_tok_s']:.0f} ({entry['forward_spread']})" if "forward_tok_s" in entry else "-",
                     f"{entry['generate_tok_s']:.1f} ({entry['generate_spread']})" if "generate_tok_s" in entry else "-"])
    headers = ["contender", "load s (spread)", "peak extra RSS / weights", "peak RSS MB",
               f"forward {FORWARD_TOKENS} tok/s", f"generate {args.new_tokens} tok/s"]
    text = format_table(headers, rows)
    if "minillm" in summary and "hf" in summary and "forward_tok_s" in summary["hf"]:
        ours, theirs = summary["minillm"], summary["hf"]
        ratios = [["load time", f"{ours['load_s'] / theirs['load_s']:.2f}x HF's", f"{ours['load_s']:.2f} s",
                   "<= 2 s"],
                  ["peak extra RSS", f"{ours['peak_extra_x']:.2f}x weights", f"HF {theirs['peak_extra_x']:.2f}x",
                   "<= 2x weights"],
                  ["forward tok/s", f"{ours['forward_tok_s'] / theirs['forward_tok_s']:.2f}x HF", "", ">= 1.0x"],
                  ["generate tok/s", f"{ours['generate_tok_s'] / theirs['generate_tok_s']:.2f}x HF", "", ">= 1.0x"]]
        a = np.load(good["minillm"][0]["logits_file"])
        b = np.load(good["hf"][0]["logits_file"])
        same = np.mean([x == y for x, y in zip(good["minillm"][0]["tokens"], good["hf"][0]["tokens"])])
        ratios.append(["parity", f"max abs logit diff {np.abs(a - b).max():.2e}", f"{100 * same:.0f}% same greedy tokens",
                       ""])
        text += "\n\n" + format_table(["measure", "minillm", "beside", "target"], ratios)
        summary["parity"] = {"max_abs_logit_diff": float(np.abs(a - b).max()), "same_tokens": float(same)}
    others = [c for r in runs.values() for x in r if "forward" in x for c in x["forward"]["other_cores"]]
    text += (f"\nCPU, float32 GPT-2 small shape (124M parameters, weights file {weights_mb:.0f} MiB), {args.threads} "
             f"threads; medians over {args.rounds} round(s) x {args.repeats} calls, each contender its own process "
             f"(spread: min-max of the per-round medians); other processes' load during the timed calls: median "
             f"{statistics.median(others) if others else float('nan'):.2f} cores.")
    text += child_errors({c: runs[c] for c in CONTENDERS})
    print(text)
    payload = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "logits_out")}, "model": MODEL,
               "weights_mb": weights_mb, "summary": summary,
               "runs": {c: [{k: v for k, v in r.items() if k != "tokens"} for r in rs] for c, rs in runs.items()}}
    print(f"results: {save_results('pretrained_' + time.strftime('%Y%m%d-%H%M%S'), payload, text, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
