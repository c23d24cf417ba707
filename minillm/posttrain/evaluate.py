"""Evaluating a chat model on the seeded tasks: greedy replies, exact match, end-marker rate.

Replies come from ``model.generate`` (KV-cached decoding, :mod:`minillm.generation`) at
temperature 0, i.e. greedy: each new token is the argmax of the last position's logits, and a
reply stops at ``<|end|>`` (or at another turn marker, where ``ChatTemplate.parse_reply`` would
cut it anyway).

    report = evaluate_tasks(model, template, make_eval_prompts(50, seed=0))
    report["overall"], report["end_rate"], report["mistake_rate"]["larger"]
"""
from __future__ import annotations

from minillm.posttrain.tasks import Task, score

DEFAULT_MAX_NEW_TOKENS = 12


def generate_replies(model, template, prompts: list[str], max_new_tokens=DEFAULT_MAX_NEW_TOKENS):
    """Greedy replies to user ``prompts`` (each one user turn), parsed by ``template.parse_reply``:
    a list of ``Reply(text, ids, ended)``.

    ``max_new_tokens``: one limit, or one per prompt (prompts with the same limit are decoded as
    one batch). A prompt longer than ``block_size`` minus its limit keeps its last tokens, so
    the whole reply is predicted from an uncut window.
    """
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"generate_replies: prompts has type {type(prompts).__name__}; expected a list of str")
    block_size = model.config.block_size
    limits = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    if len(limits) != len(prompts):
        raise ValueError(f"generate_replies: {len(limits)} max_new_tokens limits for {len(prompts)} prompts; "
                         "expected one int, or one per prompt")
    for limit in limits:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit < block_size:
            raise ValueError(f"generate_replies: max_new_tokens={limit!r}; expected an int in [1, "
                             f"block_size={block_size})")
    ids = [template.render_prompt([{"role": "user", "content": prompt}]) for prompt in prompts]
    groups: dict[int, list[int]] = {}
    for index, limit in enumerate(limits):
        groups.setdefault(limit, []).append(index)
    stops = sorted(template.marker_ids)
    replies = [None] * len(prompts)
    for limit, indices in sorted(groups.items()):
        batch = [ids[i][-(block_size - limit):] for i in indices]
        outputs = model.generate(batch, max_new_tokens=limit, temperature=0.0, stop=stops)
        for index, prompt, output in zip(indices, batch, outputs):
            replies[index] = template.parse_reply(output[len(prompt):])
    return replies


def reply_budgets(template, eval_prompts: list[Task], slack: int = 4) -> list[int]:
    """A token budget per prompt: its longer reference reply (``answer`` or ``mistake``) in tokens,
    plus ``<|end|>``, plus ``slack``. A reply that has not ended by then can be neither the answer
    nor the mistake, so decoding further would change no score; and a budget tied to the reply
    works for any tokenizer (a character-level reply is several times longer than a BPE one)."""
    return [max(len(template.render_reply(task.answer)), len(template.render_reply(task.mistake))) + slack
            for task in eval_prompts]


def evaluate_tasks(model, template, eval_prompts: list[Task], max_new_tokens: int | None = None) -> dict:
    """Greedy exact match on task prompts, per task and overall, and the end-marker rate.

    ``max_new_tokens`` None (or 0): each prompt gets :func:`reply_budgets`' budget (capped at
    half the model's window), so ``end_rate`` is the share of replies closed by ``<|end|>``
    within 4 tokens of the reference length. Returns ``tasks.score(...)``'s dict (``{task:
    accuracy, "overall": ..., "mistake_rate": {...}}``) plus ``"end_rate"``, ``"prompts"`` (how
    many), ``"ended"`` (how many replies ended: ``end_rate * prompts``) and ``"replies"`` (the
    reply texts, in prompt order).
    """
    if not isinstance(eval_prompts, (list, tuple)) or not eval_prompts:
        raise ValueError(f"evaluate_tasks: eval_prompts={eval_prompts!r:.80}; expected a non-empty list of Task")
    if not max_new_tokens:
        cap = model.config.block_size // 2
        max_new_tokens = [min(budget, cap) for budget in reply_budgets(template, eval_prompts)]
    replies = generate_replies(model, template, [task.prompt for task in eval_prompts], max_new_tokens)
    texts = [reply.text for reply in replies]
    result = score(texts, list(eval_prompts))
    result["ended"] = sum(bool(reply.ended) for reply in replies)
    result["end_rate"] = result["ended"] / len(replies)
    result["prompts"] = len(replies)
    result["replies"] = texts
    return result


def per_task_subset(eval_prompts: list[Task], per_task: int) -> list[Task]:
    """The first ``per_task`` prompts of each task (in their order): a cheaper evaluation for
    progress checks during training; the final figures use every prompt."""
    counts: dict[str, int] = {}
    subset = []
    for task in eval_prompts:
        if counts.get(task.name, 0) < per_task:
            counts[task.name] = counts.get(task.name, 0) + 1
            subset.append(task)
    return subset
