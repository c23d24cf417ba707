"""Ids identical to Hugging Face ``tokenizers`` / ``transformers`` (the reference extra; skipped
when it is absent).

- GPT-2's real vocabulary: a ``tokenizer.json`` built by ``tokenizers`` from the published
  encoder.json + vocab.bpe, read by ``BPETokenizer.from_pretrained``.
- A Llama-3 style ``tokenizer.json`` (Split with Llama 3's regex, ByteLevel, ``ignore_merges``,
  a BOS post-processor, added tokens) trained by ``tokenizers`` itself.
- minillm-trained tokenizers written by ``save_pretrained`` and read by ``tokenizers`` and by
  ``transformers.AutoTokenizer`` (ids, decoding, the chat template).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer import BPETokenizer
from minillm.tokenizer.chat import ChatTemplate
from tests.tokenizer.corpus_text import load_corpus_text
from tests.tokenizer.gpt2_files import gpt2_files

tokenizers = pytest.importorskip("tokenizers", reason="the optional `tokenizers` package (reference extra) is "
                                                      "not installed")
transformers = pytest.importorskip("transformers", reason="the optional `transformers` package (reference extra) "
                                                          "is not installed")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TEXTS = [
    "Hello world", " Hello", "hello   world  ", "  leading and trailing  \n", "\n\n\n", "\t\t tabs\t\n \r\n",
    "I'm sure they'll say we've done it, it's John's and you'd've", "DON'T SHOUT, HE'S HERE", "don’t (curly)",
    "1 12 123 1234 12345 3.14159 -42 1,000,000 ²³ ٣٤٥ 0x1F", "$100.00 & 50% off!!! ... ?!? <<<>>> #hashtag @user",
    "🤖🚀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 emoji", "naïve café résumé Ελληνικά русский текст 日本語のテキスト 中文 한국어",
    "e\u0301 a\u0308 combining marks", "zero\u200bwidth\u00a0nbsp \u3000ideographic space", "\x00\x07\x1f control",
    "def f(x):\n    return x ** 2  # code\n", "a" * 300, " " * 17 + "x",
]


def _texts_with_shakespeare() -> list[str]:
    corpus = load_corpus_text()
    return TEXTS + [corpus[:20_000], corpus[50_000:52_000]]


# ---------------------------------------------------------------------------------------------
# GPT-2's real vocabulary
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    encoder, merges = gpt2_files()
    theirs = Tokenizer(models.BPE.from_file(str(encoder), str(merges)))
    theirs.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    theirs.decoder = decoders.ByteLevel()
    theirs.add_special_tokens(["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("gpt2")
    theirs.save(str(folder / "tokenizer.json"))
    return BPETokenizer.from_pretrained(folder), theirs


def test_gpt2_tokenizer_json_gives_hf_ids(gpt2_pair):
    ours, theirs = gpt2_pair
    assert ours.vocab_size == theirs.get_vocab_size() == 50257
    for text in _texts_with_shakespeare():
        expected = theirs.encode(text).ids
        assert ours.encode(text) == expected, text[:60]
        assert ours.decode(expected) == theirs.decode(expected, skip_special_tokens=False) == text
    special = "Hi<|endoftext|>there <|endoftext|>"
    assert ours.encode(special, allowed_special="all") == theirs.encode(special).ids


def test_gpt2_through_save_pretrained_into_transformers(gpt2_pair, tmp_path):
    ours, theirs = gpt2_pair
    ours.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS + ["x<|endoftext|>y"]:
        expected = ours.encode(text, allowed_special="all")
        assert auto(text)["input_ids"] == expected == theirs.encode(text).ids
        assert auto.decode(expected) == text
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == 50256


# ---------------------------------------------------------------------------------------------
# A Llama-3 style tokenizer.json made by `tokenizers`
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama3_pair(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    theirs = Tokenizer(models.BPE(ignore_merges=True))
    theirs.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    theirs.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    mixed = "naïve café 日本語のテキスト 中文文本 한국어 텍스트 русский 🤖🚀🎉👍🏽 12345678 I'M YOU'RE " * 20
    theirs.train_from_iterator([load_corpus_text()[:60_000], mixed], trainer)
    theirs.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bos = theirs.token_to_id("<|begin_of_text|>")
    theirs.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    folder = tmp_path_factory.mktemp("llama3")
    theirs.save(str(folder / "tokenizer.json"))
    return BPETokenizer.from_pretrained(folder), theirs


def test_llama3_style_tokenizer_json_gives_hf_ids(llama3_pair):
    ours, theirs = llama3_pair
    assert ours.pattern == LLAMA3_PATTERN and len(ours.merges) > 500
    for text in _texts_with_shakespeare():
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text[:60]
    text = "<|begin_of_text|>Hi there<|eot_id|>\n<|end_of_text|>"
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, add_special_tokens=False).ids
    # HF's post-processor adds the BOS token; minillm's encode never adds one
    assert theirs.encode("Hi").ids == [ours.special_tokens["<|begin_of_text|>"]] + ours.encode("Hi")


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_llama3_style_ids_on_random_unicode(llama3_pair, text):
    ours, theirs = llama3_pair
    assert ours.encode_ordinary(text) == theirs.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------
# minillm-trained tokenizers into Hugging Face
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gpt4", "gpt2", "llama3"])
def saved(request, tmp_path_factory):
    pattern = LLAMA3_PATTERN if request.param == "llama3" else request.param
    text = load_corpus_text()[:60_000] + "naïve 日本語 🤖🚀 12345 " * 30
    ours = BPETokenizer.train(text, vocab_size=700, pattern=pattern,
                              special_tokens=["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"])
    folder = tmp_path_factory.mktemp(f"minillm-{request.param}")
    ours.save_pretrained(folder)
    return ours, folder


def test_minillm_tokenizer_loads_in_tokenizers_and_transformers_with_the_same_ids(saved):
    ours, folder = saved
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert len(auto) == ours.vocab_size
    for text in _texts_with_shakespeare() + ["<|user|>hi<|end|><|assistant|>yes<|end|><|endoftext|>"]:
        expected = ours.encode(text, allowed_special="all")
        assert theirs.encode(text).ids == expected, text[:60]
        assert auto(text)["input_ids"] == expected, text[:60]
        assert auto.decode(expected) == ours.decode(expected)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_minillm_tokenizer_ids_in_hf_on_random_unicode(saved, text):
    ours, folder = saved
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert theirs.encode(text).ids == ours.encode(text, allowed_special="all")


def test_chat_template_renders_minillm_ids_in_transformers(saved):
    ours, folder = saved
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be or not?"},
                {"role": "assistant", "content": "To be."}, {"role": "user", "content": "Why, 2 + 2?"}]
    expected = ChatTemplate(ours).render_prompt(messages)
    rendered = auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert list(rendered) == expected
