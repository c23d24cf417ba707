"""The workbook (``examples/workbook``): every notebook is its plain-text source converted, with no
outputs; and (marker ``workbook``, run by ``.ci/run`` as its second step) every chapter runs top to
bottom in a fresh Jupyter kernel at the small size."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

WORKBOOK = Path(__file__).resolve().parents[1] / "examples" / "workbook"
CHAPTERS = [
    "01_data", "02_tokenization", "03_embeddings_and_positions", "04_attention", "05_the_block",
    "06_pretraining", "07_generation", "08_instruction_tuning", "09_preference_alignment",
    "10_evaluation_and_deployment",
]


def _sync():
    spec = importlib.util.spec_from_file_location("workbook_sync", WORKBOOK / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_percent_format_becomes_markdown_and_code_cells():
    source = ('"""not a cell"""\n# %% [markdown]\n# # Title\n#\n# Some $x^2$ math.\n\n'
              "# %%\nx = 1\n\n\n# %%\n# a comment stays a comment\ny = x + 1\n")
    cells = _sync().cells_of(source)
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code"]
    assert "".join(cells[0]["source"]) == "# Title\n\nSome $x^2$ math."
    assert "".join(cells[1]["source"]) == "x = 1"
    assert "".join(cells[2]["source"]) == "# a comment stays a comment\ny = x + 1"
    assert cells[1]["outputs"] == [] and cells[1]["execution_count"] is None


def test_there_are_ten_chapters_in_reading_order():
    assert [p.stem for p in _sync().chapters()] == CHAPTERS


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_notebook_is_its_source_converted_with_no_outputs(chapter):
    script, notebook = WORKBOOK / f"{chapter}.py", WORKBOOK / f"{chapter}.ipynb"
    assert notebook.is_file(), f"{notebook.name} is missing: run python examples/workbook/sync.py"
    written = notebook.read_text(encoding="utf-8")
    assert written == _sync().notebook_of(script.read_text(encoding="utf-8")), \
        f"{notebook.name} differs from {script.name}: run python examples/workbook/sync.py"
    cells = json.loads(written)["cells"]
    assert any(c["cell_type"] == "markdown" for c in cells) and any(c["cell_type"] == "code" for c in cells)
    assert all(not c.get("outputs") for c in cells)


@pytest.mark.workbook
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_chapter_runs_top_to_bottom_in_a_fresh_kernel(chapter, monkeypatch):
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(module, reason=f"running the workbook needs {module}: pip install -e '.[workbook]'")
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MINILLM_WORKBOOK_SIZE", "small")      # the size knob every chapter reads
    notebook = nbformat.read(WORKBOOK / f"{chapter}.ipynb", as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(WORKBOOK)}}).execute()
    print(f"{chapter}: {time.perf_counter() - started:.1f} s")
