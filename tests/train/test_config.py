"""The config spine through TrainConfig: TOML tables, command-line overrides, generated help and
clear rejections (minillm.config, minillm.commandline)."""
import pathlib

import pytest

from minillm.commandline import HelpRequested, UsageError, load_config, parse_command_line
from minillm.posttrain.stage import DPOConfig, SFTConfig
from minillm.train.config import TrainConfig


def test_defaults_are_valid_and_round_trip():
    cfg = TrainConfig.create()
    assert TrainConfig.create({f"{section}.{key}": value for section, values in cfg.to_dict().items()
                               for key, value in values.items()}) == cfg
    assert (cfg.model.preset, cfg.model.n_layer, cfg.model.n_kv_head, cfg.model.n_embd, cfg.data.vocab_size,
            cfg.loop.batch_size, cfg.loop.max_steps) == ("llama", 4, 2, 192, 4096, 16, 600)


def test_toml_tables_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[model]\nn_layer = 2\nn_embd = 64\n[optim]\nlr = 1e-3\n[train]\nmax_steps = 7\n')
    cfg = TrainConfig.load(path, {"max_steps": "9", "dropout": "0.2", "warmup_steps": "2"})
    assert (cfg.loop.seed, cfg.model.n_layer, cfg.model.n_embd, cfg.optim.lr, cfg.loop.max_steps, cfg.model.dropout) \
        == (3, 2, 64, 1e-3, 9, 0.2)


def test_every_gpt_config_field_is_a_model_key():
    from minillm.nn import GPTConfig

    cfg = TrainConfig.create({"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "rope_theta": "500000",
                              "model.vocab_size": 1100, "tie_weights": "false"})
    built = cfg.model.build(vocab_size=1024)
    assert (built.pos, built.norm, built.mlp, built.rope_theta, built.vocab_size, built.tie_weights) == \
        ("rope", "rmsnorm", "swiglu", 500000.0, 1100, False)
    assert set(GPTConfig.field_names()) <= set(TrainConfig.sections()["model"].option_names())
    with pytest.raises(ValueError, match="smaller than the tokenizer's 2048"):
        cfg.model.build(vocab_size=2048)


def test_a_key_alone_or_with_its_section():
    cfg = TrainConfig.create({"vocab_size": 512, "model.vocab_size": 600})   # alone: the tokenizer's (data)
    assert (cfg.data.vocab_size, cfg.model.vocab_size) == (512, 600)
    assert TrainConfig.resolve("max-steps") == ("loop", "max_steps")


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'n_layers' \(did you mean 'n_layer'\?\); valid keys are: .*n_layer"):
        TrainConfig.create({"n_layers": 3})


def test_key_in_the_wrong_table_says_where_it_belongs(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nn_layer = 2\n")
    with pytest.raises(ValueError, match=r"'n_layer' is not valid in \[optim\] \(it belongs in \[model\]\)"):
        TrainConfig.load(path)
    path.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ValueError, match=r"unknown table \[nonsense\]"):
        TrainConfig.load(path)


@pytest.mark.parametrize("key, value, message", [
    ("n_layer", "two", "not a valid int"),
    ("n_layer", 2.5, "not a valid int"),
    ("lr", "fast", "not a valid float"),
    ("progress", "maybe", "not a valid bool"),
    ("tokenizer", "wordpiece", "expected one of"),
    ("dropout", 1.5, r"model.dropout=1.5 is out of range; expected a value >= 0 and < 1"),
    ("n_head", 0, r"model.n_head=0 is out of range; expected a value >= 1"),
    ("min_lr", 1.0, r"optim.min_lr=1.0 is above optim.lr"),
])
def test_bad_values_are_rejected_with_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.create({key: value})


def test_missing_and_invalid_toml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 2")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainConfig.load(bad)


def test_command_line_forms():
    path, values = parse_command_line(TrainConfig, ["--max_steps", "10", "--lr=1e-3", "--out-dir", "x",
                                                    "--optim.beta2", "0.95", "--no-progress", "--config", "c.toml"])
    assert path == "c.toml"
    assert values == {"loop.max_steps": "10", "optim.lr": "1e-3", "loop.out_dir": "x", "optim.beta2": "0.95",
                      "loop.progress": False}
    assert parse_command_line(SFTConfig, ["--clean-data", "--lr", "1"])[1] == {"sft.clean_data": "true",
                                                                                  "optim.lr": "1"}
    with pytest.raises(UsageError, match="has no value"):
        parse_command_line(TrainConfig, ["--lr"])
    with pytest.raises(UsageError, match="unexpected argument"):
        parse_command_line(TrainConfig, ["lr", "3"])
    with pytest.raises(HelpRequested):
        parse_command_line(TrainConfig, ["--lr", "1", "-h"])


def test_help_lists_every_key_with_type_default_and_meaning():
    text = TrainConfig.help_text("train")
    for line in ("[model]", "[data]", "[optim]", "[loop]", "--n_layer INT OR NONE", "transformer blocks (default 4)",
                 "--model.vocab_size", "--precision STR", "one of fp32, fp16, bf16"):
        assert line in text, line
    assert text.count("\n  --") == len(TrainConfig.keys())


def test_post_training_configs_share_the_sections_with_their_own_defaults():
    sft = load_config(SFTConfig, ["--checkpoint", "m.safetensors", "--lora-rank", "4"])
    dpo = load_config(DPOConfig, ["--checkpoint", "m.safetensors", "--beta", "0.2"])
    assert (sft.sft.lora_rank, sft.optim.lr, sft.loop.out_dir, sft.loop.seed, sft.optim.beta2) == \
        (4, 2e-3, "runs/sft", 0, 0.95)
    assert (dpo.dpo.beta, dpo.optim.lr, dpo.loop.max_steps, dpo.loop.out_dir) == (0.2, 2e-4, 150, "runs/dpo")
    with pytest.raises(ValueError, match="--checkpoint is required"):
        load_config(SFTConfig, [])
    with pytest.raises(ValueError, match=r"dpo.beta=0.0 is out of range; expected a value > 0"):
        load_config(DPOConfig, ["--checkpoint", "m", "--beta", "0"])


def test_every_example_config_parses():
    configs = sorted((pathlib.Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        TrainConfig.load(path)
