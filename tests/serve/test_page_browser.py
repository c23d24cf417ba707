"""The chat page in a real browser: headless Chromium, driven over the DevTools pipe
(tests/serve/browser.py), types into the page of a live server, watches the reply stream in,
continues the conversation, starts a new chat.

Skipped, with the reason, when no Chromium is installed (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from .browser import BROWSER, Chromium  # noqa: E402
from .helpers import served  # noqa: E402

pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (apt-get install chromium)")

REPLY = "document.querySelectorAll('.assistant .text')"


def expected_reply(info, conversation) -> str:
    """The model's greedy reply to the conversation (what temperature 0 must show)."""
    template = info.state.template
    stops = sorted(set(template.marker_ids) | {info.tok.special_tokens["<|endoftext|>"]})
    prompt = template.render_prompt(conversation)
    ids = info.model.generate(prompt, info.model.config.block_size - len(prompt), temperature=0.0,
                              stop=stops)[len(prompt):]
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return info.tok.decode(ids[:cut])


def send(page, text: str) -> None:
    page.evaluate(f"document.getElementById('input').value = {json.dumps(text)}; "
                  "document.getElementById('send').click()")


def wait_reply(page, index: int) -> str:
    page.wait_for(f"{REPLY}.length > {index} && {REPLY}[{index}].parentElement.dataset.done === '1'")
    assert page.evaluate(f"{REPLY}[{index}].parentElement.classList.contains('error')") is False
    return page.evaluate(f"{REPLY}[{index}].textContent")


def test_the_page_streams_keeps_the_conversation_and_starts_over(tmp_path):
    server, info = served(tmp_path)
    batch = info.state.scheduler.batch
    real_step = batch.step

    def slow_step(tokens):                                       # ~30 ms a token: the stream is visible
        time.sleep(0.03)
        return real_step(tokens)

    batch.step = slow_step
    with server, Chromium() as browser:
        page = browser.open(server.url + "/")
        page.wait_for("location.protocol === 'http:' && document.readyState === 'complete'")
        assert page.evaluate("document.getElementById('model').textContent") == "tiny"
        page.evaluate("const t = document.getElementById('temperature'); t.value = '0'; "
                      "t.dispatchEvent(new Event('input'))")
        assert page.evaluate("document.getElementById('tvalue').textContent") == "0"

        send(page, "hello there")
        seen = []                                                # the reply's text as it grows
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = page.evaluate(f"{REPLY}.length ? [{REPLY}[0].textContent, "
                                  f"{REPLY}[0].parentElement.dataset.done || ''] : null")
            if state and (not seen or seen[-1] != state[0]):
                seen.append(state[0])
            if state and state[1] == "1":
                break
            time.sleep(0.01)
        first = wait_reply(page, 0)
        conversation = [{"role": "user", "content": "hello there"}]
        assert first == expected_reply(info, conversation) and len(first) >= 4
        partial = [text for text in seen if text and text != first]
        assert len(partial) >= 2, f"the reply did not stream: the page showed {seen}"
        assert all(first.startswith(text) for text in partial)

        send(page, "and now")                                    # the page sends the whole conversation
        second = wait_reply(page, 1)
        conversation += [{"role": "assistant", "content": first}, {"role": "user", "content": "and now"}]
        assert second == expected_reply(info, conversation)

        page.evaluate("document.getElementById('new').click()")
        assert page.evaluate("document.querySelectorAll('.msg').length") == 0
        send(page, "hello there")
        assert wait_reply(page, 0) == first                      # a fresh conversation: the first reply again
        page.screenshot(str(tmp_path / "page.png"))
    batch.step = real_step
    assert (tmp_path / "page.png").stat().st_size > 1000
