"""``minillm sft`` and ``minillm dpo`` on the command line."""
from __future__ import annotations

import json
import math
import os

import pytest

from minillm.cli import build_parser, main
from minillm.commandline import load_config
from minillm.train.checkpoint import load_model
from tests.posttrain.test_sft import make_pretrained

SMALL = ["--max-steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--eval-per-task", "1", "--n-sft", "32",
         "--n-dpo", "16", "--max-new-tokens", "3", "--log-interval", "1", "--no-progress"]


def test_the_subcommands_are_registered_with_their_options(capsys):
    parser = build_parser()
    args, rest = parser.parse_known_args(["sft", "--checkpoint", "c.safetensors", "--lora-rank", "4", "--lr", "3e-4"])
    cfg = load_config(args.config_class, rest)
    assert args.handler.__name__ == "run_sft_command" and cfg.sft.lora_rank == 4 and cfg.optim.lr == 3e-4
    assert cfg.sft.data == "" and cfg.loop.device == "cpu" and cfg.loop.progress is True
    args, rest = parser.parse_known_args(["dpo", "--checkpoint", "m.safetensors", "--beta", "0.2", "--nll-alpha", "0",
                                          "--resume", "r.safetensors", "--device", "cuda"])
    cfg = load_config(args.config_class, rest)
    assert args.handler.__name__ == "run_dpo_command" and cfg.dpo.beta == 0.2 and cfg.dpo.nll_alpha == 0.0
    assert cfg.loop.resume == "r.safetensors" and cfg.loop.device == "cuda"
    assert main(["sft"]) == 2                                    # --checkpoint is required
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(["sft", "--help"]) == 0
    assert "[sft]" in capsys.readouterr().out


def test_sft_then_dpo_from_the_command_line(tmp_path, capsys):
    pretrained = make_pretrained(tmp_path / "pre.safetensors")
    sft_dir, dpo_dir = os.fspath(tmp_path / "sft"), os.fspath(tmp_path / "dpo")
    assert main(["sft", "--checkpoint", pretrained, "--out-dir", sft_dir, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "sft: 2 steps" in out and "end-marker rate: 0.000 ->" in out and "first_word" in out
    assert os.path.exists(os.path.join(sft_dir, "model.safetensors"))

    assert main(["dpo", "--checkpoint", os.path.join(sft_dir, "model.safetensors"), "--out-dir", dpo_dir,
                 "--beta", "0.1", "--eval-pairs", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "dpo: 2 steps" in out and "held-out preference accuracy" in out
    summary = json.load(open(os.path.join(dpo_dir, "summary.json"), encoding="utf-8"))
    assert summary["beta"] == 0.1 and summary["steps"] == 2
    model, tokenizer, _ = load_model(os.path.join(dpo_dir, "model.safetensors"))
    assert model.config.vocab_size == tokenizer.vocab_size


def test_full_fine_tuning_with_muon(tmp_path, capsys):
    pretrained = make_pretrained(tmp_path / "pre.safetensors")
    out_dir = os.fspath(tmp_path / "muon")
    assert main(["sft", "--checkpoint", pretrained, "--out-dir", out_dir, "--optimizer", "muon", *SMALL]) == 0
    assert "sft: 2 steps" in capsys.readouterr().out
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8")]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_lora_from_the_command_line_reports_the_trained_fraction(tmp_path, capsys):
    pretrained = make_pretrained(tmp_path / "pre.safetensors")
    out_dir = os.fspath(tmp_path / "lora")
    assert main(["sft", "--checkpoint", pretrained, "--out-dir", out_dir, "--lora-rank", "2",
                 "--lora-targets", "q_proj,v_proj", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "LoRA: rank 2, alpha 16.0 on 2 layers" in out
    trained_line = next(line for line in out.splitlines() if line.startswith("sft: 2 steps"))
    assert "trained" in trained_line and "(100.0%)" not in trained_line
    assert os.path.exists(os.path.join(out_dir, "adapters.safetensors"))


@pytest.mark.parametrize("extra, message", [
    (["--max-steps", "0"], "max_steps=0"),
    (["--lora-targets", "nope"], "targets ['nope'] match no Linear layer"),
    (["--data", "missing.jsonl"], "missing.jsonl"),
    (["--lora-rank", "2", "--optimizer", "muon"], "optim.optimizer='muon' with sft.lora_rank=2: Muon orthogonalises"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    pretrained = make_pretrained(tmp_path / "pre.safetensors")
    argv = ["sft", "--checkpoint", pretrained, "--out-dir", os.fspath(tmp_path / "x"), *SMALL, *extra]
    if "--lora-targets" in extra:
        argv += ["--lora-rank", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("minillm sft: error:") and message in err


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
    assert main(["dpo", "--checkpoint", os.fspath(tmp_path / "none.safetensors"), "--no-progress"]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_sft_and_dpo_start_from_a_huggingface_directory(tmp_path, capsys):
    """--model DIR: a Hugging Face directory (here minillm's own export) in place of --checkpoint,
    LoRA fine-tuned, exported again, and taken by dpo the same way."""
    pretrained = make_pretrained(tmp_path / "pre.safetensors")
    assert main(["export", pretrained, os.fspath(tmp_path / "hf")]) == 0
    assert main(["sft", "--model", os.fspath(tmp_path / "hf"), "--out-dir", os.fspath(tmp_path / "sft"),
                 "--lora-rank", "2", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "sft: 2 steps" in out and "LoRA: rank 2" in out
    assert main(["export", os.fspath(tmp_path / "sft" / "model.safetensors"), os.fspath(tmp_path / "hf-sft")]) == 0
    assert main(["dpo", "--model", os.fspath(tmp_path / "hf-sft"), "--out-dir", os.fspath(tmp_path / "dpo"),
                 "--eval-pairs", "4", *SMALL]) == 0
    assert "dpo: 2 steps" in capsys.readouterr().out
    sft_model, _, _ = load_model(tmp_path / "sft" / "model.safetensors")
    exported, tokenizer, _ = load_model(tmp_path / "hf-sft")
    assert exported.config.vocab_size == sft_model.config.vocab_size == tokenizer.vocab_size
    assert main(["sft", "--model", os.fspath(tmp_path / "hf"), "--checkpoint", pretrained]) == 2
    assert "are both given" in capsys.readouterr().err
