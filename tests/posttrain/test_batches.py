"""SFT and DPO batches: targets, padding, truncation, the all-masked error, resumable samplers."""
import json

import numpy as np
import pytest

from minillm.posttrain import (
    IGNORE_INDEX,
    ChatTemplate,
    DPOBatchSampler,
    PreferencePair,
    RenderedPair,
    SFTBatchSampler,
    dpo_batch,
    render_preference_pairs,
    render_sft_examples,
    sft_batch,
)

N = IGNORE_INDEX
PAD = 0


def test_sft_batch_targets_and_padding_by_hand():
    examples = [([10, 11, 12, 13, 14], [False, False, False, True, True]),
                ([20, 21, 22], [False, True, True])]
    x, y = sft_batch(examples, block_size=8, pad_id=PAD)
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (2, 4)
    np.testing.assert_array_equal(x, [[10, 11, 12, 13], [20, 21, PAD, PAD]])
    np.testing.assert_array_equal(y, [[N, N, 13, 14], [21, 22, N, N]])


def test_sft_batch_truncates_from_the_left_keeping_the_answer():
    ids = list(range(100, 110))                  # 10 tokens; the last 3 are supervised
    mask = [False] * 7 + [True] * 3
    x, y = sft_batch([(ids, mask)], block_size=4, pad_id=PAD)
    np.testing.assert_array_equal(x, [[105, 106, 107, 108]])    # the last block_size + 1 = 5 tokens: 105..109
    np.testing.assert_array_equal(y, [[N, 107, 108, 109]])


def test_all_masked_batch_raises_instead_of_a_nan_loss():
    with pytest.raises(ValueError, match="every target in this batch"):
        sft_batch([([1, 2, 3], [False, False, False]), ([4, 5], [True, False])], block_size=8, pad_id=PAD)
    # The only supervised token falls outside the window kept by truncation.
    with pytest.raises(ValueError, match="every target"):
        sft_batch([([1, 2, 3, 4, 5], [False, True, False, False, False])], block_size=2, pad_id=PAD)


@pytest.mark.parametrize("examples, kwargs, error, match", [
    ([([1, 2], [True])], {}, ValueError, "ids has 2 tokens but loss_mask has 1"),
    ([([1], [True])], {}, ValueError, "expected at least 2"),
    ([([1, -2], [True, True])], {}, ValueError, r"ids\[1\]=-2"),
    ([[1, 2]], {}, TypeError, r"examples_rendered\[0\] ids has type int"),
    ([[1, 2, 3]], {}, TypeError, "expected a pair"),
    ([], {}, ValueError, "examples_rendered is empty"),
    ([([1, 2], [True, True])], {"block_size": 0}, ValueError, "block_size=0"),
    ([([1, 2], [True, True])], {"pad_id": -1}, ValueError, "pad_id=-1"),
])
def test_sft_batch_validates_input(examples, kwargs, error, match):
    with pytest.raises(error, match=match):
        sft_batch(examples, **{"block_size": 4, "pad_id": PAD, **kwargs})


def test_rendered_conversation_supervises_the_reply(char_chat):
    template = ChatTemplate(char_chat)
    rendered = render_sft_examples(template, [[{"role": "user", "content": "abc"},
                                               {"role": "assistant", "content": "zy"}]])
    x, y = sft_batch(rendered, block_size=16, pad_id=template.end_id)
    targets = y[0][y[0] != N]
    assert char_chat.decode(targets.tolist()) == "zy<|end|>"
    # The first reply token is predicted from the <|assistant|> marker.
    assert x[0, np.argmax(y[0] != N)] == template.assistant_id


def make_rendered(count, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        length = int(rng.integers(3, 12))
        ids = [index] + rng.integers(0, 50, size=length - 1).tolist()   # first token identifies the example
        mask = [False] * (length - 2) + [True, True]
        examples.append((ids, mask))
    return examples


def test_sft_sampler_visits_every_example_once_per_epoch():
    rendered = make_rendered(10)
    sampler = SFTBatchSampler(rendered, batch_size=4, block_size=16, pad_id=PAD, seed=3)
    seen = [int(first) for _ in range(5) for first in sampler.next_batch()[0][:, 0]]   # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]                                   # each epoch has its own order
    assert sampler.epoch == 2 and sampler.batches_served == 5
    other = SFTBatchSampler(rendered, batch_size=4, block_size=16, pad_id=PAD, seed=3)
    assert [int(v) for _ in range(5) for v in other.next_batch()[0][:, 0]] == seen   # same seed, same batches
    different = SFTBatchSampler(rendered, batch_size=4, block_size=16, pad_id=PAD, seed=4)
    assert [int(v) for _ in range(5) for v in different.next_batch()[0][:, 0]] != seen


def test_sft_sampler_state_round_trip_resumes_exactly():
    rendered = make_rendered(7)
    sampler = SFTBatchSampler(rendered, batch_size=3, block_size=6, pad_id=PAD, seed=11)
    for _ in range(4):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))            # survives JSON
    expected = [sampler.next_batch() for _ in range(5)]
    resumed = SFTBatchSampler(rendered, batch_size=3, block_size=6, pad_id=PAD, seed=11)
    resumed.load_state_dict(state)
    assert resumed.batches_served == 4 and resumed.epoch == state["epoch"]
    for (x_expected, y_expected), (x, y) in zip(expected, (resumed.next_batch() for _ in range(5))):
        np.testing.assert_array_equal(x, x_expected)
        np.testing.assert_array_equal(y, y_expected)


