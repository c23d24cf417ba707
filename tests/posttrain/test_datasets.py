"""SFT/DPO JSON-lines files: both SFT forms, strict error reports with line numbers, atomic writers."""
import json
import os

import pytest

from minillm.posttrain import (
    ChatTemplate,
    PreferencePair,
    load_dpo_jsonl,
    load_sft_jsonl,
    render_preference_pairs,
    render_sft_examples,
    save_dpo_jsonl,
    save_sft_jsonl,
)

U, A, E = 7, 8, 9   # marker ids of the char_chat fixture


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_alpaca_and_messages_forms(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [
        json.dumps({"instruction": "Say hi.", "output": "hi"}),
        "",                                                                  # blank lines are skipped
        json.dumps({"instruction": "Translate.", "input": "bonjour", "output": "hello"}),
        json.dumps({"instruction": "Name one.", "input": "", "output": "one", "meta": {"source": "x"}}),
        "   ",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                                 {"role": "assistant", "content": "d"}]}),
    ])
    conversations = load_sft_jsonl(path)
    assert conversations[0] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    assert conversations[1][0] == {"role": "user", "content": "Translate.\n\nbonjour"}
    assert conversations[2][0] == {"role": "user", "content": "Name one."}             # empty input: no "\n\n"
    assert [m["role"] for m in conversations[3]] == ["system", "user", "assistant", "user", "assistant"]
    assert len(conversations) == 4


def test_every_malformed_sft_line_is_reported_with_its_number(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    path = write_lines(tmp_path / "bad.jsonl", [
        good,                                                                 # 1
        "{not json",                                                          # 2
        json.dumps({"instruction": "a"}),                                     # 3 missing output
        json.dumps({"instruction": "a", "output": "b", "extra": 1}),          # 4 unexpected key
        json.dumps({"instruction": 5, "output": "b"}),                        # 5 wrong type
        json.dumps({"instruction": "  ", "output": "b"}),                     # 6 empty text
        json.dumps(["a", "b"]),                                               # 7 not an object
        json.dumps({"messages": [{"role": "user", "content": "a"}]}),         # 8 does not end with assistant
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}),  # 9
        json.dumps({"instruction": "a", "output": "b", "meta": "x"}),         # 10 meta not an object
        good,                                                                 # 11
    ])
    with pytest.raises(ValueError) as info:
        load_sft_jsonl(path)
    message = str(info.value)
    assert str(path) in message and "9 malformed line(s) out of 11" in message
    for number, reason in [(2, "invalid JSON"), (3, "missing key 'output'"), (4, "unexpected key(s) ['extra']"),
                           (5, "'instruction' has type int"), (6, "'instruction' is '  '"),
                           (7, "expected a JSON object, got list"), (8, "expected 'assistant'"),
                           (9, "content is empty"), (10, "'meta' has type str")]:
        assert f"line {number}: " in message and reason in message, (number, reason, message)
    assert "line 1:" not in message and "line 11:" not in message


def test_long_error_lists_are_cut_with_a_count(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["[]"] * 25)
    with pytest.raises(ValueError, match=r"(?s)25 malformed.*line 20: .*\.\.\. and 5 more") as info:
        load_sft_jsonl(path)
    assert "line 21:" not in str(info.value)


def test_invalid_utf8_line_is_reported(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps({"instruction": "a", "output": "b"}).encode() + b"\n{\"instruction\": \"\xff\"}\n")
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        load_sft_jsonl(path)


@pytest.mark.parametrize("content, match", [("", "is empty"), ("\n \n\n", "has only blank lines")])
def test_a_file_without_records_is_an_error(tmp_path, content, match):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_sft_jsonl(path)
    with pytest.raises(ValueError, match=match):
        load_dpo_jsonl(path)


def test_dpo_file_and_its_errors(tmp_path):
    good = {"prompt": "p", "chosen": "yes", "rejected": "no"}
    path = write_lines(tmp_path / "dpo.jsonl", [json.dumps(good), json.dumps({**good, "meta": {"task": "t"}})])
    pairs = load_dpo_jsonl(path)
    assert pairs == [PreferencePair("p", "yes", "no"), PreferencePair("p", "yes", "no")]
    assert pairs[1].meta == {"task": "t"}
    bad = write_lines(tmp_path / "bad.jsonl", [
        json.dumps(good),
        json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),
        json.dumps({"prompt": "p", "chosen": "a"}),
        json.dumps({**good, "score": 1}),
        json.dumps({**good, "rejected": None}),
    ])
    with pytest.raises(ValueError) as info:
        load_dpo_jsonl(bad)
    message = str(info.value)
    assert "line 2: 'chosen' equals 'rejected'" in message
    assert "line 3: missing key(s) ['rejected']" in message
    assert "line 4: missing key(s) [], unexpected key(s) ['score']" in message
    assert "line 5: 'rejected' has type NoneType" in message


def test_writers_round_trip_and_refuse_invalid_items(tmp_path):
    conversations = [[{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "ünïcode"}],
                     {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
                      "meta": {"corrupted": True}}]
    path = tmp_path / "out" / "sft.jsonl"
    save_sft_jsonl(path, conversations)
    assert load_sft_jsonl(path) == [conversations[0], conversations[1]["messages"]]
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[1])["meta"] == {"corrupted": True}

    bad_path = tmp_path / "never.jsonl"
    with pytest.raises(ValueError, match=r"examples\[1\]: .*expected 'assistant'"):
        save_sft_jsonl(bad_path, [conversations[0], [{"role": "user", "content": "a"}]])
    with pytest.raises(ValueError, match=r"examples\[0\]: is not JSON-serialisable"):
        save_sft_jsonl(bad_path, [{"messages": conversations[0], "meta": {"s": {1, 2}}}])
    assert not bad_path.exists()

    pairs = [PreferencePair("p", "c", "r", {"task": "x"}), PreferencePair("q", "c2", "r2")]
    dpo_path = tmp_path / "dpo.jsonl"
    save_dpo_jsonl(dpo_path, pairs)
    loaded = load_dpo_jsonl(dpo_path)
    assert loaded == pairs and loaded[0].meta == {"task": "x"} and loaded[1].meta is None
    with pytest.raises(ValueError, match=r"pairs\[0\]: 'chosen' equals 'rejected'"):
        save_dpo_jsonl(tmp_path / "never2.jsonl", [PreferencePair("p", "same", "same")])
    with pytest.raises(ValueError, match="pairs is empty"):
        save_dpo_jsonl(tmp_path / "never3.jsonl", [])
    assert sorted(os.listdir(tmp_path)) == ["dpo.jsonl", "out"]       # no temporary files left behind


def test_rendering_helpers(char_chat):
    template = ChatTemplate(char_chat)
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]
    rendered = render_sft_examples(template, [conversation])
    assert rendered == [([U, 1, E, A, 4, E], [False, False, False, False, True, True])]
    with pytest.raises(ValueError, match=r"conversations\[0\]: messages\[0\]"):
        render_sft_examples(template, [[{"role": "assistant", "content": "x"}]])
    (pair,) = render_preference_pairs(template, [PreferencePair("ab", "x", "yz")])
    assert pair.prompt_ids == [U, 1, 2, E, A]
    assert pair.chosen_ids == [4, E] and pair.rejected_ids == [5, 6, E]
