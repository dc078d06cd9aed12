"""The nbgrader round trip (issue 10, acceptance 4): build the course folder, validate, grade
three fake submissions, and read the scores and the feedback.

* alice hands in the instructor's notebooks: full marks on every exercise of every notebook;
* bob's my_box_iou forgets to clamp: exactly that exercise's points are lost, and the feedback
  names the failing case without showing any hidden test;
* carol's my_nms cell crashes and her my_box_iou never returns: those two exercises score 0
  (the second after the cell time limit) and the others of the notebook are still graded.

Grading alice takes minutes (every notebook, fast mode): the module runs it once.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from mnc_teach.course.assignments import ASSIGNMENT, _nbgrader, build_course, grade_course
from mnc_teach.course.catalog import EXERCISES, exercise_named

pytestmark = pytest.mark.notebook  # executes notebooks (through nbgrader)

NB01 = "01_boxes_anchors_matching"
WRONG_IOU = '''import torch


def my_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, but without clamping the intersection's sides at 0."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.maximum(
        boxes1[:, None, :2], boxes2[None, :, :2]
    )
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-12)
'''
CRASHING_NMS = "raise RuntimeError('my cell is broken')\n"
ENDLESS_IOU = '''def my_box_iou(boxes1, boxes2):
    while True:
        pass
'''


def _replace_solution(folder: Path, exercise: str, source: str) -> None:
    """Put ``source`` in place of ``exercise``'s solution cell in a submission."""
    notebook_name = exercise_named(exercise).notebook
    path = folder / f"{notebook_name}.ipynb"
    notebook = json.loads(path.read_text())
    [cell] = [c for c in notebook["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade_id") == f"{exercise}_solution"]
    cell["source"] = source
    path.write_text(json.dumps(notebook, indent=1))


def _hidden_lines(notebook_path: Path) -> list[str]:
    """Every non-trivial line between BEGIN and END HIDDEN TESTS in a notebook."""
    text = "\n".join("".join(c["source"]) for c in json.loads(notebook_path.read_text())["cells"])
    blocks = re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if len(line) > 12]


def _scores(course: Path) -> dict[tuple[str, str], tuple[float, float]]:
    with open(course / "grades.csv", newline="") as f:
        return {(r["student"], r["cell"]): (float(r["score"]), float(r["max_score"]))
                for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    course = build_course(tmp_path_factory.mktemp("course") / "mnc-course")
    source = course / "source" / ASSIGNMENT
    for student in ("alice", "bob", "carol"):
        shutil.copytree(source, course / "submitted" / student / ASSIGNMENT)
    _replace_solution(course / "submitted" / "bob" / ASSIGNMENT, "box_iou", WRONG_IOU)
    _replace_solution(course / "submitted" / "carol" / ASSIGNMENT, "nms", CRASHING_NMS)
    _replace_solution(course / "submitted" / "carol" / ASSIGNMENT, "box_iou", ENDLESS_IOU)
    return course


def test_build_lays_out_the_course_and_the_student_version(course: Path) -> None:
    readme = (course / "README.md").read_text()
    assert "nbgrader release_assignment mnc" in readme and "| **all** |" in readme
    released = course / "release" / ASSIGNMENT / f"{NB01}.ipynb"
    text = released.read_text()
    assert "raise NotImplementedError()" in text and "BEGIN HIDDEN TESTS" not in text
    assert "### BEGIN SOLUTION" not in text
    with pytest.raises(FileExistsError, match="already holds files.*--force"):
        build_course(course)


def test_validate_fails_a_stub_and_a_wrong_answer_and_passes_a_right_one(course: Path) -> None:
    stub = course / "release" / ASSIGNMENT / f"{NB01}.ipynb"
    wrong = course / "submitted" / "bob" / ASSIGNMENT / f"{NB01}.ipynb"
    right = course / "source" / ASSIGNMENT / f"{NB01}.ipynb"
    results = {name: _nbgrader(["validate", str(path)], course)
               for name, path in {"stub": stub, "wrong": wrong, "right": right}.items()}
    outputs = {name: r.stdout + r.stderr for name, r in results.items()}
    assert "VALIDATION FAILED" in outputs["stub"] and "is not implemented yet" in outputs["stub"]
    assert "VALIDATION FAILED" in outputs["wrong"]
    assert "ExerciseFailed: exercise 'box_iou' fails its check: disjoint" in outputs["wrong"]
    assert "Success! Your notebook passes all the tests." in outputs["right"], outputs["right"]


def test_grading_alice_bob_and_carol(course: Path) -> None:
    start = time.perf_counter()
    [alice] = grade_course(course, students=["alice"])
    print(f"grading alice's whole course: {time.perf_counter() - start:.0f} s")
    [bob] = grade_course(course, students=["bob"], notebook=NB01)
    [carol] = grade_course(course, students=["carol"], notebook=NB01, cell_timeout_s=20)
    assert not (alice.error or bob.error or carol.error)

    scores = _scores(course)  # every student graded so far
    nb01 = [e.name for e in EXERCISES if e.notebook == NB01]
    for exercise in nb01:
        got, most = scores[("carol", f"{exercise}_check")]
        assert got == (0 if exercise in {"box_iou", "nms"} else most), exercise
    assert alice.score == alice.max_score > 0
    for exercise in EXERCISES:
        got, most = scores[("alice", exercise.check_id)]
        assert got == most > 0, exercise.name
    assert bob.max_score - bob.score == 2 and carol.score == carol.max_score - 4

    feedback = (course / "feedback" / "bob" / ASSIGNMENT / f"{NB01}.html").read_text()
    feedback = html.unescape(feedback)
    assert "ExerciseFailed: exercise 'box_iou' fails its check: disjoint" in feedback
    hidden = _hidden_lines(course / "source" / ASSIGNMENT / f"{NB01}.ipynb")
    assert hidden and not [line for line in hidden if line in feedback]
