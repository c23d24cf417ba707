"""Hugging Face tokenizer files: ``tokenizer.json`` (and GPT-2's ``vocab.json`` + ``merges.txt``).

Reading (``BPETokenizer.from_pretrained``)
------------------------------------------
A ``tokenizer.json`` is the serialized ``tokenizers.Tokenizer``: a normalizer, a pre-tokenizer,
a model, a post-processor, a decoder and the added tokens. minillm reads the byte-level BPE
ones, which are exactly its own tokenizer spelled differently:

- ``model``: ``{"type": "BPE", "vocab": {token string: id}, "merges": [...]}``. Token strings are
  bytes in GPT-2's printable alphabet (``formats.bytes_to_unicode``, the space byte is ``Ġ``).
  Merges are ``"left right"`` strings (older files) or ``["left", "right"]`` pairs (tokenizers
  >= 0.20). Merge k must make the token with id 256 + k and the 256 single bytes must have ids
  0..255 (GPT-2, Llama 3, Qwen2 and every tiktoken-derived vocabulary are laid out so): then the
  merge's rank is the id, minillm's convention, and HF's rule (merge the adjacent pair of lowest
  rank, leftmost on ties) is minillm's.
- ``pre_tokenizer``: ``ByteLevel`` with ``use_regex`` (its built-in pattern is GPT-2's, minillm's
  ``"gpt2"``), or ``Sequence[Split(Regex, behavior "Isolated"), ByteLevel(use_regex false)]``
  (Llama 3, Qwen2: the regex is minillm's split pattern), or ``ByteLevel(use_regex false)`` alone
  (no split). ``add_prefix_space`` must be false.
- ``added_tokens``: become minillm's special tokens with their ids (HF matches every added token
  in the text before splitting, longest first: ``encode(text, allowed_special="all")``).
- ``model.ignore_merges`` (Llama 3): a chunk that is itself a vocabulary token becomes that token
  without merging. For a vocabulary that BPE training made this changes nothing (merging a
  token's bytes gives the token); the reader checks that for every token and refuses otherwise.
- ``post_processor`` (``ByteLevel``, ``TemplateProcessing``, a ``Sequence`` of them) adds tokens
  such as Llama 3's ``<|begin_of_text|>`` only when HF is asked to add special tokens; minillm's
  ``encode`` never adds any, so its ids equal HF's ``encode(text, add_special_tokens=False)``.

Refused, with a ValueError naming the field: any other model type (WordPiece, Unigram...),
``byte_fallback``, BPE dropout, subword prefixes/suffixes, a normalizer (it would change the text
before encoding), any other pre-tokenizer or Split behaviour, ``add_prefix_space``, added tokens
with ``lstrip``/``rstrip``/``single_word``, truncation or padding, a decoder other than
``ByteLevel``, and vocabularies whose ids do not follow the merge order.

The file comes from elsewhere, so it is read with the size bound of every tokenizer file and
its JSON nesting bounded (``MAX_DEPTH``) before any of it is trusted.

Writing (``BPETokenizer.save_pretrained``)
------------------------------------------
``tokenizer.json`` in the form above (``ignore_merges`` false: plain merging, which is how minillm
encodes), the special tokens as added tokens, plus ``tokenizer_config.json`` (the class
``PreTrainedTokenizerFast``, the end-of-text token as ``eos_token``, no clean-up of spaces on
decode, and a chat template when the tokenizer has the chat markers) and
``special_tokens_map.json``, so that ``transformers.AutoTokenizer.from_pretrained(dir)`` and
``tokenizers.Tokenizer.from_file`` give minillm's ids.
"""
from __future__ import annotations

import json
import os

import regex

