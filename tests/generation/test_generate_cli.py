"""``minillm generate | sample | chat`` on a tiny checkpoint; the chat loop fed from a list of lines."""
import io

import pytest

import minillm as mm
from minillm.cli import main
from minillm.commandline import load_config, unescape
from minillm.generation.chat import ChatSession, chat_loop
from minillm.generation.cli import ChatConfig, run_chat
from minillm.nn import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer
from minillm.train.checkpoint import save_checkpoint

CHARS = "abcdefghij \n"


def checkpoint(tmp_path, specials, name="model.safetensors", block_size=64):
    tok = CharTokenizer(CHARS, special_tokens=specials)
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2,
                               n_embd=16, init_std=0.5))
    path = tmp_path / name
    save_checkpoint(path, model=model, step=0, tokenizer=tok)
    return str(path), model.eval(), tok


@pytest.fixture
def plain(tmp_path):
    return checkpoint(tmp_path, ["<|endoftext|>"])


@pytest.fixture
def chat(tmp_path):
    return checkpoint(tmp_path, ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"], "chat.safetensors")


def test_generate_streams_the_seeded_continuation(plain, capsys):
    path, model, tok = plain
    assert main(["generate", "--checkpoint", path, "--prompt", "abc", "--max-new-tokens", "12",
                 "--seed", "3", "--top-k", "5", "--temperature", "0.9"]) == 0
    printed = capsys.readouterr().out
    ids = model.generate(tok.encode("abc"), 12, temperature=0.9, top_k=5, seed=3,
                         stop=[tok.special_tokens["<|endoftext|>"]])
    eot = tok.special_tokens["<|endoftext|>"]
    assert printed == "abc" + tok.decode([i for i in ids[3:] if i != eot]) + "\n"


def test_generate_stop_string_and_greedy(plain, capsys):
    path, model, tok = plain
    main(["generate", "--checkpoint", path, "--prompt", "ab", "--max-new-tokens", "30", "--temperature", "0"])
    free = capsys.readouterr().out[:-1]
    stop = free[5:7]
    main(["generate", "--checkpoint", path, "--prompt", "ab", "--max-new-tokens", "30", "--temperature", "0",
          "--stop", stop.replace("\n", "\\n"), "--no-cache"])
    assert capsys.readouterr().out == free[:free.find(stop, 2)] + "\n"


def test_sample_prints_independent_samples(plain, capsys):
    path, _, _ = plain
    assert main(["sample", "--checkpoint", path, "--prompt", "a", "--num-samples", "3", "--max-new-tokens",
                 "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    samples = [block.split("\n", 1)[1] for block in out.split("-" * 20 + " sample ")[1:]]
    assert len(samples) == 3 and len(set(samples)) > 1 and all(s.startswith("a") for s in samples)


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "generate.temperature=-1.0 is out of range; expected a value >= 0"),
    (["--top-p", "2"], "generate.top_p=2.0 is out of range; expected a value > 0 and <= 1"),
    (["--top-k", "0"], "generate.top_k=0 is out of range; expected a value >= 1"),
    (["--max-new-tokens", "-3"], "generate.max_new_tokens=-3 is out of range; expected a value >= 0"),
    (["--top-k", "many"], "generate.top_k='many' is not a valid int or none"),
    (["--prompt", "xyz"], "'x'"),                                # not in the character vocabulary
    (["--temprature", "0"], "unknown key 'temprature' (did you mean 'temperature'?)"),
])
def test_generate_bad_arguments(plain, capsys, argv, message):
    path, _, _ = plain
    assert main(["generate", "--checkpoint", path, "--prompt", "a", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unescape():
    assert unescape(r"\n\n") == "\n\n" and unescape(r"a\tb\\n") == "a\tb\\n"


def chat_args(path, *extra):
    return load_config(ChatConfig, ["--checkpoint", path, "--max-new-tokens", "8", "--seed", "0", *extra])


def test_chat_template_session_keeps_the_conversation(chat):
    path, model, tok = chat
    out = io.StringIO()
    assert run_chat(chat_args(path, "--system", "be chief"), lines=["abc\n", "", "def\n", "/exit\n", "ghi\n"],
                    out=out) == 0
    text = out.getvalue()
    assert text.startswith("minillm chat (chat template)")
    assert len(text.splitlines()) == 3                           # banner, two replies; /exit left
    # the same session by hand: the second prompt holds the first turn
    session = ChatSession(model, tok, system="be chief", max_new_tokens=8, seed=0, temperature=0.7)
    first = session.reply("abc", io.StringIO())
    assert session.messages[-1] == {"role": "assistant", "content": first}
    session.reply("def", io.StringIO())
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert text.splitlines()[1] == first
    session.reset()
    assert session.messages == [{"role": "system", "content": "be chief"}]


def test_chat_reset_and_plain_mode(plain):
    path, model, tok = plain
    out = io.StringIO()
    run_chat(chat_args(path), lines=["abc", "/reset", "abc"], out=out)
    lines = out.getvalue().split("\n")
    assert lines[0].startswith("minillm chat (plain continuation)") and "(new conversation)" in lines
    session = ChatSession(model, tok, max_new_tokens=8, seed=0, temperature=0.7)
    reply = session.reply("abc", io.StringIO())
    assert "\n\n" not in reply and session.transcript == tok.encode("abc\n" + reply + "\n")


def test_chat_drops_old_turns_to_fit_the_context(tmp_path):
    path, model, tok = checkpoint(tmp_path, ["<|user|>", "<|assistant|>", "<|end|>"], block_size=32)
    session = ChatSession(model, tok, max_new_tokens=8, seed=0, temperature=0.7)
    out = io.StringIO()
    for text in ("abcdefghij", "bcdefghij", "cdefghij"):
        session.reply(text, out)
    assert "dropped to fit the context" in out.getvalue()
    assert session.messages[-2] == {"role": "user", "content": "cdefghij"}
    assert len(session.template.render_prompt(session.messages[:-1])) <= 32 - 8


class InterruptingOut(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the second chunk of the first reply."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        if self.writes == 3:                                     # banner, chunk 1, chunk 2
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_one_reply_not_the_session(chat):
    path, model, tok = chat
    session = ChatSession(model, tok, max_new_tokens=8, seed=0, temperature=0.0)
    full = session.reply("abc", io.StringIO())
    assert len(full) >= 2                                        # precondition: the reply streams 2+ chunks
    session = ChatSession(model, tok, max_new_tokens=8, seed=0, temperature=0.0)
    out = InterruptingOut()
    assert chat_loop(session, ["abc", "def"], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[1] == full[0] + " [stopped]"                    # the reply was cut after its first chunk
    assert session.messages[1] == {"role": "assistant", "content": full[0]}
    assert len(lines) == 3 and [m["role"] for m in session.messages] == ["user", "assistant"] * 2


def test_chat_without_the_system_token_rejects_a_system_message(plain):
    _, model, tok = plain
    with pytest.raises(ValueError, match="system message needs a tokenizer with the <.system.> special token"):
        ChatSession(model, tok, system="hi")


def test_checkpoint_without_tokenizer(tmp_path, capsys):
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8))
    path = tmp_path / "bare.safetensors"
    save_checkpoint(path, model=model, step=0)
    assert main(["generate", "--checkpoint", str(path), "--prompt", "a"]) == 2
    assert "holds no tokenizer; pass --tokenizer PATH" in capsys.readouterr().err
    tok = CharTokenizer(CHARS)
    tok.save(str(tmp_path / "tok.json"))
    assert main(["generate", "--checkpoint", str(path), "--tokenizer", str(tmp_path / "tok.json"), "--prompt",
                 "ab", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("ab")


def test_a_bad_message_prints_an_error_and_the_session_goes_on(chat):
    _, model, tok = chat
    session = ChatSession(model, tok, max_new_tokens=4, seed=0, temperature=0.0)
    out = io.StringIO()
    chat_loop(session, ["xyz", "abc"], out)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("error: text contains the character 'x'")
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.messages[0]["content"] == "abc"
