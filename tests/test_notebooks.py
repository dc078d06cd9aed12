"""Every course notebook executes headless in fast mode (MNC_FAST=1), and is committed without
outputs. Notebooks 02-08 run on the shapes track; 06-08 also on the voc track, and 09 (the voc
track only) on a tiny VOC 2012 + SBD fixture, where it trains, stops, resumes, predicts and
evaluates. Without a GPU or without the data, notebook 09 stops at one cell with one message."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from voc_fixtures import build_voc_and_sbd

from mnc_teach.course.assignments import ASSIGNMENT
from mnc_teach.course.catalog import EXERCISES
from mnc_teach.course.exercise import GRADING_ENV
from mnc_teach.course.polling import PollingNotebookClient  # nbclient, minus a pyzmq stall

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
VOC_ONLY = {"09_voc_on_gpu"}  # notebooks of the voc track alone (no shapes version)
SHAPES_NOTEBOOKS = [nb for nb in NOTEBOOKS if nb.stem not in VOC_ONLY]
# the voc track in the tests: the notebooks that train, evaluate and explore (02-05 as on shapes)
VOC_NOTEBOOKS = [nb for nb in NOTEBOOKS if nb.name[:2] in {"06", "07", "08", "09"}]
VOC_NOTEBOOK = NOTEBOOK_DIR / "09_voc_on_gpu.ipynb"
STOP_ERROR = "StopNotebook"  # the exception notebook 09 raises to stop with a message only
CELL_TIMEOUT_S = 180  # fast-mode cells take seconds; a stuck kernel fails in minutes, not hours


@pytest.fixture(scope="module")
def shared_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for all notebooks, so that the shapes dataset is generated once (as for a
    learner)."""
    return tmp_path_factory.mktemp("nbdata")


@pytest.fixture(scope="module")
def voc_data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny VOC 2012 + SBD folder (tests/voc_fixtures.py), shared by the voc-track notebooks:
    07 and 08 load the model notebook 06 trained there, as for a learner. The runs next to it
    are removed afterwards: each VGG-16 checkpoint takes hundreds of MB."""
    root = build_voc_and_sbd(tmp_path_factory.mktemp("nbvoc") / "data")
    yield root
    shutil.rmtree(root.parent / "runs", ignore_errors=True)


def _execute(
    notebook: nbformat.NotebookNode,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    cwd: Path = NOTEBOOK_DIR,
    **env: str,
) -> None:
    """Run ``notebook`` (in place) in a fresh kernel in ``cwd``, with the environment ``env``
    plus headless matplotlib; CellExecutionError at the first cell that raised."""
    for variable in ("MNC_TRACK", "MNC_DEVICE", GRADING_ENV):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in {"MPLBACKEND": "Agg", **env}.items():
        monkeypatch.setenv(variable, value)
    client = PollingNotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        print(f"{name} ({env.get('MNC_TRACK', 'shapes')}): {time.perf_counter() - start:.1f} s")


def _errors(notebook: nbformat.NotebookNode) -> list[tuple[int, dict]]:
    return [
        (index, output)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]


def _steps(run_dir: Path) -> list[int]:
    """The steps recorded in a run folder's history.json."""
    return [entry["step"] for entry in json.loads((run_dir / "history.json").read_text())["steps"]]


