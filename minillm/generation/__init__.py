"""Generation: sampling, KV-cached decoding, streaming (``GPT.generate`` / ``GPT.stream`` call here).

    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=50, top_p=0.95, seed=0)
    for token in model.stream(ids, 100, temperature=0.0, stop=[end_id]): ...
    for text in stream_text(model, tokenizer, ids, 100, stop=["\\n\\n"]): print(text, end="")

Modules: ``sampling`` (choosing a token from logits), ``decode`` (the decoding loop, ragged
batches, the context-overflow policy), ``batch`` (a running batch whose rows sit at their own
positions: continuous batching for ``minillm serve``), ``text`` (incremental UTF-8 decoding, stop strings),
``chat`` (an interactive session: conversation, context budget, Ctrl-C; ``minillm chat``).
The key/value cache itself is :class:`minillm.nn.KVCache` (attention reads and writes it).
"""
from minillm.generation.batch import DecodeBatch, choose_rows
from minillm.generation.chat import ChatSession, chat_loop
from minillm.generation.decode import as_prompts, decode_steps, generate, stream
from minillm.generation.sampling import (
    Sampler,
    apply_repetition_penalty,
    candidates,
    check_sampling_args,
    draw,
    make_generators,
)
from minillm.generation.text import IncrementalDetokenizer, split_stop, stream_text

__all__ = [
    "ChatSession", "DecodeBatch", "IncrementalDetokenizer", "Sampler", "chat_loop", "apply_repetition_penalty", "as_prompts", "candidates",
    "check_sampling_args", "choose_rows", "decode_steps", "draw", "generate", "make_generators", "split_stop", "stream",
    "stream_text",
]