from ..fileio import atomic_write_text, refuse_to_overwrite
from .chat import CHAT_SPECIAL_TOKENS, END_TOKEN
from .formats import bytes_to_unicode, loads_file_json, read_file_bounded, read_gpt2_files
from .merge import apply_merges
from .patterns import GPT2_SPLIT_PATTERN
from .special import END_OF_TEXT

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GPT2_VOCAB_FILE, GPT2_MERGES_FILE = "vocab.json", "merges.txt"
# tokenizer.json nests at most 7 levels in the forms read here (a Sequence post-processor holding a
# TemplateProcessing: {post_processor: {processors: [{special_tokens: {name: {ids: [...]}}}]}});
# a little headroom, and far below what would exhaust the parser's stack.
MAX_DEPTH = 10
_SHAPE = "one object: model {type, vocab, merges}, pre_tokenizer, added_tokens, ..."
_POST_PROCESSORS = ("ByteLevel", "TemplateProcessing")


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class _Reader:
    """Parses one ``tokenizer.json`` (already loaded as ``data``); every fault names ``source``
    and the field."""

    def __init__(self, data: object, source: str):
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object (a tokenizers.Tokenizer), got {type(data).__name__}")
        self.data, self.source = data, source
        self.char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}

    def fail(self, field: str, value: object, expected: str) -> ValueError:
        return ValueError(f"{self.source}: {field} is {_describe(value)}; {expected}")

    def require(self, container: dict, key: str, field: str, types: type | tuple) -> object:
        if key not in container:
            raise ValueError(f"{self.source}: missing the field {field}")
        value = container[key]
        if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
            raise self.fail(field, value, f"expected {getattr(types, '__name__', types)}")
        return value

    # -- the parts -----------------------------------------------------------------------------
    def read(self) -> tuple[list[int], list[tuple[int, int]], dict[str, int], str | None]:
        """``(byte_ids, merges, special_tokens, pattern)`` for ``BPETokenizer``."""
        data = self.data
        for key in ("truncation", "padding"):
            if data.get(key) is not None:
                raise self.fail(key, data[key], "expected null: minillm's encode never truncates or pads (do it "
                                "on the ids)")
        if data.get("normalizer") is not None:
            raise self.fail("normalizer", data["normalizer"], "expected null: a normalizer changes the text before "
                            "it is encoded, which minillm's byte-level BPE does not reproduce")
        self.check_decoder(data.get("decoder"))
        self.check_post_processor(data.get("post_processor"), "post_processor")
        pattern = self.read_pre_tokenizer(data.get("pre_tokenizer"))
        model = self.require(data, "model", "model", dict)
        byte_ids, merges, ignore_merges, base_size, extra_vocab = self.read_model(model)
        special_tokens = self.read_added_tokens(data.get("added_tokens", []), base_size)
        for token, token_id in extra_vocab.items():
            if special_tokens.get(token) != token_id:
                raise ValueError(f"{self.source}: model.vocab holds {token!r} (id {token_id}), which no merge makes "
                                 "and which is not among added_tokens; expected the 256 bytes, one token per "
                                 "merge, and added tokens")
        if ignore_merges:
            self.check_merges_reach_every_token(byte_ids, merges)
        return byte_ids, merges, special_tokens, pattern

    def check_decoder(self, decoder: object) -> None:
        if decoder is None or (isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"):
            return
        raise self.fail("decoder", decoder, "expected null or {\"type\": \"ByteLevel\"} (byte-level BPE)")

    def check_post_processor(self, processor: object, field: str) -> None:
        if processor is None:
            return
        if not isinstance(processor, dict):
            raise self.fail(field, processor, "expected an object or null")
        kind = processor.get("type")
        if kind == "Sequence":
            steps = processor.get("processors")
            if not isinstance(steps, list):
                raise self.fail(f"{field}.processors", steps, "expected a list")
            for index, step in enumerate(steps):
                self.check_post_processor(step, f"{field}.processors[{index}]")
            return
        if kind not in _POST_PROCESSORS:
            raise self.fail(f"{field}.type", kind, f"expected one of {list(_POST_PROCESSORS)} or a Sequence of "
                            "them")

    def read_pre_tokenizer(self, pre: object) -> str | None:
        """The split regex (GPT-2's for ByteLevel use_regex), or None (no split)."""
        field = "pre_tokenizer"
        if not isinstance(pre, dict):
            raise self.fail(field, pre, "expected a ByteLevel pre-tokenizer (byte-level BPE), alone or after a "
                            "Split in a Sequence")
        if pre.get("type") == "ByteLevel":
            return GPT2_SPLIT_PATTERN if self.read_byte_level(pre, field) else None
        if pre.get("type") != "Sequence":
            raise self.fail(f"{field}.type", pre.get("type"), "expected 'ByteLevel' or 'Sequence' (Split, then "
                            "ByteLevel)")
        steps = pre.get("pretokenizers")
        if not isinstance(steps, list) or not steps:
            raise self.fail(f"{field}.pretokenizers", steps, "expected a non-empty list")
        last = f"{field}.pretokenizers[{len(steps) - 1}]"
        if not isinstance(steps[-1], dict) or steps[-1].get("type") != "ByteLevel":
            raise self.fail(last, steps[-1], "expected the last step to be ByteLevel (byte-level BPE)")
        uses_regex = self.read_byte_level(steps[-1], last)
        if len(steps) == 1:
            return GPT2_SPLIT_PATTERN if uses_regex else None
        if len(steps) > 2:
            raise self.fail(f"{field}.pretokenizers", steps, "expected at most two steps: Split, then ByteLevel")
        if uses_regex:
            raise self.fail(f"{last}.use_regex", True, "expected false after a Split (two regex splits in a row "
                            "are not supported)")
        return self.read_split(steps[0], f"{field}.pretokenizers[0]")

    def read_byte_level(self, step: dict, field: str) -> bool:
        if step.get("add_prefix_space", False):
            raise self.fail(f"{field}.add_prefix_space", step.get("add_prefix_space"),
                            "expected false: minillm encodes the text as given, without a space added in front")
        use_regex = step.get("use_regex", True)
        if not isinstance(use_regex, bool):
            raise self.fail(f"{field}.use_regex", use_regex, "expected true or false")
        return use_regex

    def read_split(self, split: object, field: str) -> str:
        if not isinstance(split, dict) or split.get("type") != "Split":
            raise self.fail(field, split, "expected {\"type\": \"Split\", \"pattern\": {\"Regex\": ...}, "
                            "\"behavior\": \"Isolated\"}")
        if split.get("behavior") != "Isolated":
            raise self.fail(f"{field}.behavior", split.get("behavior"), "expected 'Isolated' (each match is a chunk)")
        if split.get("invert", False):
            raise self.fail(f"{field}.invert", split.get("invert"), "expected false")
        pattern = split.get("pattern")
        if not isinstance(pattern, dict) or set(pattern) != {"Regex"} or not isinstance(pattern["Regex"], str):
            raise self.fail(f"{field}.pattern", pattern, "expected {\"Regex\": \"...\"} (a regex split pattern)")
        text = pattern["Regex"]
        try:
            regex.compile(text)
        except regex.error as exc:
            raise self.fail(f"{field}.pattern.Regex", text, f"expected a regex minillm can compile ({exc})") from None
        return text

    def read_model(self, model: dict) -> tuple[list[int], list[tuple[int, int]], bool, int, dict[str, int]]:
        kind = model.get("type")
        if kind != "BPE":
            raise self.fail("model.type", kind, "expected 'BPE' (minillm reads byte-level BPE tokenizers only)")
        if model.get("byte_fallback", False):
            raise self.fail("model.byte_fallback", model["byte_fallback"], "expected false: byte fallback is the "
                            "SentencePiece-style vocabulary (<0xNN> tokens), not byte-level BPE")
        if model.get("dropout") not in (None, 0, 0.0):
            raise self.fail("model.dropout", model["dropout"], "expected null: BPE dropout makes encoding random")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key) not in (None, ""):
                raise self.fail(f"model.{key}", model[key], "expected null or '' (byte-level BPE has none)")
        ignore_merges = model.get("ignore_merges", False)
        if not isinstance(ignore_merges, bool):
            raise self.fail("model.ignore_merges", ignore_merges, "expected true or false")
        vocab = self.require(model, "vocab", "model.vocab", dict)
        for token, token_id in vocab.items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise self.fail(f"model.vocab[{token!r}]", token_id, "expected an int id >= 0")
        byte_ids = []
        for byte, char in bytes_to_unicode().items():
            if char not in vocab:
                raise ValueError(f"{self.source}: model.vocab lacks the byte token {char!r} (byte {byte}); a "
                                 "byte-level BPE vocabulary holds all 256 bytes")
            byte_ids.append((byte, vocab[char]))
        byte_ids = [token_id for _, token_id in sorted(byte_ids)]
        if sorted(byte_ids) != list(range(256)):
            raise ValueError(f"{self.source}: model.vocab gives the 256 byte tokens the ids {sorted(byte_ids)[:3]}..."
                             f"{sorted(byte_ids)[-1]}; expected ids 0..255")
        merges = self.read_merges(self.require(model, "merges", "model.merges", list), vocab)
        base_size = 256 + len(merges)
        extra_vocab = {token: token_id for token, token_id in vocab.items() if token_id >= base_size}
        if len(vocab) - len(extra_vocab) != base_size:
            raise ValueError(f"{self.source}: model.vocab has {len(vocab) - len(extra_vocab)} tokens with ids below "
                             f"{base_size}; expected exactly the 256 bytes and the {len(merges)} merges (two tokens "
                             "share an id?)")
        return byte_ids, merges, ignore_merges, base_size, extra_vocab

    def read_merges(self, raw: list, vocab: dict[str, int]) -> list[tuple[int, int]]:
        merges: list[tuple[int, int]] = []
        for index, entry in enumerate(raw):
            field = f"model.merges[{index}]"
            if isinstance(entry, str):
                parts = entry.split(" ")
            elif isinstance(entry, list) and all(isinstance(part, str) for part in entry):
                parts = entry
            else:
                raise self.fail(field, entry, "expected \"left right\" or [\"left\", \"right\"]")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise self.fail(field, entry, "expected two tokens, \"left right\" or [\"left\", \"right\"]")
            ids = []
            for part in (parts[0], parts[1], parts[0] + parts[1]):
                if part not in vocab:
                    raise self.fail(field, entry, f"expected tokens of model.vocab, but {part!r} is not one")
                ids.append(vocab[part])
            left, right, merged = ids
            expected = 256 + len(merges)
            if merged != expected:
                raise self.fail(field, entry, f"it makes {parts[0] + parts[1]!r}, whose id is {merged}; expected "
                                f"{expected} (minillm needs the ids to follow the merge order: merge k makes id "
                                "256 + k)")
            if left >= expected or right >= expected:
                raise self.fail(field, entry, "expected it to join tokens made by earlier merges")
            merges.append((left, right))
        return merges

    def read_added_tokens(self, added: object, base_size: int) -> dict[str, int]:
        if not isinstance(added, list):
            raise self.fail("added_tokens", added, "expected a list")
        special_tokens: dict[str, int] = {}
        for index, entry in enumerate(added):
            field = f"added_tokens[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(field, entry, "expected an object {id, content, ...}")
            token_id = self.require(entry, "id", f"{field}.id", int)
            content = self.require(entry, "content", f"{field}.content", str)
            for flag in ("lstrip", "rstrip", "single_word"):
                if entry.get(flag, False):
                    raise self.fail(f"{field}.{flag}", entry[flag], f"expected false (the token {content!r} must "
                                    "match exactly, as minillm's special tokens do)")
            if not content:
                raise self.fail(f"{field}.content", content, "expected a non-empty string")
            if token_id < base_size:
                raise self.fail(f"{field}.id", token_id, f"the added token {content!r} has an id of a byte or merge "
                                f"token; expected an id >= {base_size} (minillm keeps added tokens apart)")
            if content in special_tokens:
                raise self.fail(f"{field}.content", content, "expected each added token once")
            special_tokens[content] = token_id
        return special_tokens

    def check_merges_reach_every_token(self, byte_ids: list[int], merges: list[tuple[int, int]]) -> None:
        """With ``ignore_merges`` HF takes a chunk that is a vocabulary token as that token; minillm
        merges it. The two agree iff merging each token's bytes gives the token back."""
        ranks = {pair: 256 + k for k, pair in enumerate(merges)}
        pieces = [[token_id] for token_id in byte_ids]          # pieces[id]: the byte ids of that token
        by_id: list[list[int]] = [[] for _ in range(256)]
        for byte, token_id in enumerate(byte_ids):
            by_id[token_id] = pieces[byte]
        for k, (left, right) in enumerate(merges):
            token_id = 256 + k
            by_id.append(by_id[left] + by_id[right])
            if apply_merges(list(by_id[token_id]), ranks) != [token_id]:
                raise ValueError(f"{self.source}: model.ignore_merges is true and the merges do not rebuild the token "
                                 f"with id {token_id} from its bytes; HF would encode that token whole and minillm "
                                 "would not, so the ids would differ")