def test_course_has_notebooks() -> None:
    assert [nb.name[:2] for nb in NOTEBOOKS][:2] == ["00", "01"], NOTEBOOKS
    assert VOC_NOTEBOOK in NOTEBOOKS and len(VOC_NOTEBOOKS) == 4, NOTEBOOKS


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
@pytest.mark.parametrize("path", SHAPES_NOTEBOOKS, ids=[nb.stem for nb in SHAPES_NOTEBOOKS])
def test_notebook_executes_in_fast_mode(
    path: Path, shared_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = nbformat.read(path, as_version=4)
    _execute(notebook, path.name, monkeypatch, MNC_FAST="1", MNC_DATA_ROOT=str(shared_data_root))
    assert not _errors(notebook)


@pytest.mark.notebook
@pytest.mark.parametrize("path", VOC_NOTEBOOKS, ids=[nb.stem for nb in VOC_NOTEBOOKS])
def test_notebook_executes_on_the_voc_track(
    path: Path, voc_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = nbformat.read(path, as_version=4)
    env = {"MNC_TRACK": "voc", "MNC_FAST": "1", "MNC_DATA_ROOT": str(voc_data_root)}
    _execute(notebook, path.name, monkeypatch, **env)
    assert not _errors(notebook)
    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    runs = voc_data_root.parent / "runs"
    if path.name.startswith("06"):  # the VGG-16 cascade trained on MNC's split of the fixture
        assert "3 training and 3 validation images" in text and "'voc-vgg16-paper'" in text
        steps = _steps(runs / "06_cascade_voc" / "main")
        assert steps and steps == list(range(1, len(steps) + 1))
    if path == VOC_NOTEBOOK:  # trained, stopped halfway, resumed, predicted and evaluated
        steps = _steps(runs / "09_voc")
        assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))
        assert f"stopped after step {len(steps) // 2} of {len(steps)}" in text
        assert "every step once: True" in text
        assert "this run, area AP [computed]" in text


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_student_version_runs_to_the_end_on_the_library(
    path: Path,
    course_folder: Path,
    shared_data_root: Path,
    voc_data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The student version nbgrader made (solutions are stubs): every check says in one line
    that its exercise is not done yet, later cells use the library's function with a note,
    and nothing else fails."""
    student = course_folder / "release" / ASSIGNMENT / path.name
    notebook = nbformat.read(student, as_version=4)
    env = {"MNC_FAST": "1", "MNC_DATA_ROOT": str(shared_data_root)}
    if path.stem in VOC_ONLY:
        env.update(MNC_TRACK="voc", MNC_DATA_ROOT=str(voc_data_root))
    _execute(notebook, f"{path.name} (student)", monkeypatch, cwd=student.parent, **env)
    assert not _errors(notebook)
    checks = {cell.metadata.get("nbgrader", {}).get("grade_id"): cell for cell in notebook.cells}
    for exercise in (e for e in EXERCISES if e.notebook == path.stem):
        reported = _text(checks[exercise.check_id]).strip().splitlines()
        assert reported == [f"✗ my_{exercise.functions[0]} is not implemented yet"], reported
        notes = "".join(_text(cell) for cell in notebook.cells)
        assert f"using the library's {', '.join(exercise.functions)}: yours is not" in notes


NO_GPU = {"MNC_FAST": "0", "MNC_DEVICE": "cpu"}  # the full notebook on a machine without a GPU
NO_DATA = {"MNC_FAST": "1"}  # fast mode, which never downloads, on an empty data folder


@pytest.mark.notebook
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (NO_GPU, ["needs a CUDA GPU", "DEVICE is 'cpu'", "pytorch.org", "download sbd --root"]),
        (NO_DATA, ["sbd and voc2012 missing", "download sbd --root", "download voc2012 --root"]),
    ],
    ids=["without-gpu", "without-data"],
)
def test_voc_notebook_says_what_is_missing_and_stops_cleanly(
    env: dict[str, str], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_root = tmp_path / "data"
    notebook = nbformat.read(VOC_NOTEBOOK, as_version=4)
    with pytest.raises(CellExecutionError) as stop:
        _execute(notebook, VOC_NOTEBOOK.name, monkeypatch, MNC_DATA_ROOT=str(data_root), **env)
    assert stop.value.ename == STOP_ERROR
    [(index, error)] = _errors(notebook)
    assert len(error.traceback) == 1, error.traceback  # the message alone: no frames, no code
    message = error.traceback[0]
    assert all(part in message for part in expected), message
    assert str(data_root.resolve()) in message and "Traceback" not in message
    later = [cell for cell in notebook.cells[index + 1 :] if cell.cell_type == "code"]
    assert later and all(cell.execution_count is None and not cell.outputs for cell in later)
    assert not data_root.exists()  # nothing was downloaded or written
