"""examples/train_minimal.py, the pretraining loop written out, runs and learns (with tiny settings)."""
import importlib.util
import math
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_minimal_runs_and_its_validation_loss_drops(device, capsys):
    example = load_example("train_minimal")
    history = example.main(["--device", device, "--steps", "30", "--vocab_size", "300", "--n_layer", "1",
                            "--n_embd", "32", "--block_size", "32", "--batch_size", "8", "--eval_interval", "15",
                            "--eval_tokens", "1024", "--sample_tokens", "8"])
    assert [record["step"] for record in history] == [0, 15, 30]
    first, last = history[0], history[-1]
    assert math.isclose(first["val_loss"], math.log(300), rel_tol=0.05)   # untrained: about uniform
    assert last["val_loss"] < first["val_loss"] - 0.5
    # bits per byte = nats per token * tokens / (ln 2 * bytes): the same ratio for every record.
    ratios = [record["bits_per_byte"] / record["val_loss"] for record in history]
    assert max(ratios) - min(ratios) < 1e-9 and 0.1 < ratios[0] < 1 / math.log(2)
    out = capsys.readouterr().out
    assert "step   30  val loss" in out and "ROMEO:\n" in out


def test_post_training_examples_keep_an_earlier_output_unless_told(tmp_path, monkeypatch, capsys):
    """Re-running an example into its earlier output folder is refused in one line (exit 2), as
    the commands do; --overwrite is passed on to the stage."""
    from minillm.fileio import ExistingOutputError

    for name, runner in (("finetune_sft", "run_sft"), ("align_dpo", "run_dpo")):
        example = load_example(name)
        seen = []

        def refuse(cfg, seen=seen):
            seen.append(cfg.loop.overwrite)
            raise ExistingOutputError(f"out_dir {cfg.loop.out_dir!r} already holds an earlier run")

        monkeypatch.setattr(example, runner, refuse)
        assert example.main(["--checkpoint", str(tmp_path / "x.safetensors"), "--out-dir", str(tmp_path)]) == 2
        assert example.main(["--checkpoint", str(tmp_path / "x.safetensors"), "--out-dir", str(tmp_path),
                             "--overwrite"]) == 2
        assert seen == [False, True]
        err = capsys.readouterr().err
        assert err.count(f"{name}.py: error: out_dir") == 2 and "Traceback" not in err


def test_post_training_examples_refuse_bad_numbers_before_any_work(tmp_path, monkeypatch, capsys):
    """A negative prompt count or zero steps is argparse's usage error (exit 2, naming the option),
    raised before the example pretrains or fine-tunes anything."""
    import pytest

    monkeypatch.chdir(tmp_path)
    for name in ("finetune_sft", "align_dpo"):
        module = load_example(name)
        for argv, option in ((["--eval-per-task", "-5"], "--eval-per-task"), (["--steps", "0"], "--steps"),
                             (["--batch-size", "x"], "--batch-size")):
            with pytest.raises(SystemExit) as stop:
                module.main(argv)
            assert stop.value.code == 2
            assert f"argument {option}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                   # nothing was written
