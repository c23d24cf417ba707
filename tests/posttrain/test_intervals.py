"""95% Wilson intervals of the post-training rates, the headline rates of a summary, the DPO
example's claims and the multi-seed driver's tables."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from minillm.posttrain.cli import headline_rates, report_lines
from minillm.posttrain.stage import SFTConfig
from minillm.posttrain.tasks import (
    DEFAULT_EVAL_PER_TASK,
    DEFAULT_NOISE,
    Task,
    format_rate,
    make_eval_prompts,
    pooled_count,
    score,
    wilson_interval,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_script(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("successes, trials, low, high", [
    # by hand, z = 1.96: z^2 / n = 0.38415, shrink 1.38415; 0/10: centre = half width = 0.19207 / 1.38415
    (0, 10, 0.0, 0.27753),
    (5, 10, 0.23659, 0.76341),     # centre 0.5, half width 1.41603 * sqrt(0.025 + 0.0096037) = 0.26341
    (10, 10, 0.72247, 1.0),
    (1, 1, 0.20654, 1.0),          # z^2 / n = 3.8415: centre 0.79346, half width 0.20654
])
def test_wilson_interval_matches_hand_computed_values(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("trials", [1, 2, 7, 50, 300, 2400])
def test_wilson_interval_contains_the_rate_and_narrows_with_more_trials(trials):
    for successes in range(0, trials + 1, max(1, trials // 13)):
        low, high = wilson_interval(successes, trials)
        assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert wilson_interval(trials // 2, trials)[1] - wilson_interval(trials // 2, trials)[0] > \
        wilson_interval(4 * trials // 2, 4 * trials)[1] - wilson_interval(4 * trials // 2, 4 * trials)[0]


@pytest.mark.parametrize("successes, trials", [(3, 2), (-1, 5), (0, 0), (1.0, 2), (True, 2)])
def test_wilson_interval_refuses_bad_counts(successes, trials):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, trials)


def test_format_rate_and_pooled_count():
    assert format_rate(5, 10) == "0.500 [0.237, 0.763]"
    prompts = [Task("larger", "a", "2", "1"), Task("larger", "b", "5", "3"), Task("last_word", "c", "x", "y"),
               Task("add", "d", "3", "4")]
    result = score(["1", "5", "y", "4"], prompts)
    assert pooled_count(result, ["larger", "last_word"], "mistakes") == (2, 3)
    assert pooled_count(result, ["larger", "last_word", "add"], "correct") == (1, 4)
    with pytest.raises(ValueError, match="word_count"):
        pooled_count(result, ["word_count"], "mistakes")


def test_the_default_eval_size_is_at_least_300_and_the_pools_hold_it():
    assert DEFAULT_EVAL_PER_TASK >= 300 and SFTConfig.create({"checkpoint": "x"}).sft.eval_per_task == DEFAULT_EVAL_PER_TASK
    prompts = make_eval_prompts(DEFAULT_EVAL_PER_TASK, seed=0)
    assert len({(t.name, t.prompt) for t in prompts}) == 8 * DEFAULT_EVAL_PER_TASK


def fake_evaluation(correct: dict, mistakes: dict, prompts: int = 300, ended: int = 1100) -> dict:
    tasks = {name: {"prompts": prompts, "correct": correct.get(name, 0), "mistakes": mistakes.get(name, 0)}
             for name in ("first_word", "last_word", "word_count", "larger")}
    result = {name: c["correct"] / prompts for name, c in tasks.items()}
    result.update(overall=sum(c["correct"] for c in tasks.values()) / (4 * prompts),
                  mistake_rate={name: c["mistakes"] / prompts for name, c in tasks.items()}, counts=tasks,
                  ended=ended, end_rate=ended / (4 * prompts))
    return result


def dpo_summary(before_mistakes: dict, after_mistakes: dict, after_correct: dict, accuracy: float) -> dict:
    before = {"tasks": fake_evaluation({"first_word": 240}, before_mistakes), "heldout_reward_accuracy": 0.0,
              "heldout_prefers_chosen": 0.5}
    after = {"tasks": fake_evaluation(after_correct, after_mistakes), "heldout_reward_accuracy": accuracy,
             "heldout_prefers_chosen": 0.6}
    return {"stage": "dpo", "steps": 1, "train_seconds": 1.0, "minutes": 0.1, "parameters": {"trainable": 1, "total": 1,
            "fraction": 1.0}, "before": before, "after": after, "heldout_pairs": 400, "model": "m"}


def test_headline_rates_pool_the_noisy_tasks_and_count_the_pairs():
    summary = dpo_summary({"larger": 60, "last_word": 30, "word_count": 90}, {"larger": 3}, {"first_word": 250}, 0.9)
    rates = headline_rates(summary["before"], 400)
    assert set(DEFAULT_NOISE) == {"larger", "last_word", "word_count"}
    assert rates["taught mistake"] == (180, 900) and rates["exact match"] == (240, 1200)
    assert rates["end marker"] == (1100, 1200)
    assert headline_rates(summary["after"], 400)["preference accuracy"] == (360, 400)
    assert "preference accuracy" not in headline_rates(summary["after"], None)
    text = report_lines(summary)
    assert "taught mistake 0.200 [" in text and "preference accuracy 0.900 [0.867, 0.926]" in text


def test_the_dpo_example_claims_need_disjoint_intervals_and_fail_with_exit_status():
    align = load_script(ROOT / "examples" / "align_dpo.py", "example_align_dpo_intervals")
    halved = dpo_summary({"larger": 60, "last_word": 30, "word_count": 90}, {"larger": 20, "word_count": 20},
                         {"first_word": 250}, 0.9)
    assert [passed for _, passed in align.dpo_checks(halved)] == [True, True, True]
    claim = align.dpo_checks(halved)[1][0]
    assert "0.200 [0.175, 0.227] -> 0.044 [0.033, 0.060]" in claim and "intervals disjoint" in claim
    # halved in the point estimate, but on few prompts the intervals overlap: the claim fails
    few = {"tasks": fake_evaluation({}, {"larger": 3}, prompts=10, ended=30)}
    few_before = {"tasks": fake_evaluation({}, {"larger": 6}, prompts=10, ended=30)}
    small = dict(halved, before=few_before, after={**few, "heldout_reward_accuracy": 0.9})
    assert [passed for _, passed in align.dpo_checks(small)] == [True, False, True]
    worse = dpo_summary({"larger": 60}, {"larger": 10}, {"first_word": 100}, 0.7)
    assert [passed for _, passed in align.dpo_checks(worse)] == [False, True, False]
    calls = []

    def fake_run(cfg):
        calls.append(cfg.dpo.eval_per_task)
        return worse

    align.run_dpo = fake_run
    assert align.main(["--checkpoint", str(ROOT / "setup.cfg"), "--eval-per-task", "30"]) == 1
    assert calls == [30]
    align.run_dpo = lambda cfg: halved
    assert align.main(["--checkpoint", str(ROOT / "setup.cfg")]) == 0


def test_the_seed_driver_tabulates_rates_with_intervals_and_mean_sd():
    driver = load_script(ROOT / "benchmarks" / "posttrain_seeds.py", "bench_posttrain_seeds")
    per_seed = {seed: {"sft": {"exact match": (400 + 20 * seed, 1000), "taught mistake": (180, 900)},
                       "dpo_alpha1": {"taught mistake": (40 + 10 * seed, 900), "preference accuracy": (360, 400)}}
                for seed in (0, 1)}
    text = driver.tables(per_seed)
    assert "| 0    | exact match" in text and format_rate(400, 1000) in text and format_rate(50, 900) in text
    assert "0.410 +- 0.014" in text            # exact match 0.400, 0.420: sd = 0.02 / sqrt(2)
    assert driver.mean_sd([0.5]) == "0.500 +- -"
    summary = {"after": fake_evaluation({"first_word": 30}, {"larger": 3}), "heldout_pairs": None}
    assert driver.stage_figures(summary)["taught mistake"] == (3, 900)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "posttrain_seeds.py"), "--seeds", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "--seeds=0" in done.stderr and "Traceback" not in done.stderr
    json.dumps(per_seed)                        # what save_results writes
