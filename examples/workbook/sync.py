"""Write each chapter's notebook (``NN_name.ipynb``) from its plain-text source (``NN_name.py``).

    python examples/workbook/sync.py           # rewrite every notebook from its .py
    python examples/workbook/sync.py --check   # exit 1 naming the notebooks that differ

The ``.py`` files are the source: they diff like code and run as plain scripts. Each is in the
"percent" format that Jupytext also reads: a line ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell, whose lines are comments (``# `` stripped). The notebooks are
written with no outputs and no execution counts, so they change only when their source does;
``tests/test_workbook.py`` checks that every notebook matches its ``.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELL_MARK = "# %%"
MARKDOWN_MARK = "# %% [markdown]"


def chapters(folder: Path = HERE) -> list[Path]:
    """The chapter sources, in reading order: ``NN_*.py``."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    return line[1:] if line.startswith("#") else line


def cells_of(source: str) -> list[dict]:
    """Split a percent-format script into notebook cells (nbformat 4 dictionaries, no outputs).

    Text before the first ``# %%`` (a module docstring, say) is not a cell: the notebook starts at
    the first marker. Blank lines at either end of a cell are dropped."""
    cells: list[dict] = []
    kind, lines = None, []

    def close():
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind is not None and lines:
            text = "\n".join(_uncomment(x) if kind == "markdown" else x for x in lines)
            body = [line + "\n" for line in text.split("\n")]
            body[-1] = body[-1][:-1]
            cell = {"cell_type": kind, "metadata": {}, "source": body}
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            cells.append(cell)

    for line in source.splitlines():
        if line.startswith(CELL_MARK):
            close()
            kind, lines = ("markdown" if line.startswith(MARKDOWN_MARK) else "code"), []
        elif kind is not None:
            lines.append(line)
    close()
    return cells


def notebook_of(source: str) -> str:
    """The ``.ipynb`` text for a percent-format script (stable: same source, same bytes)."""
    notebook = {
        "cells": cells_of(source),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for number, cell in enumerate(notebook["cells"]):
        cell["id"] = f"cell-{number:03d}"          # nbformat 4.5 wants ids; fixed ones keep diffs quiet
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which notebooks differ from their .py")
    args = parser.parse_args(argv)
    stale = []
    for script in chapters():
        target = script.with_suffix(".ipynb")
        text = notebook_of(script.read_text(encoding="utf-8"))
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{len(chapters())} chapters; {'stale' if args.check else 'written'}: {', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
