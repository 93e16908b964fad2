"""The notebooks under notebooks/: committed without outputs, library calls only, and each one runs
from top to bottom against a demo store it builds for itself (real model, the test database)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from knowledgebase.db import Database
from knowledgebase.tools import insights

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "kb-test-python"
# what would mean a notebook reaches past the library into the database
RAW_DATABASE_ACCESS = re.compile(r"\bpsycopg\b|\.execute\(|\.connection\(|\b(SELECT|INSERT|UPDATE|DELETE)\s", re.I)
WHICH_PYTHON = "import sys; print(sys.executable)"
# something each notebook must show when it works
SHOWS = {
    "01_exploring_the_store": "5 commands, success rate 60%",
    "02_anatomy_of_a_query": "# Context from the knowledgebase",
}


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_there_are_notebooks_committed_without_outputs() -> None:
    assert len(NOTEBOOKS) >= 2
    for path in NOTEBOOKS:
        nbformat.validate(nbformat.read(path, as_version=4))
        for cell in _code_cells(path):
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


def test_notebooks_call_library_functions_and_no_sql() -> None:
    for path in NOTEBOOKS:
        source = "\n".join(cell.source for cell in _code_cells(path))
        assert not RAW_DATABASE_ACCESS.search(source), f"{path.name} reaches into the database directly"
        assert "from knowledgebase" in source


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that starts ipykernel with this interpreter, found before any other on JUPYTER_PATH
    (a user-level ``python3`` kernelspec could point at another Python)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_against_a_demo_store_it_builds(
    path: Path, db_url: str, venv_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_NOTEBOOK_DATABASE_URL", db_url)
    monkeypatch.setenv("KB_HOME", str(tmp_path / "home"))
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, new_code_cell(WHICH_PYTHON))
    client = NotebookClient(notebook, kernel_name=venv_kernel, timeout=600, resources={"metadata": {"path": tmp_path}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    assert notebook.cells[0].outputs[0]["text"].strip() == sys.executable  # the venv's interpreter ran it
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, f"{path.name} drew {len(figures)} figures"
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert SHOWS[path.stem] in shown
    with Database(db_url) as db:  # it built its store in the database it was given
        counts: Counter[tuple[str | None, str]] = Counter()
        for c in insights.store_counts(db):
            counts[(c.project, c.category)] += c.count
    assert counts[("kb-sample", "files")] >= 10 and counts[("kb-sample", "facts")] >= 4
