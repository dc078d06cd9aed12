"""The check of notebook 06 (cascade loss + detach_boxes) passes the library, fails planted
mistakes naming the case, reports a stub in one line, hides its inputs in hidden tests; the
notebook's solution cell passes it. Notebook 07's checks: test_course_checks_inference.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mnc_teach.cascade import cascade_loss
from mnc_teach.course.catalog import Exercise
from mnc_teach.course.checks_cascade import check_cascade_loss
from mnc_teach.course.exercise import ExerciseFailed
from mnc_teach.course.solutions import collect_solutions
from mnc_teach.roi_warp import boxes_for_warp

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = "06_cascade_end_to_end"
EXERCISES = (Exercise(NOTEBOOK, check_cascade_loss),)


def test_the_library_passes_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_cascade_loss(cascade_loss, boxes_for_warp).status == "passed"
    assert capsys.readouterr().out.count("✓") == 1


# ------------------------------------------------------------------ planted wrong solutions
def _stack(losses):
    return torch.stack(list(losses.values()))


WRONG = [  # (check, the learner's functions, what the diagnosis must say)
    (check_cascade_loss, (lambda losses: _stack(losses).mean(), boxes_for_warp),
     ["✗ 3-stage cascade: L1 + L2 + L3\n", "that is the mean"]),
    (check_cascade_loss, (lambda losses: sum(v.item() for v in losses.values()), boxes_for_warp),
     ["✗ 3-stage cascade: L1 + L2 + L3\n", "expected a 0-dim tensor, got float"]),
    (check_cascade_loss,
     (lambda losses: sum(v for k, v in losses.items() if k.startswith("loss_rpn")),
      boxes_for_warp), ["✗ 3-stage cascade: L1 + L2 + L3\n"]),
    (check_cascade_loss,
     (lambda losses: sum(v for k, v in losses.items() if k[-3:] not in ("_s4", "_s5")),
      boxes_for_warp), ["✗ 5-stage cascade: L4 and L5 count too\n"]),
    (check_cascade_loss, (lambda losses: _stack(losses).sum().detach(), boxes_for_warp),
     ["✗ 3-stage cascade", "cut from the graph"]),
    (check_cascade_loss, (cascade_loss, lambda rois, *, detach_boxes: rois.detach()),
     ["✗ detach_boxes=False: the gradient reaches the boxes (MNC)\n"]),
    (check_cascade_loss, (cascade_loss, lambda rois, *, detach_boxes: rois),
     ["✗ detach_boxes=True: no gradient reaches the boxes\n"]),
    (check_cascade_loss, (cascade_loss, lambda rois, *, detach_boxes: rois.round()),
     ["✗ detach_boxes=False", "the values must not change"]),
    (check_cascade_loss,  # right on a few RoIs, wrong on the model's many: the tiny MNC says so
     (cascade_loss, lambda rois, *, detach_boxes: rois.detach() if detach_boxes and len(rois) < 9
      else rois), ["✗ tiny MNC, detach_boxes=True: stages 2-5 leave the RPN's deltas alone\n"]),
]


@pytest.mark.parametrize(("check", "functions", "expected"), WRONG)
def test_a_planted_mistake_fails_naming_its_case(check, functions, expected, capsys) -> None:
    result = check(*functions)
    out = capsys.readouterr().out
    assert result.status == "wrong" and not result
    assert out.startswith("✗") and all(part in out for part in expected), out
    assert "hint: " in out


def test_a_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    with pytest.raises(ExerciseFailed, match="cascade_loss.*fails a hidden test"):
        check_cascade_loss(lambda losses: 0.0, boxes_for_warp, hidden=True)
    out = capsys.readouterr().out
    assert out.startswith("✗ 3-stage cascade: L1 + L2 + L3\n  hint: ") and out.count("\n") == 2


def test_the_notebooks_solution_cells_pass_and_their_stubs_are_missing(tmp_path: Path) -> None:
    found = collect_solutions(NOTEBOOKS, exercises=EXERCISES, quiet=True)
    assert not found.problems
    assert {name: r.status for name, r in found.results.items()} == {"cascade_loss": "passed"}
    assert set(found.implementations()) == {"cascade_loss", "boxes_for_warp"}
    region = re.compile(r"### BEGIN SOLUTION.*?### END SOLUTION", re.S)
    notebook = json.loads((NOTEBOOKS / f"{NOTEBOOK}.ipynb").read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        cell["source"] = region.sub("raise NotImplementedError()", "".join(cell["source"]))
    (tmp_path / f"{NOTEBOOK}.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    stubs = collect_solutions(tmp_path, exercises=EXERCISES, quiet=True)
    assert {r.status for r in stubs.results.values()} == {"missing"}
    assert stubs.implementations() == {}