def test_sampler_refuses_a_state_for_other_data_or_settings():
    rendered = make_rendered(7)
    state = SFTBatchSampler(rendered, batch_size=3, block_size=6, pad_id=PAD, seed=1).state_dict()
    with pytest.raises(ValueError, match="batch_size=3"):
        SFTBatchSampler(rendered, batch_size=2, block_size=6, pad_id=PAD, seed=1).load_state_dict(state)
    changed = [(list(ids), list(mask)) for ids, mask in rendered]
    changed[3][0][-1] += 1
    with pytest.raises(ValueError, match="data_crc32"):
        SFTBatchSampler(changed, batch_size=3, block_size=6, pad_id=PAD, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks keys"):
        SFTBatchSampler(rendered, batch_size=3, block_size=6, pad_id=PAD, seed=1).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="position=99"):
        SFTBatchSampler(rendered, batch_size=3, block_size=6, pad_id=PAD, seed=1).load_state_dict(
            {**state, "position": 99})


def test_sft_sampler_rejects_examples_with_nothing_to_learn_up_front():
    rendered = [([1, 2, 3], [False, False, True]), ([4, 5, 6, 7, 8], [False, True, False, False, False])]
    with pytest.raises(ValueError, match=r"rendered\[1\] has no supervised target"):
        SFTBatchSampler(rendered, batch_size=2, block_size=3, pad_id=PAD, seed=0)
    sampler = SFTBatchSampler(rendered, batch_size=2, block_size=4, pad_id=PAD, seed=0)   # fits: nothing cut
    assert sampler.num_truncated == 0
    with pytest.raises(ValueError, match="seed=-1"):
        SFTBatchSampler(rendered, batch_size=2, block_size=4, pad_id=PAD, seed=-1)


def test_dpo_batch_by_hand():
    pairs = [RenderedPair([1, 2, 3], [10, 11], [20]),
             RenderedPair([4, 5], [12], [21, 22, 23])]
    batch = dpo_batch(pairs, block_size=8, pad_id=PAD)
    assert set(batch) == {"chosen_x", "chosen_y", "rejected_x", "rejected_y"}
    assert all(value.shape == (2, 4) and value.dtype == np.int64 for value in batch.values())
    np.testing.assert_array_equal(batch["chosen_x"], [[1, 2, 3, 10], [4, 5, PAD, PAD]])
    np.testing.assert_array_equal(batch["chosen_y"], [[N, N, 10, 11], [N, 12, N, N]])
    np.testing.assert_array_equal(batch["rejected_x"], [[1, 2, 3, PAD], [4, 5, 21, 22]])
    np.testing.assert_array_equal(batch["rejected_y"], [[N, N, 20, N], [N, 21, 22, 23]])


def test_dpo_truncation_keeps_one_prompt_for_both_replies():
    pair = RenderedPair([1, 2, 3, 4, 5], [10, 11, 12], [20])
    batch = dpo_batch([pair], block_size=5, pad_id=PAD)        # 6 tokens fit: prompt keeps its last 3
    np.testing.assert_array_equal(batch["chosen_x"], [[3, 4, 5, 10, 11]])
    np.testing.assert_array_equal(batch["chosen_y"], [[N, N, 10, 11, 12]])
    np.testing.assert_array_equal(batch["rejected_x"], [[3, 4, 5, PAD, PAD]])
    np.testing.assert_array_equal(batch["rejected_y"], [[N, N, 20, N, N]])
    with pytest.raises(ValueError, match="a reply of 3 tokens does not fit block_size=2"):
        dpo_batch([pair], block_size=2, pad_id=PAD)


def test_dpo_sampler_round_trip(char_chat):
    template = ChatTemplate(char_chat)
    pairs = [PreferencePair(prompt, chosen, rejected) for prompt, chosen, rejected in
             [("ab", "x", "y"), ("ba", "xy", "z"), ("c", "zz", "z"), ("a b", "x", "yy"), ("cc", "y", "x")]]
    rendered = render_preference_pairs(template, pairs)
    sampler = DPOBatchSampler(rendered, batch_size=2, block_size=8, pad_id=template.end_id, seed=5)
    sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = [sampler.next_batch() for _ in range(4)]
    resumed = DPOBatchSampler(rendered, batch_size=2, block_size=8, pad_id=template.end_id, seed=5)
    resumed.load_state_dict(state)
    for batch_expected in expected:
        batch = resumed.next_batch()
        for key in batch_expected:
            np.testing.assert_array_equal(batch[key], batch_expected[key])
    with pytest.raises(ValueError, match="kind='sft'"):
        resumed.load_state_dict({**state, "kind": "sft"})
    with pytest.raises(ValueError, match="reply of 3 tokens"):
        DPOBatchSampler(rendered, batch_size=2, block_size=2, pad_id=0, seed=0)
