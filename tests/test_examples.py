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
