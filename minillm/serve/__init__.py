"""``minillm serve``: an OpenAI-compatible HTTP server with continuous batching and a chat page.

Modules: ``scheduler`` (the model-facing loop: a running batch that requests join and leave,
over :class:`minillm.generation.batch.DecodeBatch`), ``api`` (request fields checked, OpenAI
error bodies), ``app`` (the Starlette routes, streaming), ``page`` (the chat page), ``cli`` (the
command). ``app`` needs the ``serve`` extra (Starlette, uvicorn); the others do not.
"""