def read_tokenizer_json(path: str) -> tuple[list[int], list[tuple[int, int]], dict[str, int], str | None]:
    """``(byte_ids, merges, special_tokens, pattern)`` from a Hugging Face ``tokenizer.json``."""
    source = f"tokenizer file {path!r}"
    data = loads_file_json(read_file_bounded(path, source), source, MAX_DEPTH, _SHAPE)
    return _Reader(data, source).read()


def read_pretrained(path: str | os.PathLike) -> tuple[list[int], list[tuple[int, int]], dict[str, int], str | None]:
    """``(byte_ids, merges, special_tokens, pattern)`` from a tokenizer directory (``tokenizer.json``,
    else ``vocab.json`` + ``merges.txt``) or a ``tokenizer.json`` file itself."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return read_tokenizer_json(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer path {path!r} does not exist; expected a Hugging Face tokenizer folder "
                                f"(with {TOKENIZER_FILE}, or {GPT2_VOCAB_FILE} + {GPT2_MERGES_FILE}) or a "
                                f"{TOKENIZER_FILE} file")
    tokenizer_json = os.path.join(path, TOKENIZER_FILE)
    if os.path.isfile(tokenizer_json):
        return read_tokenizer_json(tokenizer_json)
    vocab, merges = os.path.join(path, GPT2_VOCAB_FILE), os.path.join(path, GPT2_MERGES_FILE)
    if os.path.isfile(vocab) and os.path.isfile(merges):
        byte_ids, merge_list, special_tokens = read_gpt2_files(vocab, merges)
        return byte_ids, merge_list, special_tokens, GPT2_SPLIT_PATTERN
    raise FileNotFoundError(f"tokenizer folder {path!r} holds neither {TOKENIZER_FILE} nor {GPT2_VOCAB_FILE} + "
                            f"{GPT2_MERGES_FILE}; expected a Hugging Face tokenizer folder")


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def tokenizer_json(tokenizer) -> dict:
    """The ``tokenizers.Tokenizer`` serialization of a minillm ``BPETokenizer``."""
    to_char = bytes_to_unicode()
    spelled = ["".join(to_char[byte] for byte in token) for token in tokenizer._vocab]   # id -> byte-level string
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    if tokenizer.pattern is None:
        pre_tokenizer = byte_level
    elif tokenizer.pattern == GPT2_SPLIT_PATTERN:
        pre_tokenizer = {**byte_level, "use_regex": True}       # ByteLevel's built-in regex is GPT-2's
    else:
        split = {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    added = [{"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for token, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {text: token_id for token_id, text in enumerate(spelled)},
            "merges": [f"{spelled[left]} {spelled[right]}" for left, right in tokenizer.merges],
        },
    }


def chat_template_jinja() -> str:
    """minillm's chat format (``minillm.tokenizer.chat``) as the Jinja template transformers'
    ``apply_chat_template`` renders: each message is its role marker, its content, ``<|end|>``;
    ``add_generation_prompt`` appends ``<|assistant|>``."""
    return ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def tokenizer_config(tokenizer) -> tuple[dict, dict]:
    """``(tokenizer_config.json, special_tokens_map.json)`` contents for transformers."""
    specials = tokenizer.special_tokens
    token_map: dict = {}
    if END_OF_TEXT in specials:
        token_map["eos_token"] = END_OF_TEXT
    others = [token for token in sorted(specials, key=specials.get) if token != END_OF_TEXT]
    if others:
        token_map["additional_special_tokens"] = others
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,       # decode gives the bytes back, as minillm's decode does
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(token_id): {"content": token, "lstrip": False, "normalized": False,
                                                 "rstrip": False, "single_word": False, "special": True}
                                 for token, token_id in sorted(specials.items(), key=lambda item: item[1])},
        **token_map,
    }
    if all(token in specials for token in CHAT_SPECIAL_TOKENS):
        config["chat_template"] = chat_template_jinja()
        if "eos_token" not in config:
            config["eos_token"] = END_TOKEN
    return config, token_map


def save_pretrained(tokenizer, directory: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
    ``directory`` (created if missing; existing files of these names are kept unless
    ``overwrite``). Returns the paths written."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"save_pretrained: {directory!r} is a file; expected a folder to write "
                         f"{TOKENIZER_FILE} into")
    names = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
    paths = [os.path.join(directory, name) for name in names]
    refuse_to_overwrite(f"save_pretrained: {directory!r}", "tokenizer files",
                        [path for path in paths if os.path.lexists(path)], overwrite,
                        "pass overwrite=True to replace them, or choose another folder")
    os.makedirs(directory, exist_ok=True)
    config, token_map = tokenizer_config(tokenizer)
    contents = (tokenizer_json(tokenizer), config, token_map)
    for path, content in zip(paths, contents):
        atomic_write_text(path, json.dumps(content, ensure_ascii=False, indent=2) + "\n")
    return paths
