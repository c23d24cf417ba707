"""``minillm serve``: the model of a checkpoint behind an OpenAI-compatible HTTP API and a chat page.

    minillm serve --model runs/sft/model.safetensors            # http://127.0.0.1:8000/
    minillm serve --model CKPT --host 0.0.0.0 --port 9000 --max-batch 32

Needs the ``serve`` extra (``pip install -e ".[serve]"``: Starlette and uvicorn); they are
imported when the command runs, so the rest of minillm works without them.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from minillm import commandline
from minillm.backend import DEVICES
from minillm.config import Config, Section, option
from minillm.errors import MinillmError
from minillm.host import set_blas_threads


@dataclass
class ServeSection(Section):
    name: ClassVar[str] = "serve"
    model: str = option("", "the model: a checkpoint (.safetensors) written by training, a Hugging Face model "
                        "directory, or a hub name such as gpt2 (downloaded on request)", required=True)
    tokenizer: str = option("", "a tokenizer file; empty = the tokenizer stored in the checkpoint")
    host: str = option("127.0.0.1", "the address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, "the TCP port (0 = any free port)", minimum=0, maximum=65535)
    served_name: str = option("", "the model id clients pass as 'model'; empty = the checkpoint's file name")
    max_batch: int = option(16, "requests decoded together at most (rows of the running batch)", minimum=1)
    max_queue: int = option(64, "requests waiting for a row at most; beyond, the server answers 429", minimum=1)
    threads: int = option(1, "BLAS threads for the model (decode steps are small products: 1 leaves a core to the "
                             "HTTP side; 0 = keep the environment's setting)", minimum=0)
    device: str = option("cpu", "where to run the model", choices=DEVICES)


@dataclass
class ServeConfig(Config):
    description: ClassVar[str] = ("Serve the model of --model over HTTP: the OpenAI API (/v1/models, /v1/completions, "
                                  "/v1/chat/completions, streamed or not) with continuous batching, and a chat page at /.")
    serve: ServeSection = field(default_factory=ServeSection)


def register(subparsers) -> None:
    commandline.register(subparsers, "serve", ServeConfig, run_serve,
                         help="an OpenAI-compatible HTTP server and chat page for a checkpoint")


def load_served_model(args: ServeSection):
    """(model, tokenizer, model id) through the checkpoint loader ``minillm generate`` uses."""
    from minillm.train.checkpoint import load_model_for_text  # noqa: PLC0415

    model, tokenizer = load_model_for_text(args.model, device=args.device, hub=True, tokenizer_path=args.tokenizer)
    name = args.served_name or os.path.basename(os.path.normpath(args.model))
    for suffix in (".safetensors",):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
    return model, tokenizer, name


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a clear error naming the address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"serve.host={host!r} cannot be resolved ({error}); expected an address such as "
                         "127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise MinillmError(f"cannot listen on {host}:{port}: {error.strerror}; expected a free port "
                           "(--port 0 picks one)") from None
    sock.listen(128)
    return sock


def run_serve(cfg: ServeConfig, out=None) -> int:
    args, out = cfg.serve, out or sys.stdout
    try:
        import uvicorn  # noqa: PLC0415

        from minillm.serve.app import create_app  # noqa: PLC0415  (imports Starlette)
    except ImportError as error:
        raise MinillmError(f"minillm serve needs the 'serve' extra ({error.name} is missing): "
                           "pip install -e \".[serve]\"") from None
    if args.threads:
        set_blas_threads(args.threads)
    model, tokenizer, name = load_served_model(args)
    sock = bind(args.host, args.port)
    app = create_app(model, tokenizer, name, max_batch=args.max_batch, max_queue=args.max_queue)
    host, port = sock.getsockname()[:2]
    out.write(f"minillm serve: model {name!r} ({model.num_parameters():,} parameters, context "
              f"{model.config.block_size}) at http://{host}:{port}/  (OpenAI API under /v1; Ctrl-C stops)\n")
    out.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
