"""``minillm serve`` live on 127.0.0.1 (random port), driven by the real ``openai`` client and httpx."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

from .helpers import served  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server, info = served(tmp_path_factory.mktemp("serve"), max_batch=8, max_queue=32)
    with server:
        info.url = server.url
        info.client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield info


def greedy_text(live, prompt_ids, max_tokens, stop_ids):
    """What the model itself produces greedily (model.generate), cut at the first stop id."""
    ids = live.model.generate(prompt_ids, max_tokens, temperature=0.0, stop=list(stop_ids))[len(prompt_ids):]
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return live.tok.decode(ids[:cut]), ids


def health(live) -> dict:
    response = httpx.get(live.url + "/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_model_list(live):
    models = live.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert live.client.models.retrieve("tiny").id == "tiny"


def test_completion_is_the_models_greedy_continuation_with_usage(live):
    eot = live.tok.special_tokens["<|endoftext|>"]
    prompt = live.tok.encode("hello wor")
    expected, ids = greedy_text(live, prompt, 12, {eot})
    result = live.client.completions.create(model="tiny", prompt="hello wor", max_tokens=12, temperature=0)
    choice = result.choices[0]
    assert choice.text == expected
    assert choice.finish_reason == ("stop" if eot in ids else "length")
    assert result.usage.prompt_tokens == len(prompt)
    assert result.usage.completion_tokens == len(ids) and result.usage.total_tokens == len(prompt) + len(ids)


def test_streamed_chat_equals_the_non_streamed_reply(live):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]
    whole = live.client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    chunks = list(live.client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                                      stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1 or whole.usage.completion_tokens < 3
    # the reply is what the chat template and the model give
    template_ids = live.state.template.render_prompt(messages)
    expected, _ = greedy_text(live, template_ids, 20, set(live.state.template.marker_ids) |
                              {live.tok.special_tokens["<|endoftext|>"]})
    assert text == expected


def test_stop_strings_cut_the_text(live):
    free = live.client.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0,
                                          seed=1).choices[0].text
    assert len(free) >= 8, f"the fixture model's greedy text is too short for this test: {free!r}"
    stop = free[4:6]
    cut = live.client.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0, stop=[stop, "@@"])
    assert cut.choices[0].text == free[:free.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeds_repeat_alone_and_batched_with_others(live):
    def sample(seed):
        return live.client.completions.create(model="tiny", prompt="abc", max_tokens=24, temperature=1.0,
                                              seed=seed).choices[0].text

    alone = sample(7)
    assert sample(7) == alone
    assert any(sample(s) != alone for s in (8, 9, 10))           # the seed matters
    results = {}

    def run(i):
        results[i] = sample(7 if i % 2 == 0 else 100 + i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in (0, 2, 4)] == [alone] * 3
    two = live.client.completions.create(model="tiny", prompt="abc", max_tokens=24, temperature=1.0, seed=7, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == alone


def test_eight_concurrent_streams_complete_and_decode_together(live):
    before = health(live)
    texts, errors = {}, []
    barrier = threading.Barrier(8)

    def run(i):
        try:
            barrier.wait(10)
            stream = live.client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"request {'abcdefgh'[i]}"}],
                max_tokens=30, temperature=0.8, seed=i, stream=True)
            texts[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as error:      # noqa: BLE001 (reported below)
            errors.append(repr(error))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(texts) == list(range(8))
    after = health(live)
    tokens, steps = after["tokens_generated"] - before["tokens_generated"], after["steps"] - before["steps"]
    assert steps < tokens, f"{tokens} tokens in {steps} steps: the requests were not decoded together"
    assert after["running"] == 0 and after["waiting"] == 0


BAD_REQUESTS = [
    # (what, path, raw body, status, param)
    ("malformed JSON", "/v1/completions", b'{"prompt": "ab",', 400, None),
    ("not an object", "/v1/completions", b'["ab"]', 400, None),
    ("missing prompt", "/v1/completions", b'{"max_tokens": 3}', 400, "prompt"),
    ("prompt of the wrong type", "/v1/completions", b'{"prompt": 12}', 400, "prompt"),
    ("negative max_tokens", "/v1/completions", b'{"prompt": "ab", "max_tokens": -5}', 400, "max_tokens"),
    ("max_tokens as a string", "/v1/completions", b'{"prompt": "ab", "max_tokens": "10"}', 400, "max_tokens"),
    ("absurd max_tokens", "/v1/completions", b'{"prompt": "ab", "max_tokens": 1000000000}', 400, "max_tokens"),
    ("prompt longer than the context", "/v1/completions", b'{"prompt": "' + b"a" * 200 + b'"}', 400, "prompt"),
    ("temperature of the wrong type", "/v1/completions", b'{"prompt": "ab", "temperature": "hot"}', 400, "temperature"),
    ("temperature out of range", "/v1/completions", b'{"prompt": "ab", "temperature": 7}', 400, "temperature"),
    ("top_p out of range", "/v1/completions", b'{"prompt": "ab", "top_p": 0}', 400, "top_p"),
    ("five stop strings", "/v1/completions", b'{"prompt": "ab", "stop": ["a","b","c","d","e"]}', 400, "stop"),
    ("negative seed", "/v1/completions", b'{"prompt": "ab", "seed": -1}', 400, "seed"),
    ("n = 0", "/v1/completions", b'{"prompt": "ab", "n": 0}', 400, "n"),
    ("more sequences than the queue holds", "/v1/completions",
     b'{"prompt": ["ab", "ab", "ab", "ab", "ab", "ab", "ab", "ab"], "n": 8}', 400, "n"),
    ("stream not a bool", "/v1/completions", b'{"prompt": "ab", "stream": "yes"}', 400, "stream"),
    ("a character the tokenizer lacks", "/v1/completions", b'{"prompt": "ABC"}', 400, "prompt"),
    ("unknown model", "/v1/completions", b'{"model": "gpt-4", "prompt": "ab"}', 404, "model"),
    ("messages of the wrong type", "/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("bad role", "/v1/chat/completions", b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "messages[0].role"),
    ("conversation ending with the assistant", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', 400, "messages"),
    ("chat too long for the context", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "' + b"ab " * 40 + b'"}]}', 400, "messages"),
    ("chat max_tokens past the context", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "ab"}], "max_tokens": 95}', 400, "max_tokens"),
    ("tools", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "ab"}], "tools": [{"type": "function"}]}', 400, "tools"),
]


@pytest.mark.parametrize("what,path,raw,status,param", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_an_openai_error_and_the_server_stays_up(live, what, path, raw, status, param):
    response = httpx.post(live.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert "Traceback" not in response.text
    if param:
        assert param.split("[")[0].split(".")[0] in error["message"] or param in error["message"]
    assert health(live)["status"] == "ok"
    ok = live.client.completions.create(model="tiny", prompt="ab", max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_unknown_routes_and_methods_are_json_errors(live):
    assert httpx.get(live.url + "/v1/nothing", timeout=10).json()["error"]["code"] == "not_found"
    response = httpx.get(live.url + "/v1/completions", timeout=10)
    assert response.status_code == 405 and "GET" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        live.client.completions.create(model="other", prompt="ab", max_tokens=2)


def test_full_queue_answers_429(live):
    """max_queue 1 for this test and slow steps: of 11 requests at once, the ones that find a request
    waiting already get 429 (how many depends on how arrivals fall between steps), the others run."""
    scheduler, batch = live.state.scheduler, live.state.scheduler.batch
    saved, real_step = scheduler.max_queue, batch.step

    def slow_step(tokens):                                       # 30 tokens take > 1 s: all 11 arrive first
        time.sleep(0.04)
        return real_step(tokens)

    scheduler.max_queue, batch.step = 1, slow_step
    statuses = []

    def run():
        response = httpx.post(live.url + "/v1/completions", timeout=60,
                              json={"prompt": "a", "max_tokens": 30, "temperature": 1.0, "seed": 3})
        statuses.append((response.status_code, response.json()))

    try:
        threads = [threading.Thread(target=run) for _ in range(11)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        scheduler.max_queue, batch.step = saved, real_step
    codes = sorted(code for code, _ in statuses)
    assert len(codes) == 11 and set(codes) == {200, 429}, codes
    refused = [body for code, body in statuses if code == 429]
    assert all(body["error"]["type"] == "rate_limit_error" and "busy" in body["error"]["message"] for body in refused)


def tokens_generated_while(live, leave) -> int:
    """Slow every decode step to ~40 ms (90 tokens would take ~4 s), run ``leave()`` (a client
    that goes away mid-generation), wait for the running batch to empty: the tokens generated
    meanwhile."""
    batch = live.state.scheduler.batch
    real_step = batch.step

    def slow_step(tokens):
        time.sleep(0.04)
        return real_step(tokens)

    batch.step = slow_step
    try:
        before = health(live)["tokens_generated"]
        leave()
        deadline = time.monotonic() + 10
        while health(live)["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        generated = health(live)["tokens_generated"] - before
    finally:
        batch.step = real_step
    assert health(live)["running"] == 0
    return generated


def test_a_client_that_disconnects_stops_its_generation(live):
    request = {"prompt": "a", "max_tokens": 90, "temperature": 1.0, "seed": 3}
    premise = httpx.post(live.url + "/v1/completions", json=request, timeout=30).json()
    assert premise["usage"]["completion_tokens"] == 90            # uninterrupted, this request runs 90 tokens

    def leave():                                                 # read the first chunk, then close the stream
        with httpx.stream("POST", live.url + "/v1/completions", timeout=30,
                          json={**request, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))

    generated = tokens_generated_while(live, leave)
    assert generated < 60, f"{generated} tokens generated after the client left"


def test_the_page_is_self_contained(live):
    response = httpx.get(live.url + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "tiny" in page and "/v1/chat/completions" in page and "New chat" in page and "temperature" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page


def test_a_non_streamed_client_that_disconnects_stops_its_generation(live):
    def leave():
        with pytest.raises(httpx.ReadTimeout):                   # the client gives up and closes the connection
            httpx.post(live.url + "/v1/completions", timeout=0.5,
                       json={"prompt": "a", "max_tokens": 90, "temperature": 1.0, "seed": 3})

    generated = tokens_generated_while(live, leave)
    assert generated < 60, f"{generated} tokens generated after the client left"
