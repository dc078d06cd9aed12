"""What the course adds to nbgrader, loaded by the ``nbgrader_config.py`` that
``python -m mnc_teach assignments build`` writes (needs the ``instructor`` extra).

* :class:`PollingExecute`: nbgrader's Execute, reading the kernel's channels in one-second
  slices (:mod:`mnc_teach.course.polling`): without it most autograde runs lost ~30 s to a
  missed reply.
* :class:`ShortTracebacks`: in feedback, a graded cell's error shows its last line only. The
  course's checks raise :class:`~mnc_teach.course.exercise.ExerciseFailed`, which prints no
  code anyway; this covers the rest (a timeout, an exception escaping a hidden test), whose
  traceback would print the hidden lines around the failing one.
"""

from __future__ import annotations

from nbconvert.exporters.exporter import ResourcesDict
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    Execute,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    NbGraderPreprocessor,
    SaveAutoGrades,
)

from mnc_teach.course.polling import PollingKernelClientMixin

__all__ = [
    "AUTOGRADE_PREPROCESSORS", "FEEDBACK_PREPROCESSORS", "PollingExecute", "ShortTracebacks",
]


class PollingExecute(PollingKernelClientMixin, Execute):
    """nbgrader's Execute preprocessor without the missed-reply stall."""


class ShortTracebacks(NbGraderPreprocessor):
    """Each error output of a graded cell keeps only ``<name>: <message>``."""

    def preprocess_cell(
        self, cell: NotebookNode, resources: ResourcesDict, index: int
    ) -> tuple[NotebookNode, ResourcesDict]:
        if cell.cell_type == "code" and cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: "
                                           f"{output.get('evalue', '')}"]
        return cell, resources


# nbgrader 0.9's autograde list with Execute replaced
AUTOGRADE_PREPROCESSORS = [
    PollingExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
# nbgrader 0.9's feedback list plus: no hidden test, no code in tracebacks
FEEDBACK_PREPROCESSORS = [GetGrades, ClearHiddenTests, ShortTracebacks, CSSHTMLHeaderPreprocessor]
