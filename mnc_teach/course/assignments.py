"""Hand the course out through nbgrader and grade it (COURSE.md, "Assignments").

    python -m mnc_teach assignments list             # exercises and answers, with points
    python -m mnc_teach assignments build --out DIR  # an nbgrader course folder + student version
    python -m mnc_teach assignments grade DIR        # autograde + feedback + grades.csv

The whole course is one nbgrader assignment (``mnc``): notebook 06 plugs the learner's functions
from notebooks 01-07 into the model, so the notebooks travel together. ``build`` copies the
notebooks unchanged into ``source/mnc`` and runs ``nbgrader generate_assignment`` (the student
version is ``release/mnc``). ``grade`` grades each student in a process of its own, in fast mode
with one shared data folder and a time limit per cell, so that a crash or an endless loop costs
that cell's points and never the grading run.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nbgrader.api import Gradebook

from mnc_teach.course.instructor_guide import instructor_readme
from mnc_teach.fileio import write_text_atomically

__all__ = [
    "ASSIGNMENT", "COURSE_ID", "GradedCell", "StudentGrading", "build_course", "grade_course",
    "graded_cells", "points_table",
]

ASSIGNMENT = "mnc"
COURSE_ID = "mnc-teach"
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
CELL_TIMEOUT_S = 180  # fast-mode cells take seconds; an endless loop costs this, once
GRADES_CSV = "grades.csv"
EXCHANGE = "exchange"  # the course folder's own exchange (release / fetch / submit / collect)

NBGRADER_CONFIG = '''\
"""nbgrader's configuration for the mnc-teach course (written by
`python -m mnc_teach assignments build`; edit freely)."""

import os
from pathlib import Path

from mnc_teach.course.nbgrader_plugins import AUTOGRADE_PREPROCESSORS, FEEDBACK_PREPROCESSORS

HERE = Path(__file__).resolve().parent
c = get_config()  # noqa: F821  (nbgrader provides it)
c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.root = str(HERE)
# release / fetch / submit / collect go through this folder (JupyterHub: a shared path)
c.Exchange.root = str(HERE / {exchange_name!r})
# grading: fast sizes (training cells take seconds) and one data folder for every student;
# the notebook kernels inherit these
os.environ.setdefault("MNC_FAST", "1")
os.environ.setdefault("MNC_DATA_ROOT", str(HERE / "data"))
c.Execute.timeout = {timeout}  # seconds per cell; a cell past it is interrupted and scores 0
c.Autograde.autograde_preprocessors = AUTOGRADE_PREPROCESSORS  # Execute, polling every second
c.GenerateFeedback.preprocessors = FEEDBACK_PREPROCESSORS  # no hidden tests in feedback
'''


@dataclass(frozen=True)
class GradedCell:
    """One graded cell of a notebook: an exercise's check (auto) or an answer (manual)."""

    notebook: str
    grade_id: str
    points: float
    manual: bool


