"""`minillm train` and `minillm eval` end to end on a tiny run; bad input gives one clear line."""
import json

import pytest

from minillm.cli import main

TINY = ["--max_steps", "6", "--warmup_steps", "2", "--eval_interval", "3", "--eval_batches", "2",
        "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "32", "--batch_size", "4",
        "--vocab_size", "280", "--sample_tokens", "0", "--progress", "false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--profile", "2", "--health_interval", "3", "--out_dir", str(out)]) == 0
    return out


def test_train_writes_checkpoints_metrics_and_summary(tiny_run):
    for name in ("last.safetensors", "best.safetensors", "tokenizer.json", "metrics.jsonl", "summary.json"):
        assert (tiny_run / name).exists(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["vocab_size"] == 280
    assert [point["step"] for point in summary["curve"]] == [3, 6]


def test_train_profile_writes_the_profile_of_the_steps_after_the_first(tiny_run):
    profile = json.loads((tiny_run / "profile.json").read_text())
    assert profile["steps"] == 2 and profile["ops"]["ScaledDotProductAttention"]["calls"] == 2
    assert "blocks.0.attn" in profile["modules"] and profile["ops_s"] <= profile["wall_s"]


def test_train_health_interval_writes_health_records_for_minillm_health(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    health = [r for r in records if r["kind"] == "health"]
    assert [r["step"] for r in health] == [1, 3, 6]
    assert set(health[-1]["attention"]) == {"blocks.0.attn"} and len(health[-1]["attention"]["blocks.0.attn"]["entropy"]) == 2
    assert main(["health", str(tiny_run), "--out", str(tiny_run / "dashboard.html")]) in (0, 5)
    assert "<svg" in (tiny_run / "dashboard.html").read_text(encoding="utf-8")


def test_eval_reports_loss_perplexity_and_bits_per_byte(tiny_run, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    assert main(["eval", "--checkpoint", str(tiny_run / "last.safetensors"), "--input", str(text)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loss"] > 0 and report["ppl"] > 1 and report["bpb"] > 0 and report["step"] == 6


def test_resume_continues_from_the_checkpoint(tiny_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    args = ["train", *TINY, "--max_steps", "8", "--out_dir", str(out), "--resume", str(tiny_run / "last.safetensors")]
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "--n_layers", "2"], "unknown key 'n_layers' (did you mean 'n_layer'?)"),
    (["train", "--lr", "fast"], "lr='fast' is not a valid float"),
    (["train", "--config", "/nonexistent.toml"], "does not exist"),
    (["eval", "--checkpoint", "/nonexistent.safetensors"], "does not exist"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_sample_prompt_the_char_tokenizer_cannot_encode_is_skipped_up_front(tmp_path, capsys):
    """The end-of-run samples start from fixed prompts; a character vocabulary without their letters
    skips those prompts (said before training) instead of failing after the whole run."""
    from minillm.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be that is the question\n" * 300, encoding="utf-8")
    status = main(["train", "--corpus", str(corpus), "--tokenizer", "char", "--n_layer", "1", "--n_embd", "16",
                   "--n_head", "2", "--n_kv_head", "2", "--block_size", "16", "--batch_size", "4", "--max_steps",
                   "2", "--eval_interval", "2", "--sample_tokens", "5", "--progress", "false",
                   "--out_dir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "the prompt 'ROMEO:\\n' is skipped" in captured.out + captured.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["samples"]) == 1                  # only the empty prompt's
