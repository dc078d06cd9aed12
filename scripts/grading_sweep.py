"""Grading isolates exercises: for every exercise and two kinds of bad solution (nbgrader's stub;
a solution cell that crashes when it runs), grade a submission that is right everywhere else, on
that exercise's notebook, and check that exactly that exercise's points are lost.

    python scripts/grading_sweep.py /tmp/sweep-course      # 34 autograde runs, ~10 min on 2 cores

Too slow for `make test` (tests/test_course_assignments.py grades three students); run it after
changing the notebooks' exercises or the checks. Exits 1 when a submission lost other points.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

from mnc_teach.course.assignments import ASSIGNMENT, GRADES_CSV, build_course, grade_course
from mnc_teach.course.catalog import EXERCISES, Exercise

CRASHING_CELL = "raise RuntimeError('a broken solution cell')\n"


def _stub_cell(exercise: Exercise) -> str:
    return "".join(
        f"def my_{f}(*args, **kwargs):\n    raise NotImplementedError()\n\n"
        for f in exercise.functions
    )


def _hand_in(course: Path, student: str, exercise: Exercise, solution: str) -> None:
    """A copy of the instructor's notebooks with ``exercise``'s solution cell replaced."""
    folder = course / "submitted" / student / ASSIGNMENT
    shutil.copytree(course / "source" / ASSIGNMENT, folder)
    path = folder / f"{exercise.notebook}.ipynb"
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == exercise.solution_id:
            cell["source"] = solution
    path.write_text(json.dumps(notebook, indent=1))


def _points_lost(course: Path, student: str, notebook: str) -> dict[str, tuple[float, float]]:
    """The auto-graded cells of ``notebook`` that did not get full marks: (score, max_score)."""
    with open(course / GRADES_CSV, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["student"] == student and r["notebook"] == notebook and r["kind"] == "auto"]
    return {r["cell"]: (float(r["score"]), float(r["max_score"]))
            for r in rows if float(r["score"]) < float(r["max_score"])}


def main(course_dir: str) -> int:
    course = build_course(Path(course_dir))
    not_exact = []
    for exercise in EXERCISES:
        for kind, solution in (("stub", _stub_cell(exercise)), ("crash", CRASHING_CELL)):
            student = f"{exercise.name}-{kind}"
            _hand_in(course, student, exercise, solution)
            start = time.perf_counter()
            [outcome] = grade_course(course, students=[student], notebook=exercise.notebook)
            lost = _points_lost(course, student, exercise.notebook)
            exact = set(lost) == {exercise.check_id} and lost[exercise.check_id][0] == 0
            exact = exact and not outcome.error
            print(f"{student:28s} {exercise.notebook:30s} lost {lost} "
                  f"{'OK' if exact else 'NOT EXACT'} {time.perf_counter() - start:.0f} s",
                  flush=True)
            if not exact:
                not_exact.append(student)
    print("each lost exactly its own points" if not not_exact else f"not exact: {not_exact}")
    return 1 if not_exact else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/grading-sweep"))
