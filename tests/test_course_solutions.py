"""Collecting the learner's solutions from saved notebooks: right ones are used, stubs, wrong
ones and broken cells are reported in one line each and left to the library; a wrong one is
used only when the learner asks; and the course's own solution cells all run alone and pass."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mnc_teach.course.catalog import EXERCISES, exercise_named
from mnc_teach.course.solutions import collect_solutions, solution_source

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

RIGHT_IOU = """import torch
from mnc_teach.boxes import box_iou


def my_box_iou(boxes1, boxes2):
    return box_iou(boxes1, boxes2)
"""
WRONG_IOU = RIGHT_IOU.replace("return box_iou(boxes1, boxes2)", "return box_iou(boxes1, boxes2).T")
STUB_NMS = """def my_nms(boxes, scores, iou_threshold):
    # YOUR CODE HERE
    raise NotImplementedError()
"""


def _write_notebook(folder: Path, name: str, solutions: dict[str, str]) -> None:
    cells = [nbformat.v4.new_markdown_cell("# a learner's notebook")]
    for exercise, source in solutions.items():
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["nbgrader"] = {"grade_id": f"{exercise}_solution", "solution": True,
                                     "grade": False, "locked": False, "schema_version": 3}
        cells.append(cell)
    nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / f"{name}.ipynb")


def _two_exercises(tmp_path: Path, iou: str, nms: str) -> list:
    notebook = exercise_named("box_iou").notebook
    _write_notebook(tmp_path, notebook, {"box_iou": iou, "nms": nms})
    return [exercise_named("box_iou"), exercise_named("nms")]


def test_right_functions_are_used_and_stubs_left_to_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exercises = _two_exercises(tmp_path, RIGHT_IOU, STUB_NMS)
    solutions = collect_solutions(tmp_path, exercises=exercises)
    assert list(solutions.implementations()) == ["box_iou"]
    table = capsys.readouterr().out
    assert "box_iou" in table and "✓ yours" in table
    assert "✗ yours is not implemented yet: the library's" in table


def test_wrong_functions_are_used_only_when_asked(tmp_path: Path) -> None:
    exercises = _two_exercises(tmp_path, WRONG_IOU, STUB_NMS)
    solutions = collect_solutions(tmp_path, exercises=exercises, quiet=True)
    assert solutions.implementations() == {}
    assert "fails its check (3 x 2 pairs" in solutions.table()
    anyway = collect_solutions(tmp_path, exercises=exercises, use_mine_anyway=["box_iou"],
                               quiet=True)
    assert list(anyway.implementations()) == ["box_iou"]
    assert "used anyway (you asked for it)" in anyway.table()


def test_broken_cells_and_missing_notebooks_are_one_line_each(tmp_path: Path) -> None:
    exercises = _two_exercises(tmp_path, "def my_box_iou(:\n", "x = 1\n")
    solutions = collect_solutions(tmp_path, exercises=exercises, quiet=True)
    assert "the cell does not run (SyntaxError" in solutions.problems["box_iou"]
    assert solutions.problems["nms"] == (
        "the cell does not run (LookupError: the cell defines no my_nms)"
    )
    elsewhere = collect_solutions(tmp_path / "nowhere", exercises=exercises, quiet=True)
    assert elsewhere.problems["box_iou"].endswith(".ipynb is not here")
    assert elsewhere.implementations() == {}


def test_every_solution_cell_of_the_course_runs_alone_and_passes_its_check() -> None:
    """What notebook 06 relies on: each solution cell is self-contained and right."""
    failures = []
    for exercise in EXERCISES:
        notebook = json.loads((NOTEBOOK_DIR / f"{exercise.notebook}.ipynb").read_text())
        assert solution_source(notebook, exercise) is not None, exercise.name
    solutions = collect_solutions(NOTEBOOK_DIR, quiet=True)
    for exercise in EXERCISES:
        result = solutions.results.get(exercise.name)
        if result is None or not result:
            failures.append((exercise.name, solutions.problems.get(exercise.name),
                             result and result.diagnosis))
    assert not failures
    assert set(solutions.implementations()) == {f for e in EXERCISES for f in e.functions}
