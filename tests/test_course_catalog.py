"""The catalog is the course's list of exercises: every key idea of MNC has one, each lives in
its notebook as nbgrader cells (a solution, a locked check with points and hidden tests), and
the seam can plug every function an exercise asks for into the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnc_teach.course.catalog import EXERCISES, exercise_named
from mnc_teach.course.seam import LIBRARY

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# issue 10: an exercise for each key idea, with the library function(s) it rebuilds
KEY_IDEAS = {
    "box_iou": ("box_iou",), "nms": ("nms",), "box_coding": ("encode_boxes", "decode_boxes"),
    "anchor_labels": ("label_anchors",), "proposals": ("generate_proposals",),
    "roi_warp": ("roi_warp",), "roi_sampling": ("sample_rois",),
    "mask_targets": ("mask_targets",), "mask_pooling": ("mask_pool",),
    "mask_labels": ("mask_level_labels",), "stage_bridge": ("refine_boxes",),
    "cascade_loss": ("cascade_loss", "boxes_for_warp"), "per_class_nms": ("batched_nms",),
    "mask_voting": ("mask_voting_weights",), "mask_iou": ("mask_iou",),
    "sds_matching": ("match_detections",), "average_precision": ("average_precision",),
}


def test_every_key_idea_has_an_exercise_and_the_seam_reaches_each_function() -> None:
    assert len(EXERCISES) >= 16
    assert {e.name: e.functions for e in EXERCISES} == KEY_IDEAS
    functions = [f for e in EXERCISES for f in e.functions]
    assert sorted(functions) == sorted(LIBRARY)  # each once, and nothing the seam cannot plug
    notebooks = [e.notebook for e in EXERCISES]
    assert notebooks == sorted(notebooks)  # in reading order
    with pytest.raises(ValueError, match="no exercise 'iou'.*box_iou"):
        exercise_named("iou")


def _cells_by_id(notebook: str) -> dict[str, dict]:
    cells = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text())["cells"]
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in cells
            if "nbgrader" in c.get("metadata", {})}


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.name for e in EXERCISES])
def test_each_exercise_is_a_solution_cell_and_a_locked_check_cell_with_hidden_tests(
    exercise,
) -> None:
    cells = _cells_by_id(exercise.notebook)
    solution, check = cells[exercise.solution_id], cells[exercise.check_id]
    assert solution["metadata"]["nbgrader"]["solution"] is True
    source = "".join(solution["source"])
    for function in exercise.functions:
        assert f"def my_{function}(" in source
    assert source.count("### BEGIN SOLUTION") == len(exercise.functions)
    meta = check["metadata"]["nbgrader"]
    assert meta["grade"] is True and meta["locked"] is True and meta["points"] > 0
    check_source = "".join(check["source"])
    call = f"{exercise.check.__name__}({', '.join('my_' + f for f in exercise.functions)}"
    visible, _, hidden = check_source.partition("### BEGIN HIDDEN TESTS")
    assert f"{exercise.check_id} = {call})" in visible
    assert call in hidden and "hidden=True" in hidden and "cases=" in hidden
    # no output in a grade cell: nbgrader would try to read it as the score
    last = hidden.partition("### END HIDDEN TESTS")[0].rstrip().splitlines()[-1]
    assert last.split("#")[0].rstrip().endswith(";"), f"end the hidden check with ';': {last}"


def _stub(*args, **kwargs):
    raise NotImplementedError()  # what nbgrader leaves in the student version


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.name for e in EXERCISES])
def test_a_stub_is_reported_in_one_line_and_later_cells_get_the_library(
    exercise, capsys: pytest.CaptureFixture[str]
) -> None:
    result = exercise.check(*[_stub] * len(exercise.functions))
    assert result.status == "missing" and not result
    assert capsys.readouterr().out == f"✗ my_{exercise.functions[0]} is not implemented yet\n"
    assert result.implementations() == result.library == {
        name: LIBRARY[name] for name in exercise.functions
    }
    assert capsys.readouterr().out == (
        f"using the library's {', '.join(exercise.functions)}: yours is not implemented yet\n"
    )


@pytest.mark.parametrize(
    "exercise", [e for e in EXERCISES if len(e.functions) > 1],
    ids=[e.name for e in EXERCISES if len(e.functions) > 1],
)
def test_with_one_of_two_functions_written_the_other_is_named(
    exercise, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = exercise.functions
    result = exercise.check(LIBRARY[first], _stub)
    assert result.status == "missing"
    assert capsys.readouterr().out == f"✗ my_{second} is not implemented yet\n"
