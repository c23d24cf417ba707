"""The HTTP side of ``minillm serve``: an OpenAI-compatible Starlette app over the scheduler.

Routes:

    GET  /                       the chat page (minillm/serve/page.py)
    GET  /health                 {"status": "ok", running, waiting, steps, ...}
    GET  /v1/models              {"object": "list", "data": [{"id", "object": "model", ...}]}
    GET  /v1/models/{id}
    POST /v1/completions         text completion (minillm/serve/api.py lists the fields)
    POST /v1/chat/completions    chat completion with the model's chat template

Replies are those of the OpenAI API: a JSON object, or with ``"stream": true`` server-sent events
``data: {chunk}\\n\\n`` (``text_completion`` / ``chat.completion.chunk`` objects; chat's first chunk
per choice carries ``delta.role``, its last ``finish_reason``), then, with
``stream_options.include_usage``, one chunk with empty ``choices`` and the ``usage``, then
``data: [DONE]``. Every error is ``{"error": {"message", "type", "param", "code"}}``: 400 for a
bad body (malformed JSON, a field of the wrong type or out of range, a prompt that does not fit
the context), 404 unknown model or route, 405 wrong method, 413 a body over 1 MiB, 429 when
``max_queue`` requests wait already, 500 when generation itself failed (the message says why;
no traceback ever reaches a client, the server log has it).

A client that disconnects stops its generation: a stream's generator is closed (its jobs are
cancelled and leave the batch at the next step); a non-streamed request watches for the
``http.disconnect`` message while it waits.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

import minillm
from minillm.generation.chat import chat_template_for
from minillm.serve.api import MAX_SEED, ApiError, Generation, RequestReader, check_model
from minillm.serve.page import chat_page
from minillm.serve.scheduler import Job, QueueFull, Scheduler
from minillm.tokenizer.special import END_OF_TEXT

MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("minillm.serve")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class Outbox:
    """Events from the scheduler thread to the event loop's queues, with one wake-up of the loop
    per burst (a decode step emits one event per row; waking the loop for each would cost a
    self-pipe write and a loop iteration per token)."""

    def __init__(self, loop):
        self.loop, self.items, self.lock = loop, [], threading.Lock()

    def put(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            first = not self.items
            self.items.append((queue, item))
        if first:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


class Server:
    """The app's state: the model id, the request reader and the scheduler."""

    def __init__(self, model, tokenizer, model_id: str, max_batch: int = 16, max_queue: int = 64):
        self.model_id, self.created = model_id, int(time.time())
        self.template = chat_template_for(tokenizer)
        self.reader = RequestReader(tokenizer, model.config.block_size, self.template,
                                    tokenizer.special_tokens.get(END_OF_TEXT))
        self.scheduler = Scheduler(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
        self.fingerprint = f"minillm-{minillm.__version__}"
        self.outbox: Outbox | None = None

    # -- plumbing ------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ApiError(413, f"The request body has {declared} bytes; expected at most {MAX_BODY_BYTES}.")
        raw = b""
        async for piece in request.stream():
            raw += piece
            if len(raw) > MAX_BODY_BYTES:
                raise ApiError(413, f"The request body exceeds {MAX_BODY_BYTES} bytes.")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, f"We could not parse the JSON body of your request ({error}); expected a JSON "
                           "object such as {\"model\": ..., \"prompt\": ...}.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"The request body is a JSON {type(body).__name__}; expected a JSON object.",
                           code="invalid_json")
        check_model(body, self.model_id)
        return body

    def _submit(self, generation: Generation):
        """Queue one job per (prompt, choice); returns (jobs, asyncio queue of (index, kind, value))."""
        loop = asyncio.get_running_loop()
        if self.outbox is None or self.outbox.loop is not loop:
            self.outbox = Outbox(loop)
        outbox = self.outbox
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for prompt_index, prompt in enumerate(generation.prompts):
            for choice in range(generation.n):
                index = prompt_index * generation.n + choice

                def emit(kind, value, index=index):
                    outbox.put(events, (index, kind, value))

                seed = None if generation.seed is None else (generation.seed + choice) % MAX_SEED
                jobs.append(Job(prompt, generation.max_tokens, emit, generation.stop_ids, generation.stop_strings,
                                seed=seed, **generation.sampling))
        if len(jobs) > self.scheduler.max_queue:
            raise ApiError(400, f"The request asks for {len(jobs)} sequences (prompts x n); this server queues at "
                           f"most {self.scheduler.max_queue} at once (--max-queue). Lower 'n'.", param="n",
                           code="invalid_value")
        try:
            self.scheduler.submit(jobs)
        except QueueFull as error:
            raise ApiError(429, f"The server is busy: {error}. Retry shortly.", code="queue_full",
                           kind="rate_limit_error") from None
        except (ValueError, TypeError) as error:                 # sampling settings the API let through
            raise ApiError(400, f"Invalid sampling settings: {error}", code="invalid_value") from None
        return jobs, events

    def _usage(self, generation: Generation, jobs) -> dict:
        prompt = sum(len(p) for p in generation.prompts)
        completion = sum(job.completion_tokens for job in jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- routes --------------------------------------------------------------------------------
    def model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "minillm"}

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request):
        if request.path_params["model_id"] != self.model_id:
            raise ApiError(404, f"The model '{request.path_params['model_id'][:100]}' does not exist; this server "
                           f"serves '{self.model_id}'.", param="model", code="model_not_found")
        return JSONResponse(self.model_card())

    async def health(self, request: Request):
        return JSONResponse({"status": "ok", "model": self.model_id, **self.scheduler.stats()})

    async def page(self, request: Request):
        return HTMLResponse(chat_page(self.model_id))

    async def completions(self, request: Request):
        generation = self.reader.completion(await self._body(request))
        return await self._answer(request, generation, chat=False)

    async def chat_completions(self, request: Request):
        generation = self.reader.chat(await self._body(request))
        return await self._answer(request, generation, chat=True)

    async def _answer(self, request: Request, generation: Generation, chat: bool):
        jobs, events = self._submit(generation)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_id, "system_fingerprint": self.fingerprint}
        if generation.stream:
            return StreamingResponse(self._stream(generation, jobs, events, head, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, generation, jobs, events, head, chat)

    async def _collect(self, request, generation, jobs, events, head, chat):
        texts = [[] for _ in jobs]
        errors = []
        left = len(jobs)
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            while left:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:                           # the client went away
                    getter.cancel()
                    for job in jobs:
                        job.cancel()
                    return JSONResponse({}, status_code=499)
                index, kind, value = getter.result()
                if kind == "text":
                    texts[index].append(value)
                else:
                    left -= 1
                    if kind == "error":
                        errors.append(value)
        finally:
            watcher.cancel()
        if errors:
            raise ApiError(500, errors[0], code="generation_failed", kind="server_error")
        choices = []
        for index, job in enumerate(jobs):
            text = "".join(texts[index])
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": job.finish_reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": job.finish_reason})
        body = {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": self._usage(generation, jobs)}
        return JSONResponse(body)

    async def _stream(self, generation, jobs, events, head, chat):
        # every chunk is {head..., "choices": [...](, "usage": ...)}: the head is serialised once
        compact = (",", ":")
        opening = "data: " + json.dumps(head, separators=compact)[:-1] + ',"choices":'
        closing = (',"usage":null' if generation.include_usage else "") + "}\n\n"

        def event(choices) -> str:
            return opening + json.dumps(choices, separators=compact) + closing

        def choice(index, text=None, finish=None, role=False) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                if role:
                    delta = {"role": "assistant", "content": ""}
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

        left = len(jobs)
        try:
            if chat:
                yield "".join(event([choice(index, role=True)]) for index in range(len(jobs)))
            while left:
                # the events waiting now (several when this stream fell behind the batch) are
                # written together: each is still its own SSE chunk, but one send for all
                burst = [await events.get()]
                while not events.empty():
                    burst.append(events.get_nowait())
                out = []
                for index, kind, value in burst:
                    if kind == "text":
                        out.append(event([choice(index, value)]))
                    elif kind == "done":
                        left -= 1
                        out.append(event([choice(index, finish=value)]))
                    else:
                        error = ApiError(500, value, code="generation_failed", kind="server_error")
                        out.append("data: " + json.dumps(error.body()) + "\n\n")
                        yield "".join(out)
                        return
                yield "".join(out)
            tail = []
            if generation.include_usage:
                usage = json.dumps(self._usage(generation, jobs), separators=compact)
                tail.append(opening + '[],"usage":' + usage + "}\n\n")
            yield "".join(tail) + "data: [DONE]\n\n"
        finally:                                                 # also when the client went away
            for job in jobs:
                job.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has disconnected (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(model, tokenizer, model_id: str, max_batch: int = 16, max_queue: int = 64) -> Starlette:
    """The Starlette app serving ``model`` as ``model_id``; its lifespan starts and stops the
    scheduler thread."""
    server = Server(model, tokenizer, model_id, max_batch, max_queue)

    async def api_error(request, error: ApiError):
        return error_response(error)

    async def http_error(request, error: HTTPException):
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        message = {404: f"Unknown route {request.method} {request.url.path}; see GET /v1/models, POST "
                        "/v1/completions, POST /v1/chat/completions.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(error.status_code,
                                                                                            str(error.detail))
        return error_response(ApiError(error.status_code, message, code=kind))

    async def internal_error(request, error: Exception):
        log.exception("internal error while answering %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"Internal error ({type(error).__name__}); the server log has the "
                                       "details.", code="internal_error", kind="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.close()

    routes = [Route("/", server.page, methods=["GET"]),
              Route("/health", server.health, methods=["GET"]),
              Route("/v1/models", server.models, methods=["GET"]),
              Route("/v1/models/{model_id:path}", server.model, methods=["GET"]),
              Route("/v1/completions", server.completions, methods=["POST"]),
              Route("/v1/chat/completions", server.chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error})
    app.state.server = server
    return app
