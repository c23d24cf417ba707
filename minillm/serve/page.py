"""The chat page served at ``GET /``: one self-contained HTML document (inline CSS and JS, no
external assets, no build step).

It keeps the conversation in the page, sends it to ``/v1/chat/completions`` with
``"stream": true`` and appends each streamed delta to the reply as it arrives. "New chat" forgets
the conversation; the temperature control sets the request's ``temperature``. ``/?say=TEXT``
sends TEXT once the page has loaded, ``say`` repeated sends each after the previous reply, and
``temperature=T`` presets the control (a link that opens a conversation; the browser test uses
them). ``body[data-idle]`` is set once those messages are answered.
A reply that fails shows the server's error message in place of the reply.
"""
from __future__ import annotations

import html
import json

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>minillm chat</title>
<style>
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f4f1; color: #1d1d1b;
         display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; gap: 1em; align-items: center; padding: .6em 1em; background: #24323d; color: #fff; }
  header b { flex: 1; } header label { font-size: 13px; }
  main { flex: 1; overflow-y: auto; } #log { max-width: 46em; margin: 0 auto; padding: 1em; }
  .msg { margin: .6em 0; padding: .55em .8em; border-radius: 8px; white-space: pre-wrap; word-wrap: break-word; }
  .user { background: #dde8f0; margin-left: 4em; } .assistant { background: #fff; margin-right: 4em; }
  .error { background: #f6dada; } .who { font-size: 11px; color: #667; display: block; }
  form { display: flex; gap: .5em; width: 100%; max-width: 46em; margin: 0 auto; padding: .8em 1em; }
  textarea { flex: 1; font: inherit; padding: .4em; border-radius: 6px; border: 1px solid #aab; resize: vertical; }
  button { font: inherit; padding: .4em .9em; border-radius: 6px; border: 1px solid #567; background: #fff; }
</style></head>
<body>
<header><b>minillm &middot; <span id="model">__MODEL__</span></b>
  <label>temperature <input id="temperature" type="range" min="0" max="2" step="0.1" value="0.7">
    <output id="tvalue">0.7</output></label>
  <button id="new" type="button">New chat</button></header>
<main id="scroller"><div id="log"></div></main>
<form id="form"><textarea id="input" rows="2" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
  <button id="send" type="submit">Send</button></form>
<script>
const MODEL = __MODEL_JSON__;
let messages = [], busy = false, controller = null;
const log = document.getElementById("log"), input = document.getElementById("input");
const temperature = document.getElementById("temperature"), tvalue = document.getElementById("tvalue");
temperature.oninput = () => { tvalue.textContent = temperature.value; };

const scroller = document.getElementById("scroller");
function follow() { scroller.scrollTop = scroller.scrollHeight; }
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who"; who.textContent = role === "user" ? "you" : "model";
  const body = document.createElement("span");
  body.className = "text"; body.textContent = text;
  div.append(who, body); log.append(div); follow();
  return body;
}

async function send(text) {
  if (busy || !text.trim()) return;
  busy = true; document.getElementById("send").disabled = true;
  messages.push({role: "user", content: text});
  bubble("user", text);
  const out = bubble("assistant", "");
  out.parentElement.id = "reply-" + messages.length;
  let reply = "";
  controller = new AbortController();
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST", signal: controller.signal,
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: MODEL, messages: messages, stream: true,
                            temperature: parseFloat(temperature.value)})});
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      pending += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = pending.indexOf("\\n\\n")) >= 0) {
        const line = pending.slice(0, cut); pending = pending.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) { reply += choice.delta.content; out.textContent = reply; follow(); }
          if (choice.finish_reason) out.parentElement.dataset.finish = choice.finish_reason;
        }
      }
    }
    messages.push({role: "assistant", content: reply});
  } catch (error) {
    if (error.name !== "AbortError") {
      out.parentElement.classList.add("error"); out.textContent = "error: " + error.message;
      messages.pop();
    }
  } finally {
    busy = false; controller = null; document.getElementById("send").disabled = false;
    out.parentElement.dataset.done = "1";
  }
}

document.getElementById("form").onsubmit = (event) => {
  event.preventDefault(); const text = input.value; input.value = ""; send(text);
};
input.onkeydown = (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); document.getElementById("form").requestSubmit(); }
};
document.getElementById("new").onclick = () => {
  if (controller) controller.abort();
  messages = []; log.textContent = ""; input.focus();
};
const params = new URLSearchParams(location.search);
if (params.has("temperature")) { temperature.value = params.get("temperature"); tvalue.textContent = temperature.value; }
(async () => { for (const text of params.getAll("say")) await send(text); document.body.dataset.idle = "1"; })();
</script>
</body></html>
"""


def chat_page(model_id: str) -> str:
    """The page with the model's id filled in (escaped for HTML and for the script)."""
    return (PAGE.replace("__MODEL_JSON__", json.dumps(model_id).replace("</", "<\\/"))
            .replace("__MODEL__", html.escape(model_id)))
