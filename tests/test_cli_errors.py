"""The ``minillm`` command's one error boundary: every failure a person can meet through the command
line is one clear line on stderr (never a traceback) with its exit status -- 2 for bad input and
other known failures, 3 for a diverged training run, 130 for Ctrl-C, 1 (with a log file holding
the traceback) for an unexpected exception. Each test runs a real command line through
``minillm.cli.main`` on tiny settings."""
from __future__ import annotations

import errno
import math
import os
import tempfile

import numpy as np
import pytest

import minillm as mm
from minillm import backend, commandline, errors
from minillm.cli import main
from minillm.generation.sampling import check_sampling_args
from minillm.nn import GPT, GPTConfig
from minillm.serialization import load_safetensors, save_safetensors
from minillm.tokenizer import CharTokenizer
from minillm.train import cli as train_cli
from minillm.train import pretrain
from minillm.train.checkpoint import save_checkpoint

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer.\n" * 40
TINY = ["--max_steps", "2", "--warmup_steps", "1", "--eval_interval", "2", "--eval_batches", "1",
        "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "16", "--batch_size", "2",
        "--tokenizer", "char", "--sample_tokens", "0", "--no-progress"]


def failure(capsys, args, code=2):
    """Run ``minillm ARGS``; check the exit status and that stderr is one line without a traceback;
    return that line."""
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model and its character tokenizer, saved as a checkpoint (block_size 16)."""
    folder = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer("abcdefghij \n", special_tokens=["<|endoftext|>"])
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    path = folder / "model.safetensors"
    save_checkpoint(path, model=model, step=0, tokenizer=tok)
    return str(path), model, tok


# ---------------------------------------------------------------------------------------------
# §1: values that were accepted silently
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, key", [("--grad_clip", "optim.grad_clip"), ("--eval_batches", "loop.eval_batches"),
                                         ("--save_interval", "loop.save_interval")])
def test_negative_loop_values_are_refused(option, key, tmp_path, capsys):
    line = failure(capsys, ["train", *TINY, option, "-1", "--out_dir", str(tmp_path / "run")])
    assert f"{key}=-1" in line and "out of range; expected a value >= 0" in line
    assert not (tmp_path / "run").exists()            # refused before anything is written


def test_denormal_temperature_is_refused_with_the_bound(checkpoint, capsys):
    line = failure(capsys, ["generate", "--checkpoint", checkpoint[0], "--prompt", "abc", "--temperature", "1e-320"])
    assert "generate.temperature=1e-320 is too small; expected 0 (greedy) or a temperature >= 0.001" in line
    with pytest.raises(ValueError, match="temperature=1e-05 is too small"):
        check_sampling_args(1e-5, None, None, None)   # the library refuses it too
    check_sampling_args(1e-3, None, None, None)       # the bound itself and 0 are fine
    check_sampling_args(0.0, None, None, None)


def test_infinite_and_huge_numbers_are_refused_by_the_config(tmp_path, capsys):
    line = failure(capsys, ["train", *TINY, "--lr", "1e400", "--out_dir", str(tmp_path / "run")])
    assert line == "minillm train: error: optim.lr=inf is not finite; expected a finite number"
    # a size NumPy cannot hold ("Maximum allowed dimension exceeded" before): refused with the key
    line = failure(capsys, ["train", *TINY, "--n_embd", str(10**20), "--out_dir", str(tmp_path / "run")])
    assert f"model.n_embd={10**20} is too large; expected an int of at most {2**63 - 1}" in line


def test_a_size_too_large_for_memory_names_the_options(corpus, tmp_path, capsys):
    line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--block_size", str(10**13),
                            "--out_dir", str(tmp_path / "run")])
    assert "error: out of memory: " in line and "lower batch_size, block_size" in line


# ---------------------------------------------------------------------------------------------
# §1: files and folders (OSError)
# ---------------------------------------------------------------------------------------------
def test_out_dir_that_is_an_existing_file(corpus, tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.write_text("x")
    line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--out_dir", str(existing)])
    assert f"{str(existing)!r} exists as a file where a directory is needed" in line


def test_out_dir_under_a_file(corpus, tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.write_text("x")
    line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--out_dir", str(existing / "run")])
    assert f"{str(existing)!r} is a file, not a directory; choose another path" in line


def test_read_only_out_dir(corpus, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):        # root writes anyway: make the folder refuse as the OS would
            def refuse(path, *args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            monkeypatch.setattr(pretrain.os, "makedirs", refuse)
        line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--out_dir", str(parent / "run")])
    finally:
        parent.chmod(0o700)
    assert f"{str(parent / 'run')!r}: Permission denied; check the permissions" in line


def test_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    output = tmp_path / "tok.json"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))      # as write/fsync report it: no file

    monkeypatch.setattr(os, "fsync", full)
    line = failure(capsys, ["tokenizer", "train", "--input", str(text), "--output", str(output), "--type", "char"])
    assert f"{str(output)!r}: No space left on device; free some space or write to another disk" in line
    assert not output.exists() and os.listdir(tmp_path) == ["text.txt"]   # nor a stray temporary file


def test_corpus_that_is_a_pipe(tmp_path, capsys):
    fifo = tmp_path / "pipe"                 # what --corpus /dev/stdin is when text is piped in
    os.mkfifo(fifo)
    line = failure(capsys, ["train", *TINY, "--corpus", str(fifo), "--out_dir", str(tmp_path / "run")])
    assert f"corpus path {str(fifo)!r} is neither a file nor a folder (a pipe or a device?)" in line


def test_a_directory_where_a_file_is_expected(checkpoint, tmp_path, capsys):
    line = failure(capsys, ["generate", "--checkpoint", str(tmp_path), "--prompt", "abc"])
    assert line.endswith(f"checkpoint {str(tmp_path)!r} is a directory; expected a .safetensors file such as "
                         f"{os.path.join(str(tmp_path), 'last.safetensors')!r}")       # was "no such file"
    line = failure(capsys, ["tokenizer", "encode", "--tokenizer", str(tmp_path), "--text", "abc"])
    assert line.endswith(f"{str(tmp_path)!r} is a directory; expected a file")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    line = failure(capsys, ["tokenizer", "train", "--input", str(text), "--output", str(tmp_path), "--type", "char"])
    assert f"--output {str(tmp_path)!r} is a directory; expected a file path such as" in line


# ---------------------------------------------------------------------------------------------
# §1: RuntimeError, FloatingPointError, RecursionError, MemoryError, anything else
# ---------------------------------------------------------------------------------------------
def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backend, "_strict_device", False)       # whatever --backend the tests run with
    monkeypatch.setattr(backend, "cupy_module", lambda: None)
    line = failure(capsys, ["train", *TINY, "--device", "cuda", "--out_dir", str(tmp_path / "run")])
    assert "device='cuda' needs CuPy and an NVIDIA GPU" in line and "use --device cpu" in line
    assert not (tmp_path / "run").exists()                      # checked before any work
    assert issubclass(errors.DeviceUnavailableError, RuntimeError)


def test_non_finite_loss_is_its_message_and_exit_3(corpus, tmp_path, capsys, monkeypatch):
    def nan_loss(model, batch):
        loss, extra = language_model_loss(model, batch)
        return loss * math.nan, extra

    language_model_loss = pretrain.language_model_loss
    monkeypatch.setattr(pretrain, "language_model_loss", nan_loss)
    line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--out_dir", str(tmp_path / "run")],
                   code=errors.EXIT_DIVERGED)
    assert line.startswith("minillm train: error: non-finite loss nan") and "at step 1" in line
    assert "the last good checkpoint is" in line


def test_nan_logits_in_generation(checkpoint, tmp_path, capsys):
    _, model, tok = checkpoint
    broken = GPT(model.config)
    broken.load_state_dict(model.state_dict())
    broken.tok_emb.weight.data[...] = np.nan
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model=broken, step=0, tokenizer=tok)
    assert main(["generate", "--checkpoint", str(path), "--prompt", "abc", "--max_new_tokens", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "abc\n"                    # the echoed prompt ends its line before the error
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "the model produced NaN logits for prompt rows [0]" in captured.err


def test_deeply_nested_config_and_tokenizer_files(checkpoint, tmp_path, capsys):
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    line = failure(capsys, ["train", "--config", str(toml)])
    assert f"config file {str(toml)!r} nests arrays or tables too deeply to read" in line
    tokenizer = tmp_path / "deep.json"
    tokenizer.write_text("[" * 100_000 + "]" * 100_000)
    line = failure(capsys, ["tokenizer", "encode", "--tokenizer", str(tokenizer), "--text", "abc"])
    assert f"tokenizer file {str(tokenizer)!r} nests JSON arrays or objects too deeply" in line


@pytest.mark.parametrize("error", [TypeError("unsupported operand"), KeyError("n_embd"), RecursionError("deep")])
def test_unexpected_exception_is_one_line_and_a_log_file_in_out_dir(error, tmp_path, capsys, monkeypatch):
    def broken(cfg, log=print):
        raise error

    monkeypatch.setattr(train_cli, "run_pretraining", broken)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    line = failure(capsys, ["train", "--out_dir", str(out_dir)], code=errors.EXIT_INTERNAL)
    assert line.startswith(f"minillm train: internal error: {type(error).__name__}: ")
    logs = list(out_dir.glob("minillm-error-*.log"))
    assert len(logs) == 1 and f"the traceback is in {logs[0]}" in line
    log = logs[0].read_text()
    assert "Traceback (most recent call last)" in log and "in broken" in log


def test_unexpected_exception_without_out_dir_logs_to_the_temporary_folder(tmp_path, capsys, monkeypatch):
    def broken(cfg):
        raise KeyError("vocab")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # the temporary folder, for this test
    # eval has no out_dir: the log goes to the temporary folder
    assert commandline.run(train_cli.EvalConfig, broken, "eval", ["--checkpoint", "x"]) == errors.EXIT_INTERNAL
    err = capsys.readouterr().err
    logs = list(tmp_path.glob("minillm-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err and "KeyError: 'vocab'" in err and "Traceback" not in err
    assert "KeyError: 'vocab'" in logs[0].read_text()


def test_debug_prints_the_traceback_instead(tmp_path, capsys, monkeypatch):
    def broken(cfg, log=print):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(train_cli, "run_pretraining", broken)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    for args in (["--debug", "train", "--out_dir", str(out_dir)], ["train", "--out_dir", str(out_dir), "--debug"]):
        assert main(args) == errors.EXIT_INTERNAL
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in broken" in err
        assert err.rstrip().endswith("minillm train: internal error: TypeError: unsupported operand (traceback above)")
    assert not list(out_dir.glob("minillm-error-*.log"))


def test_ctrl_c_is_130(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, log=print):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "run_pretraining", interrupted)
    assert main(["train", "--out_dir", str(tmp_path)]) == errors.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "minillm train: interrupted"


def test_a_closed_output_pipe_is_quiet(tmp_path, capsys, monkeypatch):
    def reader_gone(cfg, log=print):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))    # `minillm ... | head` after head exits

    monkeypatch.setattr(train_cli, "run_pretraining", reader_gone)
    assert main(["train", "--out_dir", str(tmp_path)]) == errors.EXIT_BROKEN_PIPE == 141
    assert capsys.readouterr().err == ""


def test_tokenizer_commands_follow_the_same_convention(tmp_path, capsys):
    line = failure(capsys, ["tokenizer", "decode", "--tokenizer", str(tmp_path / "missing.json"), "1"])
    assert line.startswith("minillm tokenizer decode: error: ") and "missing.json" in line


# ---------------------------------------------------------------------------------------------
# §6: messages that name the file or argument and what is wrong
# ---------------------------------------------------------------------------------------------
def test_whitespace_only_corpus(tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t \n")
    line = failure(capsys, ["train", *TINY, "--corpus", str(blank), "--out_dir", str(tmp_path / "run")])
    assert line.endswith(f"corpus file {str(blank)!r} holds only whitespace (7 characters); expected some text")


def test_corpus_emptied_by_cleaning_names_the_corpus(corpus, tmp_path, capsys):
    line = failure(capsys, ["train", *TINY, "--corpus", corpus, "--min_chars", "100000",
                            "--out_dir", str(tmp_path / "run")])
    assert f"--corpus {corpus!r} has 0 characters left after cleaning (data.min_chars=100000)" in line


def test_empty_tokenizer_training_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    line = failure(capsys, ["tokenizer", "train", "--input", str(empty), "--output", str(tmp_path / "t.json")])
    assert line.endswith(f"--input {str(empty)!r} is an empty file; expected UTF-8 text to train the tokenizer on")


def test_text_that_is_not_utf8(checkpoint, tmp_path, capsys):
    tok = tmp_path / "tok.json"
    CharTokenizer("abcdef").save(tok)
    # A Latin-1 "café" on the command line reaches Python as "caf\udce9" (surrogateescape).
    line = failure(capsys, ["tokenizer", "encode", "--tokenizer", str(tok), "--text", "caf\udce9"])
    assert "--text: the value is not valid UTF-8: byte 0xE9 at byte offset 3" in line
    line = failure(capsys, ["generate", "--checkpoint", checkpoint[0], "--prompt", "\u00e9t\u00e9 \udcff"])
    assert "--prompt: the value is not valid UTF-8: byte 0xFF at byte offset 6" in line


def test_resume_on_another_corpus(corpus, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", *TINY, "--corpus", corpus, "--out_dir", str(first)]) == 0
    other = tmp_path / "other.txt"
    other.write_text(TEXT[: len(TEXT) // 2])
    capsys.readouterr()
    resume = str(first / "last.safetensors")
    line = failure(capsys, ["train", *TINY, "--max_steps", "4", "--corpus", str(other), "--resume", resume,
                            "--out_dir", str(tmp_path / "second")])
    assert f"--resume {resume!r}: the training data changed since the checkpoint was saved" in line
    assert f"--corpus {str(other)!r} now gives" in line


def test_checkpoint_metadata_that_is_not_a_number(checkpoint, tmp_path, capsys):
    tensors, metadata = load_safetensors(checkpoint[0])
    path = tmp_path / "edited.safetensors"
    save_safetensors(path, tensors, {**metadata, "version": "one"})
    line = failure(capsys, ["generate", "--checkpoint", str(path), "--prompt", "abc"])
    assert line.endswith(f"checkpoint {str(path)!r}: field 'version' is 'one'; expected a non-negative integer")
    assert "invalid literal" not in line


def test_a_prompt_longer_than_the_context_is_not_echoed(checkpoint, capsys):
    prompt = "abc " * 200
    assert main(["generate", "--checkpoint", checkpoint[0], "--prompt", prompt]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""                          # not echoed in full before the error
    assert "Traceback" not in captured.err and prompt not in captured.err
    assert "--prompt (800 characters) encodes to 800 tokens, more than the model's context block_size=16" in captured.err


def test_os_errors_are_described_with_the_path_and_a_hint(tmp_path):
    assert errors.describe_os_error(FileNotFoundError("checkpoint 'x' does not exist")) == \
        "checkpoint 'x' does not exist"                 # a message of its own is kept
    assert errors.describe_os_error(OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro")) == \
        "'/mnt/ro': Read-only file system; choose a path on a writable disk"
    assert errors.describe_os_error(FileNotFoundError(errno.ENOENT, "corpus path not found", "c.txt")) == \
        "corpus path not found: 'c.txt'; check the path"
    assert errors.describe(ValueError("as it is")) == ("as it is", 2)
    message, code = errors.describe(ValueError("Maximum allowed dimension exceeded"))   # NumPy's size refusal
    assert code == 2 and message.startswith("out of memory: Maximum allowed dimension exceeded; expected sizes")
    assert errors.describe(AttributeError("a bug")) is None
