"""A tiny chat checkpoint and a live ``minillm serve`` app on 127.0.0.1 (a random free port) for the serve tests."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import minillm as mm
from minillm.nn import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer
from minillm.train.checkpoint import save_checkpoint

CHARS = "abcdefghijklmnopqrstuvwxyz \n"
SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]


def tiny_checkpoint(path, block_size=96, seed=0):
    """A random 1-layer GPT-2 with a character tokenizer holding the chat markers; returns
    (path, model, tokenizer)."""
    tok = CharTokenizer(CHARS, special_tokens=SPECIALS)
    mm.manual_seed(seed)
    model = GPT(GPTConfig.gpt2(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                               init_std=0.4))
    save_checkpoint(path, model=model, step=0, tokenizer=tok)
    return str(path), model.eval(), tok


class LiveServer:
    """uvicorn serving ``app`` in a daemon thread on 127.0.0.1, port chosen by the OS."""

    def __init__(self, app):
        import uvicorn

        from minillm.serve.cli import bind

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def served(tmp_path, **app_options):
    """(LiveServer context, SimpleNamespace(model, tok, name, state)) for a fresh tiny checkpoint."""
    from minillm.serve.app import create_app
    from minillm.serve.cli import ServeSection, load_served_model

    path, _, _ = tiny_checkpoint(tmp_path / "tiny.safetensors")
    model, tok, name = load_served_model(ServeSection(model=path))
    app = create_app(model, tok, name, **app_options)
    return LiveServer(app), SimpleNamespace(model=model, tok=tok, name=name, state=app.state.server, path=path)