def graded_cells(notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> list[GradedCell]:
    """Every graded cell of the course's notebooks, in order."""
    cells = []
    for path in sorted(Path(notebook_dir).glob(NOTEBOOK_GLOB)):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade"):
                manual = meta.get("solution", False)  # an answer cell: graded by hand
                cells.append(GradedCell(path.stem, meta["grade_id"], meta["points"], manual))
    return cells


def points_table(notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> str:
    """A Markdown table: per notebook its exercises (auto-graded) and answers (by hand)."""
    rows = ["| notebook | exercises (auto-graded) | points | answers (by hand) | points |",
            "|---|---|---|---|---|"]
    cells = graded_cells(notebook_dir)
    for notebook in dict.fromkeys(c.notebook for c in cells):
        auto = [c for c in cells if c.notebook == notebook and not c.manual]
        manual = [c for c in cells if c.notebook == notebook and c.manual]
        names = ", ".join(c.grade_id.removesuffix("_check") for c in auto) or "-"
        rows.append(f"| {notebook} | {names} | {sum(c.points for c in auto):g} "
                    f"| {len(manual)} | {sum(c.points for c in manual):g} |")
    auto_total = sum(c.points for c in cells if not c.manual)
    manual_total = sum(c.points for c in cells if c.manual)
    count = sum(not c.manual for c in cells)
    rows.append(f"| **all** | {count} exercises | {auto_total:g} "
                f"| {sum(c.manual for c in cells)} | {manual_total:g} |")
    return "\n".join(rows)


def _nbgrader(args: list[str], course_dir: Path, *, env: dict[str, str] | None = None,
              timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """``python -m nbgrader <args>`` in the course folder (which holds nbgrader_config.py).

    The environment's scripts come first on PATH: nbgrader runs ``alembic`` to create its
    gradebook, which is not found when the environment is used without being activated."""
    scripts = str(Path(sys.executable).parent)
    path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course_dir, capture_output=True,
        text=True, env={**os.environ, "PATH": path, **(env or {})}, timeout=timeout_s,
        check=False,
    )


def _tail(result: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def build_course(
    out_dir: str | os.PathLike,
    *,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    assignment: str = ASSIGNMENT,
    cell_timeout_s: int = CELL_TIMEOUT_S,
    force: bool = False,
) -> Path:
    """Lay out an nbgrader course folder in ``out_dir`` and generate the student version.

    Writes ``nbgrader_config.py``, ``README.md`` (for the instructor) and ``source/<assignment>/``
    (the notebooks, unchanged), then runs ``nbgrader generate_assignment`` into
    ``release/<assignment>/``.

    Raises:
        FileExistsError: ``out_dir`` holds files and ``force`` is False.
        FileNotFoundError: no notebooks in ``notebook_dir``.
        RuntimeError: nbgrader failed (its last lines are in the message).
    """
    out, notebooks = Path(out_dir).expanduser().resolve(), sorted(
        Path(notebook_dir).glob(NOTEBOOK_GLOB)
    )
    if not notebooks:
        raise FileNotFoundError(f"no {NOTEBOOK_GLOB} in {notebook_dir}; run from the repository")
    if out.is_file():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"--out {out} already holds files; choose a new folder, or add --force to rebuild "
            "the assignment there (student submissions and grades are kept)"
        )
    source = out / "source" / assignment
    source.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        shutil.copy2(path, source / path.name)
    write_text_atomically(
        out / "nbgrader_config.py",
        NBGRADER_CONFIG.format(
            course_id=COURSE_ID, timeout=cell_timeout_s, exchange_name=EXCHANGE
        ),
    )
    write_text_atomically(
        out / "README.md",
        instructor_readme(assignment=assignment, course_id=COURSE_ID,
                          exchange=str(out / EXCHANGE), points=points_table(notebook_dir),
                          cell_timeout_s=cell_timeout_s),
    )
    result = _nbgrader(["generate_assignment", assignment, "--force"], out)
    released = out / "release" / assignment
    if result.returncode != 0 or not all((released / p.name).is_file() for p in notebooks):
        raise RuntimeError(f"nbgrader generate_assignment failed:\n{_tail(result)}")
    return out


@dataclass
class StudentGrading:
    """How grading one student went."""

    student: str
    seconds: float
    score: float
    max_score: float
    error: str = ""  # why autograde or feedback failed for this student ("" when it did not)


def _grades(course_dir: Path, assignment: str, student: str) -> list[dict]:
    """Each graded cell's score for one student, from nbgrader's gradebook."""
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(assignment, student)
        return [
            {"student": student, "notebook": notebook.name, "cell": grade.name,
             "kind": "by hand" if grade.cell.cell_type == "markdown" else "auto",
             "score": grade.score, "max_score": grade.max_score,
             "needs_manual_grade": grade.needs_manual_grade}
            for notebook in submission.notebooks
            for grade in notebook.grades
        ]


def grade_course(
    course_dir: str | os.PathLike,
    *,
    assignment: str = ASSIGNMENT,
    students: list[str] | None = None,
    notebook: str = "*",
    cell_timeout_s: int = CELL_TIMEOUT_S,
) -> list[StudentGrading]:
    """Autograde each submission in ``submitted/<student>/<assignment>`` and write its feedback
    (``feedback/``); then write every graded cell's score of every student graded so far to
    ``<course_dir>/grades.csv``. The returned scores count this run's auto-graded cells.

    ``notebook``: a glob of notebook names to grade (default all). Each student is graded by
    a process of its own; one that fails is reported and the others are still graded.
    """
    course = Path(course_dir).expanduser().resolve()
    if not (course / "nbgrader_config.py").is_file():
        raise FileNotFoundError(
            f"{course} is not a course folder (no nbgrader_config.py); make one with "
            "python -m mnc_teach assignments build --out DIR"
        )
    submitted = course / "submitted"
    found = sorted(p.parent.name for p in submitted.glob(f"*/{assignment}") if p.is_dir())
    students = found if students is None else students
    if not students:
        raise FileNotFoundError(
            f"no submissions in {submitted}/<student>/{assignment}; collect them first "
            f"(nbgrader collect {assignment})"
        )
    env = {"MNC_FAST": "1", "MNC_DATA_ROOT": str(course / "data")}
    timeout = [f"--Execute.timeout={cell_timeout_s}", f"--notebook={notebook}"]
    outcomes = []
    for student in students:
        start = time.perf_counter()
        error = ""
        result = _nbgrader(["autograde", assignment, "--student", student, "--force", *timeout],
                           course, env=env)
        if result.returncode != 0:
            error = f"autograde failed: {_tail(result, 5)}"
        else:
            feedback = _nbgrader(["generate_feedback", assignment, "--student", student,
                                  "--force", f"--notebook={notebook}"], course)
            if feedback.returncode != 0:
                error = f"generate_feedback failed: {_tail(feedback, 5)}"
        graded = [] if result.returncode != 0 else [
            row for row in _grades(course, assignment, student)
            if fnmatch.fnmatch(row["notebook"], notebook)  # the notebooks graded this time
        ]
        outcomes.append(StudentGrading(
            student=student, seconds=time.perf_counter() - start,
            score=sum(r["score"] for r in graded if r["kind"] == "auto"),
            max_score=sum(r["max_score"] for r in graded if r["kind"] == "auto"), error=error,
        ))
    # every student graded so far, this run or an earlier one
    graded_students = sorted(p.parent.name for p in (course / "autograded").glob(f"*/{assignment}"))
    rows = [row for student in graded_students for row in _grades(course, assignment, student)]
    _write_csv(course / GRADES_CSV, rows)
    return outcomes


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["student", "notebook", "cell", "kind", "score", "max_score", "needs_manual_grade"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())
