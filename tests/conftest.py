"""Test configuration: ``pytest --backend numpy|strict|cupy`` picks the device tests run on.

- numpy (default): tensors on the host.
- strict: the "cuda" device is served by the strict CuPy-like emulation (minillm._strict),
  which refuses implicit host conversion and host/device mixing: it proves the GPU code path
  on a machine without a GPU.
- cupy: the real GPU; every test is skipped, with the reason, when CuPy or a GPU is missing.

Tests that should follow the chosen backend take the ``device`` fixture. Tests of the GPU code
path that should run even on the default backend take ``gpu_device``: the real GPU under
``--backend cupy``, the strict emulation otherwise. ``strict_device`` is the emulation itself
(tests of what its arrays refuse). ``--device-tests-only`` keeps just the tests that take
``device`` or ``gpu_device`` (the GPU check, benchmarks/gpu/check.sh: the others would only run
on the host again).
"""
import random

import numpy as np
import pytest

from minillm import backend


def pytest_addoption(parser):
    parser.addoption("--backend", action="store", default="numpy", choices=("numpy", "strict", "cupy"),
                     help="array backend for device-parametrised tests (default: numpy)")
    parser.addoption("--device-tests-only", action="store_true",
                     help="run only the tests that take the device or gpu_device fixture")


def pytest_configure(config):
    if config.getoption("--backend") == "strict":
        backend.use_strict_device(True)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--backend") == "cupy" and not backend.cuda_available():
        skip = pytest.mark.skip(reason="--backend cupy: CuPy is not installed or no NVIDIA GPU is "
                                       "visible on this machine")
        for item in items:
            item.add_marker(skip)
    if config.getoption("--device-tests-only"):
        keep = [item for item in items if {"device", "gpu_device"} & set(getattr(item, "fixturenames", ()))]
        dropped = [item for item in items if item not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def device(request) -> str:
    """The device that tensors in this test live on ("cpu", or "cuda" for strict/cupy)."""
    return "cpu" if request.config.getoption("--backend") == "numpy" else "cuda"


@pytest.fixture
def strict_device():
    """Switch the strict CuPy-like emulation on for one test (regardless of --backend)."""
    previous = backend.strict_device_enabled()
    backend.use_strict_device(True)
    yield "cuda"
    backend.use_strict_device(previous)


@pytest.fixture
def gpu_device(request):
    """The device that stands for a GPU: the real one under --backend cupy, else the strict
    emulation (switched on for this test only)."""
    if request.config.getoption("--backend") == "cupy":
        yield "cuda"
        return
    previous = backend.strict_device_enabled()
    backend.use_strict_device(True)
    yield "cuda"
    backend.use_strict_device(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(1234))


@pytest.fixture(scope="module")
def word_corpus(tmp_path_factory) -> str:
    """A small text file of 200 lines of 12 words drawn from 15 (seeded): a corpus for training
    runs of a few seconds through the command line (char tokenizer)."""
    words = "to be or not that is the question whether tis nobler in the mind to suffer".split()
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)), encoding="utf-8")
    return str(path)
