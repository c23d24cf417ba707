"""TrainConfig: TOML tables, command-line overrides, and clear rejections."""
import pytest

from minillm.train.cli import parse_overrides
from minillm.train.config import TrainConfig


def test_defaults_are_valid_and_round_trip():
    cfg = TrainConfig()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_toml_tables_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[model]\nn_layer = 2\nn_embd = 64\n[optim]\nlr = 1e-3\n[train]\nmax_steps = 7\n')
    cfg = TrainConfig.from_toml(path, {"max_steps": "9", "dropout": "0.2", "warmup_steps": "2"})
    assert (cfg.seed, cfg.n_layer, cfg.n_embd, cfg.lr, cfg.max_steps, cfg.dropout) == (3, 2, 64, 1e-3, 9, 0.2)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_layers'\]; valid keys are: .*n_layer"):
        TrainConfig.from_dict({"n_layers": 3})


def test_key_in_the_wrong_table_says_where_it_belongs(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nn_layer = 2\n")
    with pytest.raises(ValueError, match=r"'n_layer' is not valid in \[optim\] \(it belongs in \[model\]\)"):
        TrainConfig.from_toml(path)
    path.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ValueError, match=r"unknown table \[nonsense\]"):
        TrainConfig.from_toml(path)


@pytest.mark.parametrize("key, value, message", [
    ("n_layer", "two", "not a valid int"),
    ("n_layer", 2.5, "not a valid int"),
    ("lr", "fast", "not a valid float"),
    ("progress", "maybe", "not a valid bool"),
    ("tokenizer", "wordpiece", "expected one of"),
    ("dropout", 1.5, r"dropout=1.5 must be in \[0, 1\)"),
    ("n_head", 0, "must be positive"),
])
def test_bad_values_are_rejected_with_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({key: value})


def test_missing_and_invalid_toml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 2")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainConfig.from_toml(bad)


def test_parse_overrides():
    assert parse_overrides(["--max_steps", "10", "--lr=1e-3", "--out-dir", "x"]) == \
        {"max_steps": "10", "lr": "1e-3", "out_dir": "x"}
    with pytest.raises(ValueError, match="has no value"):
        parse_overrides(["--lr"])
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_overrides(["lr", "3"])


def test_every_example_config_parses():
    import pathlib

    configs = sorted((pathlib.Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        TrainConfig.from_toml(path)
