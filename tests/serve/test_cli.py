"""``minillm serve`` as a command: it starts and answers; bad arguments exit 2 with one clear line."""
import os
import re
import subprocess
import sys
import time

import pytest

from minillm.cli import main
from minillm.serve.cli import bind

from .helpers import tiny_checkpoint

pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_command_serves_until_stopped(tmp_path):
    path, _, _ = tiny_checkpoint(tmp_path / "small.safetensors")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "minillm", "serve", "--model", path, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.search(r"model 'small' .* at (http://127\.0\.0\.1:\d+)/", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        url = match.group(1)
        deadline = time.monotonic() + 20
        while True:
            try:
                models = httpx.get(url + "/v1/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert models["data"][0]["id"] == "small"
        reply = httpx.post(url + "/v1/completions", json={"prompt": "ab", "max_tokens": 3}, timeout=20).json()
        assert reply["usage"]["prompt_tokens"] == 2
    finally:
        process.terminate()
        process.wait(20)


def test_a_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_a_busy_port_exits_2(tmp_path, capsys):
    path, _, _ = tiny_checkpoint(tmp_path / "small.safetensors")
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", path, "--port", str(port)]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_a_bad_port_exits_2(tmp_path, capsys):
    assert main(["serve", "--model", "x", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_a_missing_relative_checkpoint_is_not_taken_for_a_hub_name(tmp_path, capsys, monkeypatch):
    """--model accepts hub names too, but a missing *.safetensors is a missing file: no download."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINILLM_HUB_URL", "http://127.0.0.1:9")        # would fail differently if tried
    assert main(["serve", "--model", "best.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "best.safetensors" in err and "hub" not in err
