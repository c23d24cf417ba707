"""Post-training data: the chat template, SFT/DPO data files and batches, and seeded tasks.

Modules, one concept each:
    chat      ChatTemplate: conversations -> (ids, loss mask), generation prompts, reply parsing
    datasets  SFT (Alpaca or messages) and DPO JSON-lines files: strict loaders, atomic writers,
              rendering with a ChatTemplate
    batches   padded (x, y) SFT batches and DPO chosen/rejected batches; seeded samplers that resume
    tasks     program-checked instruction tasks over corpus words and small numbers, with a
              held-out split, noisy SFT data, preference pairs, evaluation and scoring

Typical use::

    tok = BPETokenizer.load("tokenizer.json")
    new_ids = ChatTemplate.ensure_special_tokens(tok)   # grow the model's embedding if non-empty
    template = ChatTemplate(tok)
    write_task_files("data/tasks", seed=0, n_sft=5000, n_dpo=2000)
    rendered = render_sft_examples(template, load_sft_jsonl("data/tasks/sft_train.jsonl"))
    batches = SFTBatchSampler(rendered, batch_size=16, block_size=128, pad_id=template.end_id, seed=0)
    x, y = batches.next_batch()                          # y is -100 off the assistant tokens
"""
from minillm.posttrain.batches import (IGNORE_INDEX, DPOBatchSampler, RenderedPair, SFTBatchSampler, dpo_batch,
                                       sft_batch)
from minillm.posttrain.chat import (ASSISTANT_TOKEN, CHAT_SPECIAL_TOKENS, END_TOKEN, SYSTEM_TOKEN, USER_TOKEN,
                                    ChatTemplate, Reply, check_conversation, ensure_chat_tokens)
from minillm.posttrain.datasets import (PreferencePair, load_dpo_jsonl, load_sft_jsonl, render_preference_pairs,
                                        render_sft_examples, save_dpo_jsonl, save_sft_jsonl)
from minillm.posttrain.tasks import (DEFAULT_NOISE, TASK_NAMES, TASKS, Task, TaskSpec, check, corpus_vocabulary,
                                     load_eval_jsonl, make_eval_prompts, make_pools, make_preference_pairs,
                                     make_sft_examples, save_eval_jsonl, score, write_task_files)

__all__ = [
    "IGNORE_INDEX", "DPOBatchSampler", "RenderedPair", "SFTBatchSampler", "dpo_batch", "sft_batch",
    "ASSISTANT_TOKEN", "CHAT_SPECIAL_TOKENS", "END_TOKEN", "SYSTEM_TOKEN", "USER_TOKEN",
    "ChatTemplate", "Reply", "check_conversation", "ensure_chat_tokens",
    "PreferencePair", "load_dpo_jsonl", "load_sft_jsonl", "render_preference_pairs", "render_sft_examples",
    "save_dpo_jsonl", "save_sft_jsonl",
    "DEFAULT_NOISE", "TASK_NAMES", "TASKS", "Task", "TaskSpec", "check", "corpus_vocabulary", "load_eval_jsonl",
    "make_eval_prompts", "make_pools", "make_preference_pairs", "make_sft_examples", "save_eval_jsonl", "score",
    "write_task_files",
]
