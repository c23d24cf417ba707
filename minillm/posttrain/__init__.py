"""Post-training: SFT/DPO data files and batches, seeded tasks, LoRA, and the SFT and DPO runs.

(The chat template, shared with generation, lives in :mod:`minillm.tokenizer.chat`; vocabulary
growth in :mod:`minillm.nn.vocab`.)

Modules, one concept each:
    datasets  SFT (Alpaca or messages) and DPO JSON-lines files: strict loaders, atomic writers,
              rendering with a ChatTemplate
    batches   padded (x, y) SFT batches and DPO chosen/rejected batches; seeded samplers that resume
    tasks     program-checked instruction tasks over corpus words and small numbers, with a
              held-out split, noisy SFT data, preference pairs, evaluation and scoring
    stage     what SFT and DPO share: their config sections, model loading, LoRA set-up, task data,
              running a stage through the Trainer
    sft       supervised fine-tuning: the loss, the run (``minillm sft``)
    lora      low-rank adapters: LoRALinear, apply/merge, adapter files
    dpo       direct preference optimisation: sequence log-probs, the loss, the run
              (``minillm dpo``)
    evaluate  greedy replies (model.generate) scored on the tasks: exact match, end-marker rate
    cli       the ``sft`` and ``dpo`` subcommands

Typical use::

    tok = BPETokenizer.load("tokenizer.json")
    new_ids = ChatTemplate.ensure_special_tokens(tok)   # grow the model's embedding if non-empty
    template = ChatTemplate(tok)
    write_task_files("data/tasks", seed=0, n_sft=5000, n_dpo=2000)
    rendered = render_sft_examples(template, load_sft_jsonl("data/tasks/sft_train.jsonl"))
    batches = SFTBatchSampler(rendered, batch_size=16, block_size=128, pad_id=template.end_id, seed=0)
    x, y = batches.next_batch()                          # y is -100 off the assistant tokens

    summary = run_sft(SFTConfig.create({"checkpoint": "runs/shakespeare/last.safetensors", "lora_rank": 8}))
    summary = run_dpo(DPOConfig.create({"checkpoint": "runs/sft/model.safetensors", "beta": 0.1}))
"""
from minillm.posttrain.batches import IGNORE_INDEX, DPOBatchSampler, RenderedPair, SFTBatchSampler, dpo_batch, sft_batch
from minillm.posttrain.datasets import (
                                       PreferencePair,
                                       load_dpo_jsonl,
                                       load_sft_jsonl,
                                       render_preference_pairs,
                                       render_sft_examples,
                                       save_dpo_jsonl,
                                       save_sft_jsonl,
)
from minillm.posttrain.dpo import (
                                       DPOObjective,
                                       dpo_loss,
                                       frozen_copy,
                                       run_dpo,
                                       sequence_logprobs,
                                       sequence_logprobs_composed,
)
from minillm.posttrain.evaluate import evaluate_tasks, generate_replies
from minillm.posttrain.lora import (
                                       LoRALinear,
                                       apply_lora,
                                       load_lora,
                                       lora_state_dict,
                                       merge_lora,
                                       parameter_counts,
                                       save_lora,
)
from minillm.posttrain.sft import run_sft, sft_loss
from minillm.posttrain.stage import DPOConfig, DPOSection, PostTrainSection, SFTConfig, SFTSection
from minillm.posttrain.tasks import (
                                       DEFAULT_NOISE,
                                       TASK_NAMES,
                                       TASKS,
                                       Task,
                                       TaskSpec,
                                       check,
                                       corpus_vocabulary,
                                       load_eval_jsonl,
                                       make_eval_prompts,
                                       make_pools,
                                       make_preference_pairs,
                                       make_sft_examples,
                                       save_eval_jsonl,
                                       score,
                                       write_task_files,
)
from minillm.tokenizer.chat import (
                                       ASSISTANT_TOKEN,
                                       CHAT_SPECIAL_TOKENS,
                                       END_TOKEN,
                                       SYSTEM_TOKEN,
                                       USER_TOKEN,
                                       ChatTemplate,
                                       Reply,
                                       check_conversation,
                                       ensure_chat_tokens,
)

__all__ = [
    "IGNORE_INDEX", "DPOBatchSampler", "RenderedPair", "SFTBatchSampler", "dpo_batch", "sft_batch",
    "ASSISTANT_TOKEN", "CHAT_SPECIAL_TOKENS", "END_TOKEN", "SYSTEM_TOKEN", "USER_TOKEN",
    "ChatTemplate", "Reply", "check_conversation", "ensure_chat_tokens",
    "PreferencePair", "load_dpo_jsonl", "load_sft_jsonl", "render_preference_pairs", "render_sft_examples",
    "save_dpo_jsonl", "save_sft_jsonl",
    "DEFAULT_NOISE", "TASK_NAMES", "TASKS", "Task", "TaskSpec", "check", "corpus_vocabulary", "load_eval_jsonl",
    "make_eval_prompts", "make_pools", "make_preference_pairs", "make_sft_examples", "save_eval_jsonl", "score",
    "write_task_files",
    "DPOConfig", "DPOSection", "PostTrainSection", "SFTConfig", "SFTSection", "run_sft", "sft_loss",
    "LoRALinear", "apply_lora", "load_lora", "lora_state_dict", "merge_lora", "parameter_counts", "save_lora",
    "DPOObjective", "dpo_loss", "frozen_copy", "run_dpo",
    "sequence_logprobs", "sequence_logprobs_composed",
    "evaluate_tasks", "generate_replies",
]
