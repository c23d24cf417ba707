"""``minillm serve`` under load: total tokens/s, time to first token and per-token latency for 1, 4
and 16 concurrent streaming clients, and the server's memory over a soak of repeated requests.

    python benchmarks/bench_serve.py --model runs/main/best.safetensors     # a trained checkpoint
    python benchmarks/bench_serve.py                                        # random weights, main job's shape
    python benchmarks/bench_serve.py --rounds 1 --soak-seconds 60 --clients 1,4

Model: ``--model PATH`` (any minillm checkpoint with its tokenizer), else a random-weight
checkpoint of the main job's shape (``minillm train``'s defaults: Llama preset, 4 layers, 4
heads, 2 key/value heads, 192 wide, context 128, vocab 4096) with a byte-level BPE tokenizer
trained on the first 200 kB of the embedded corpus (speed does not depend on the weights; with
random weights a reply almost never ends early, so every request runs its ``--max-tokens``).

Method
- The server is ``python -m minillm serve`` in a fresh process per measurement (``--max-batch
  16``, ``--threads`` BLAS threads); the clients are this process: asyncio + httpx, each client
  sends its requests one after the other, streamed (``"stream": true``, ``include_usage``), all
  clients at once. Request: a Shakespeare prompt (22-27 tokens with the main job's tokenizer; a
  different one per client), ``max_tokens`` 64, temperature 0.8, top_p 0.95, a seed per request.
- Per request: time to first token (TTFT: request sent -> first non-empty text chunk) and the
  per-token latency ((last chunk - first chunk) / (tokens - 1): the pace of one stream). Per
  level: total tokens/s = completion tokens of all requests / wall time from the first request
  sent to the last reply done; a request fails on any HTTP error or error event.
- Levels alternate (1, 4, 16, then 16, 4, 1, ...) over ``--rounds`` rounds (common.alternate_rounds);
  tokens/s is the median over rounds with the per-round spread; TTFT and per-token p50/p95 pool
  every request of every round. Target: 16 clients >= 4x the single client's total tokens/s,
  no failed request.
- Other processes' CPU during each level (common.OtherCpu, the server's own CPU excluded: it is
  a child reaped inside the window); the table warns when the machine was not idle.
- Soak (``--soak-seconds``, 0 = none): 16 clients send requests back to back; the server's
  resident memory (VmRSS) is sampled every 5 s. Bounded: the last sample within 10% (or 16 MiB)
  of the first one taken after 20% of the soak (warm-up), and no failed request.

Results: benchmarks/results/bench_serve.json and .md (git-ignored).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

TARGET = 4.0
PROMPTS = ["ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and",
           "HAMLET:\nTo be, or not to be, that is the question: whether 'tis nobler in the",
           "MACBETH:\nTomorrow, and tomorrow, and tomorrow, creeps in this petty pace from",
           "KING LEAR:\nBlow, winds, and crack your cheeks! rage! blow! You cataracts and",
           "OTHELLO:\nIt is the cause, it is the cause, my soul; let me not name it to you,",
           "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse",
           "LADY MACBETH:\nOut, damned spot! out, I say! One: two: why, then, 'tis time to",
           "BRUTUS:\nThere is a tide in the affairs of men, which, taken at the flood, leads on"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a checkpoint; empty = random weights of the main job's shape")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (comma-separated)")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (split over its clients)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the levels")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the server (its --threads)")
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="memory soak length (0 = none)")
    parser.add_argument("--out", default="", help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The model and the server
# ---------------------------------------------------------------------------------------------
def random_checkpoint(folder: str) -> str:
    """A random-weight checkpoint of the main job's shape, with a BPE tokenizer of its vocabulary."""
    import warnings

    import minillm as mm
    from minillm.commandline import load_config
    from minillm.data import default_corpus_path
    from minillm.nn import GPT, GPTConfig
    from minillm.tokenizer import BPETokenizer
    from minillm.train.checkpoint import save_checkpoint
    from minillm.train.config import TrainConfig

    cfg = load_config(TrainConfig, [])
    vocab = cfg.data.vocab_size
    text = open(default_corpus_path(), encoding="utf-8").read()[:200_000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tokenizer = BPETokenizer.train(text, vocab_size=vocab, special_tokens=["<|endoftext|>"])
    model_cfg = {k: v for k, v in vars(cfg.model).items() if k != "preset" and v is not None}
    preset = getattr(GPTConfig, cfg.model.preset)
    mm.manual_seed(0)
    model = GPT(preset(**{**model_cfg, "vocab_size": tokenizer.vocab_size}))
    path = os.path.join(folder, "random-main-shape.safetensors")
    save_checkpoint(path, model=model, step=0, tokenizer=tokenizer)
    return path


class ServerProcess:
    """``python -m minillm serve`` on a free port, in a fresh process."""

    def __init__(self, model: str, threads: int):
        from common import set_threads

        env = set_threads(threads, os.environ.copy())
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen([sys.executable, "-m", "minillm", "serve", "--model", model, "--port", "0",
                                         "--max-batch", "16", "--max-queue", "256", "--threads", str(threads)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        match = re.search(r"at (http://[\d.]+:\d+)/", line)
        if not match:
            raise RuntimeError(f"the server did not start: {line}{self.process.stderr.read()[-3000:]}")
        self.url = match.group(1)
        self.header = line.strip()

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
            for row in handle:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)


# ---------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------
async def one_request(client, url: str, prompt: str, max_tokens: int, seed: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    last = time.perf_counter()
                    first = first or last
    except Exception as error:      # noqa: BLE001  (every failure is counted)
        return {"error": f"{type(error).__name__}: {error}"}
    if first is None:                                            # ended at once (a stop token first): no text
        return {"ttft": None, "per_token": None, "tokens": tokens, "done": time.perf_counter()}
    return {"ttft": first - sent, "per_token": (last - first) / (tokens - 1) if tokens > 1 else None,
            "tokens": tokens, "done": time.perf_counter()}


async def run_level(url: str, clients: int, requests: int, max_tokens: int, seed0: int) -> dict:
    import httpx

    per_client = max(1, requests // clients)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def client_loop(index: int) -> list[dict]:
            out = []
            for r in range(per_client):
                out.append(await one_request(client, url, PROMPTS[(index + r) % len(PROMPTS)], max_tokens,
                                             seed0 + index * 1000 + r))
            return out

        await one_request(client, url, PROMPTS[0], 4, 1)          # warm-up (connection, first forward)
        start = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(client_loop(i) for i in range(clients))) for r in batch]
        wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in good)
    return {"clients": clients, "requests": len(results), "failed": len(results) - len(good),
            "errors": [r["error"] for r in results if "error" in r][:5], "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft": [r["ttft"] for r in good if r["ttft"] is not None],
            "per_token": [r["per_token"] for r in good if r["per_token"] is not None]}


def measure(model: str, clients: int, args, seed0: int) -> dict:
    from common import OtherCpu

    server = ServerProcess(model, args.threads)
    try:
        with OtherCpu() as load:
            result = asyncio.run(run_level(server.url, clients, args.requests, args.max_tokens, seed0))
            server.stop()                                        # reaped inside: its CPU counts as ours
    finally:
        server.stop()
    result["other_cores"] = load.other_cores
    return result


async def soak(server: ServerProcess, seconds: float, max_tokens: int) -> dict:
    import httpx

    samples, results = [], []
    stop_at = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=24)) as client:
        async def client_loop(index: int):
            r = 0
            while time.perf_counter() < stop_at:
                results.append(await one_request(client, server.url, PROMPTS[(index + r) % len(PROMPTS)],
                                                 max_tokens, 10_000_000 + index * 100_000 + r))
                r += 1

        async def sampler():
            start = time.perf_counter()
            while time.perf_counter() < stop_at:
                samples.append((time.perf_counter() - start, server.rss_mib()))
                await asyncio.sleep(5)

        await asyncio.gather(sampler(), *(client_loop(i) for i in range(16)))
    samples.append((seconds, server.rss_mib()))
    warm = [rss for t, rss in samples if t >= 0.2 * seconds] or [samples[-1][1]]
    growth = samples[-1][1] - warm[0]
    bounded = growth <= max(16.0, 0.1 * warm[0])
    failed = sum("error" in r for r in results)
    return {"seconds": seconds, "requests": len(results), "failed": failed,
            "tokens": sum(r.get("tokens", 0) for r in results), "rss_mib": samples,
            "rss_first_mib": samples[0][1], "rss_warm_mib": warm[0], "rss_max_mib": max(s[1] for s in samples),
            "rss_last_mib": samples[-1][1], "growth_after_warmup_mib": growth, "bounded": bounded and not failed}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv=None) -> int:
    args = parse_args(argv)
    from common import alternate_rounds, format_table, save_results, spread

    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or random_checkpoint(folder)
        label = args.model or "random weights, main job's shape"
        probe = ServerProcess(model, args.threads)
        header = probe.header
        probe.stop()
        print(header, flush=True)
        counter = iter(range(1_000_000))

        def run(level: str) -> dict:
            return measure(model, int(level), args, seed0=next(counter) * 100_000)

        def describe(r: dict) -> str:
            return (f"{r['tokens_per_s']:.1f} tokens/s, {r['requests']} requests, {r['failed']} failed, "
                    f"TTFT p50 {percentile(r['ttft'], 50) * 1e3:.0f} ms, other cores {r['other_cores']:.2f}")

        runs = alternate_rounds([str(c) for c in levels], args.rounds, run, describe=describe)
        soak_result = None
        if args.soak_seconds > 0:
            server = ServerProcess(model, args.threads)
            try:
                soak_result = asyncio.run(soak(server, args.soak_seconds, args.max_tokens))
            finally:
                server.stop()
    rows, summary = [], {}
    base = statistics.median(r["tokens_per_s"] for r in runs[str(levels[0])]) or float("nan")
    for level in levels:
        results = runs[str(level)]
        rates = [r["tokens_per_s"] for r in results]
        ttft = [t for r in results for t in r["ttft"]]
        per_token = [t for r in results for t in r["per_token"]]
        failed = sum(r["failed"] for r in results)
        rate = statistics.median(rates)
        summary[level] = dict(tokens_per_s=rate, spread=spread(rates), ratio=rate / base, failed=failed,
                              requests=sum(r["requests"] for r in results),
                              ttft_p50_ms=percentile(ttft, 50) * 1e3, ttft_p95_ms=percentile(ttft, 95) * 1e3,
                              per_token_p50_ms=percentile(per_token, 50) * 1e3,
                              per_token_p95_ms=percentile(per_token, 95) * 1e3,
                              other_cores=statistics.median(r["other_cores"] for r in results),
                              errors=[e for r in results for e in r["errors"]][:5])
        s = summary[level]
        rows.append([level, s["requests"], s["failed"], f"{rate:.1f} ({s['spread']})", f"{s['ratio']:.2f}x",
                     f"{s['ttft_p50_ms']:.0f}", f"{s['ttft_p95_ms']:.0f}", f"{s['per_token_p50_ms']:.1f}",
                     f"{s['per_token_p95_ms']:.1f}", f"{s['other_cores']:.2f}"])
    table = format_table(["clients", "requests", "failed", "tokens/s total (spread)", "vs 1 client",
                          "TTFT p50 ms", "TTFT p95 ms", "per-token p50 ms", "per-token p95 ms", "other cores"], rows)
    top = max(levels)
    verdict = (f"target: {top} clients >= {TARGET:g}x one client's total tokens/s with no failed request: "
               f"{summary[top]['ratio']:.2f}x, {sum(s['failed'] for s in summary.values())} failed -> "
               f"{'MET' if summary[top]['ratio'] >= TARGET and not any(s['failed'] for s in summary.values()) else 'NOT MET'}")
    lines = [f"model: {label}; {header}", f"{args.rounds} rounds, {args.requests} requests per level, "
             f"max_tokens {args.max_tokens}, server BLAS threads {args.threads}", "", table, "", verdict]
    if soak_result:
        s = soak_result
        lines += ["", f"soak: {s['seconds']:.0f} s, 16 clients, {s['requests']} requests ({s['failed']} failed), "
                  f"{s['tokens']} tokens; server RSS first {s['rss_first_mib']:.1f} MiB, after warm-up "
                  f"{s['rss_warm_mib']:.1f}, max {s['rss_max_mib']:.1f}, last {s['rss_last_mib']:.1f} MiB "
                  f"(growth after warm-up {s['growth_after_warmup_mib']:+.1f} MiB) -> "
                  f"{'bounded' if s['bounded'] else 'NOT bounded'}"]
    if any(summary[level]["other_cores"] > 0.1 for level in levels):
        lines.append("WARNING: other processes used CPU during the measurement; re-run for trustworthy figures")
    text = "\n".join(lines)
    print(text)
    save_results("bench_serve", {"args": vars(args), "model": label, "levels": summary, "runs": runs,
                                 "soak": soak_result}, text, args.out or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
