"""``mpiexec -n 2 minillm sft|dpo`` launched from pytest: the single process's loss curve.

SFT's loss is a mean over the reply tokens and DPO's NLL term a mean over the chosen replies'
tokens, and the conversations here have replies of 1 to 14 words, so the two ranks' halves of a
batch hold different numbers of them: the ranks' plain means would not average to the batch's
mean (a planted naive mean shows the curve then moves). A tiny model (1 layer of width 16) for
4 steps: a run takes a few seconds. Skipped, with the reason, without mpi4py or mpiexec."""
from __future__ import annotations

import json

import pytest

from tests.distributed.test_mpi import assert_same_curve, launch, pytestmark, train_losses  # noqa: F401
from tests.posttrain.test_sft import make_pretrained

STEPS = 4
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny pretrained checkpoint, SFT conversations and DPO pairs with replies of uneven length."""
    folder = tmp_path_factory.mktemp("posttrain")
    checkpoint = make_pretrained(folder / "pre.safetensors")
    sft, dpo = [], []
    for index in range(24):
        short, long = " ".join(WORDS[:1 + index % 3]), " ".join(WORDS[:5 + (7 * index) % 10])
        reply = long if index % 2 else short
        sft.append({"messages": [{"role": "user", "content": f"say {index}"}, {"role": "assistant", "content": reply}]})
        dpo.append({"prompt": f"say {index}", "chosen": reply, "rejected": short if index % 2 else long})
    (folder / "sft.jsonl").write_text("\n".join(map(json.dumps, sft)), encoding="utf-8")
    (folder / "dpo.jsonl").write_text("\n".join(map(json.dumps, dpo)), encoding="utf-8")
    return {"checkpoint": checkpoint, "sft": str(folder / "sft.jsonl"), "dpo": str(folder / "dpo.jsonl")}


def stage_args(command: str, files: dict, out, *extra) -> list[str]:
    return [command, "--checkpoint", files["checkpoint"], "--data", files[command], "--out_dir", str(out),
            "--batch_size", "4", "--max_steps", str(STEPS), "--warmup_steps", "1", "--log_interval", "1",
            "--eval_per_task", "0", "--progress", "false", *(("--eval_pairs", "0") if command == "dpo" else ()), *extra]


def run(args, ranks, **plants) -> dict[int, float]:
    done = launch(args, ranks, **plants)
    assert done.returncode == 0, done.stderr
    return train_losses(args[args.index("--out_dir") + 1])


@pytest.fixture(scope="module")
def sft_one_process(files, tmp_path_factory):
    return run(stage_args("sft", files, tmp_path_factory.mktemp("sft_one")), ranks=None)


def test_sft_on_two_ranks_gives_the_single_process_curve(files, tmp_path, sft_one_process):
    out = tmp_path / "two"
    done = launch(stage_args("sft", files, out), ranks=2)
    assert done.returncode == 0, done.stderr
    assert_same_curve(train_losses(out), sft_one_process)
    assert len(sft_one_process) == STEPS and sft_one_process[STEPS] < sft_one_process[1]      # it trained
    assert done.stdout.count("sft: 4 steps") == 1                   # rank 0 alone reports
    assert (out / "model.safetensors").exists() and (out / "summary.json").exists()
    # Each rank's own token mean averaged over the ranks is another loss: the test can tell.
    naive = run(stage_args("sft", files, tmp_path / "naive"), ranks=2, MINILLM_TEST_NAIVE_TOKEN_MEAN=1)
    with pytest.raises(AssertionError, match="step 1"):
        assert_same_curve(naive, sft_one_process)


def test_sft_with_zero_1_on_two_ranks_gives_the_single_process_curve(files, tmp_path, sft_one_process):
    assert_same_curve(run(stage_args("sft", files, tmp_path / "zero", "--zero", "1"), ranks=2), sft_one_process)


def test_lora_sft_on_two_ranks_gives_the_single_process_curve(files, tmp_path):
    lora = ("--lora_rank", "2", "--lora_targets", "q_proj,v_proj")
    expected = run(stage_args("sft", files, tmp_path / "one", *lora), ranks=None)
    assert_same_curve(run(stage_args("sft", files, tmp_path / "two", *lora), ranks=2), expected)
    assert (tmp_path / "two" / "adapters.safetensors").exists()
    assert_same_curve(run(stage_args("sft", files, tmp_path / "zero", *lora, "--zero", "1"), ranks=2), expected)


def test_dpo_on_two_ranks_gives_the_single_process_curve(files, tmp_path):
    expected = run(stage_args("dpo", files, tmp_path / "one"), ranks=None)
    assert_same_curve(run(stage_args("dpo", files, tmp_path / "two"), ranks=2), expected)
    assert expected[STEPS] < expected[1]
    # the NLL term (nll_alpha 1 by default) is a token mean too
    naive = run(stage_args("dpo", files, tmp_path / "naive"), ranks=2, MINILLM_TEST_NAIVE_TOKEN_MEAN=1)
    with pytest.raises(AssertionError, match="step 1"):
        assert_same_curve(naive, expected)


def test_a_batch_the_ranks_cannot_share_is_refused_before_any_work(files, tmp_path):
    out = tmp_path / "odd"
    done = launch(stage_args("dpo", files, out, "--batch_size", "3"), ranks=2)
    assert done.returncode == 2, done.stderr
    assert "loop.batch_size=3 is not divisible by the 2 ranks" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_sft_then_dpo_on_two_ranks_with_generated_data_and_evaluation(files, tmp_path):
    """The task files generated by rank 0 alone (the other rank waits for them), evaluation every
    step on rank 0 (its result broadcast), one report, every file written once."""
    small = ["--batch_size", "4", "--max_steps", "2", "--warmup_steps", "1", "--eval_per_task", "1", "--n_sft", "32",
             "--n_dpo", "16", "--max_new_tokens", "3", "--log_interval", "1", "--eval_interval", "1",
             "--progress", "false"]
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    done = launch(["sft", "--checkpoint", files["checkpoint"], "--out_dir", str(sft), *small], ranks=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("sft: 2 steps") == 1 and done.stdout.count("before SFT") == 1
    assert sorted(p.name for p in (sft / "data").iterdir()) == ["dpo_train.jsonl", "eval.jsonl", "sft_train.jsonl",
                                                               "spec.json"]
    done = launch(["dpo", "--checkpoint", str(sft / "model.safetensors"), "--out_dir", str(dpo), "--eval_pairs", "4",
                   "--lora_rank", "2", *small], ranks=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("held-out preference accuracy") == 1
    records = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert (dpo / "adapters.safetensors").exists() and json.loads((dpo / "summary.json").read_text())["steps"] == 2
