"""The one rule of the checks: interactively a failure reports and the notebook goes on with the
library's function; under nbgrader, and in hidden tests, it raises; hidden cases never print
their inputs."""

from __future__ import annotations

import pytest
import torch

from mnc_teach.boxes import box_iou
from mnc_teach.course import exercise
from mnc_teach.course.exercise import (
    GRADING_ENV,
    Case,
    ExerciseFailed,
    boxes_tensor,
    call_learner,
    exercise_check,
    passed,
    report_failure,
)

SECRET = 12345.0  # an input value a hidden case must never print


def _cases() -> list[Case]:
    return [Case("identical boxes", (boxes_tensor([[0, 0, 10, 10]]),) * 2, "IoU with itself is 1")]


@exercise_check("toy_iou", box_iou=box_iou)
def check_toy(fn, *, cases=None) -> bool:
    for case in _cases() if cases is None else cases:
        ok, got = call_learner(fn, case, fn_name="my_box_iou")
        if not ok:
            return False
        if not torch.allclose(got, box_iou(*case.args)):
            return report_failure(case, [f"inputs {case.args[0].tolist()}", f"got {got.tolist()}"])
    return passed("my_box_iou is right")


def _stub(boxes1, boxes2):
    raise NotImplementedError()


def _wrong(boxes1, boxes2):
    return box_iou(boxes1, boxes2) * 0.5


def _crash(boxes1, boxes2):
    raise IndexError("index 7 is out of bounds")


@pytest.fixture(autouse=True)
def interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GRADING_ENV, raising=False)


def test_passed_missing_and_wrong_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    right = check_toy(box_iou)
    assert right and right.status == "passed" and "✓ my_box_iou is right" in right.diagnosis
    missing = check_toy(_stub)
    assert not missing and missing.status == "missing"
    assert capsys.readouterr().out.splitlines()[-1] == "✗ my_box_iou is not implemented yet"
    wrong = check_toy(_wrong)
    assert wrong.status == "wrong" and wrong.first_failure == "identical boxes"
    out = capsys.readouterr().out
    assert "got [[0.5]]" in out and "hint: IoU with itself is 1" in out
    crash = check_toy(_crash)
    assert crash.status == "wrong" and "raised IndexError: index 7" in crash.diagnosis


def test_later_cells_get_the_library_with_a_one_line_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check_toy(box_iou).choose() is box_iou
    capsys.readouterr()
    assert check_toy(_stub, quiet=True).choose() is box_iou
    assert capsys.readouterr().out == (
        "using the library's box_iou: yours is not implemented yet\n"
    )
    wrong = check_toy(_wrong, quiet=True)
    assert wrong.choose() is box_iou
    assert capsys.readouterr().out == "using the library's box_iou: yours fails its check\n"
    assert wrong.choose(use_mine_anyway=True) is _wrong  # only when asked
    assert "although it fails its check" in capsys.readouterr().out
    assert check_toy(_stub, quiet=True).choose(use_mine_anyway=True) is box_iou  # nothing to use


def test_under_nbgrader_a_failed_or_missing_exercise_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(GRADING_ENV, "validate")
    assert check_toy(box_iou)
    with pytest.raises(ExerciseFailed, match="'toy_iou' is not done yet: my_box_iou is not impl"):
        check_toy(_stub)
    with pytest.raises(ExerciseFailed, match="'toy_iou' fails its check: identical boxes") as err:
        check_toy(_wrong)
    assert err.value._render_traceback_() == [f"ExerciseFailed: {err.value}"]  # no code shown
    assert "got [[0.5]]" in capsys.readouterr().out  # the diagnosis is printed first
    assert not check_toy(_wrong, strict=False)  # collecting solutions never raises


def test_hidden_cases_raise_and_print_no_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    secret = [Case("a far box", (boxes_tensor([[0, 0, SECRET, 1]]),) * 2, "think of large boxes")]
    assert check_toy(box_iou, cases=secret, hidden=True)
    assert capsys.readouterr().out == ""  # a hidden pass prints nothing
    for wrong in (_wrong, _crash):
        with pytest.raises(ExerciseFailed, match="fails a hidden test: a far box"):
            check_toy(wrong, cases=secret, hidden=True)
        out = capsys.readouterr().out
        assert "a far box" in out and "think of large boxes" in out
        assert str(SECRET) not in out and "12345" not in out and "inputs" not in out


def test_a_check_needs_as_many_functions_as_it_names() -> None:
    with pytest.raises(TypeError, match="checks 1 function"):
        check_toy(box_iou, box_iou)
    with pytest.raises(ValueError, match="names no library function"):
        exercise_check("empty")


def test_under_nbgrader_a_failed_check_still_binds_its_result_for_later_cells(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cell's assignment never happens when the check raises: later cells calling
    ``toy_iou_check.choose()`` still find the result (and get the library's function)."""

    class Shell:
        user_ns: dict = {}

    shell = Shell()
    monkeypatch.setattr(exercise, "get_ipython", lambda: shell)
    monkeypatch.setenv(GRADING_ENV, "autograde")
    with pytest.raises(ExerciseFailed):
        check_toy(_wrong)
    assert shell.user_ns["toy_iou_check"].status == "wrong"
    assert shell.user_ns["toy_iou_check"].choose() is box_iou
    with pytest.raises(ExerciseFailed):  # a hidden test binds nothing
        check_toy(_wrong, cases=_cases(), hidden=True)
    assert len(shell.user_ns) == 1


def test_an_endless_loop_is_stopped_and_diagnosed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exercise, "CHECK_TIME_LIMIT_S", 0.3)

    def endless(boxes1, boxes2):
        while True:
            pass

    result = check_toy(endless, quiet=True)
    assert result.status == "wrong"
    assert "raised TimeoutError: still running after 0.3 s (an endless loop?)" in result.diagnosis
    assert check_toy(box_iou, quiet=True)  # the alarm is off again
