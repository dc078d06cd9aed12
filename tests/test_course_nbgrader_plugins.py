"""What the course adds to nbgrader: the polling Execute, and feedback without code in the
tracebacks of graded cells."""

from __future__ import annotations

import nbformat
from nbgrader.preprocessors import ClearHiddenTests, Execute

from mnc_teach.course.nbgrader_plugins import (
    AUTOGRADE_PREPROCESSORS,
    FEEDBACK_PREPROCESSORS,
    PollingExecute,
    ShortTracebacks,
)
from mnc_teach.course.polling import PollingKernelClientMixin


def test_autograde_runs_the_polling_execute_and_feedback_clears_hidden_tests() -> None:
    assert AUTOGRADE_PREPROCESSORS[0] is PollingExecute and Execute not in AUTOGRADE_PREPROCESSORS
    assert issubclass(PollingExecute, Execute)
    # both the async method and its sync twin are the mixin's (nbclient binds the sync one)
    for name in ("async_start_new_kernel_client", "start_new_kernel_client"):
        assert getattr(PollingExecute, name) is PollingKernelClientMixin.__dict__[name]
    assert ClearHiddenTests in FEEDBACK_PREPROCESSORS and ShortTracebacks in FEEDBACK_PREPROCESSORS


def _cell(graded: bool) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("check(my_fn, cases=[Case('secret', (1, 2), 'h')])")
    cell.metadata["nbgrader"] = {"grade": graded, "grade_id": "x_check", "points": 2}
    cell.outputs = [nbformat.v4.new_output(
        "error", ename="CellTimeoutError", evalue="No reply from kernel",
        traceback=["----> 3 check(my_fn, cases=[Case('secret', (1, 2), 'h')])", "...", "boom"],
    )]
    return cell


def test_graded_cells_keep_only_the_last_line_of_an_error() -> None:
    graded, other = _cell(True), _cell(False)
    for cell in (graded, other):
        ShortTracebacks().preprocess_cell(cell, {}, 0)
    assert graded.outputs[0]["traceback"] == ["CellTimeoutError: No reply from kernel"]
    assert len(other.outputs[0]["traceback"]) == 3  # not graded: left alone
