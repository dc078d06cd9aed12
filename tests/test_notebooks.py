"""Every course notebook executes headless in fast mode (MNC_FAST=1), and is committed without
outputs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from render_course import PollingNotebookClient  # noqa: E402  (nbclient, minus a pyzmq stall; see its docstring)

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 180  # fast-mode cells take seconds; a stuck kernel fails in minutes, not hours


@pytest.fixture(scope="module")
def shared_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for all notebooks, so that the shapes dataset is generated once (as for a
    learner)."""
    return tmp_path_factory.mktemp("nbdata")


def test_course_has_notebooks() -> None:
    assert [nb.name[:2] for nb in NOTEBOOKS][:2] == ["00", "01"], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    with_outputs = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not with_outputs, (
        f"{path.name}: cells {with_outputs} carry outputs; clear them before committing"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(
    path: Path, shared_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNC_FAST", "1")
    monkeypatch.setenv("MNC_DATA_ROOT", str(shared_data_root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = PollingNotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{path.name}: executed in {elapsed:.1f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
