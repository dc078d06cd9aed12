"""Collect the learner's solutions from the saved notebooks, so that a later notebook can plug
them into the model (notebook 06: "your code drives the model").

Each exercise's solution cell (nbgrader id ``<exercise>_solution``) is self-contained: it runs
in an empty namespace and defines ``my_<f>`` for each library function f of the exercise. Its
check then runs quietly: a function that passes is used, one that is missing or fails is not
(the library's is, with a one-line note), unless the learner asks for it by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mnc_teach.course.catalog import EXERCISES, Exercise
from mnc_teach.course.exercise import FAIL, PASS, CheckResult

__all__ = ["Solutions", "collect_solutions", "solution_source"]


def solution_source(notebook: dict, exercise: Exercise) -> str | None:
    """The source of ``exercise``'s solution cell in a notebook (nbformat JSON), or None."""
    for cell in notebook.get("cells", []):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == exercise.solution_id:
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return None


def _load_functions(source: str, exercise: Exercise, where: str) -> dict[str, Callable]:
    """Run a solution cell in an empty namespace; its ``my_<f>`` functions by library name.

    Raises whatever the cell raises (SyntaxError, ImportError...), and LookupError naming the
    functions it does not define."""
    namespace: dict = {"__name__": f"learner_{exercise.name}"}
    exec(compile(source, where, "exec"), namespace)  # noqa: S102  (the learner's own cell)
    missing = [f"my_{f}" for f in exercise.functions if not callable(namespace.get(f"my_{f}"))]
    if missing:
        raise LookupError(f"the cell defines no {', '.join(missing)}")
    return {f: namespace[f"my_{f}"] for f in exercise.functions}


@dataclass
class Solutions:
    """What :func:`collect_solutions` found: per exercise, its check's result, or why it could
    not be checked (``problems``)."""

    results: dict[str, CheckResult] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    use_mine_anyway: frozenset[str] = frozenset()

    def implementations(self) -> dict[str, Callable]:
        """The learner's functions to plug in (``use_implementation(**this)``), by library name:
        those whose check passed, and the wrong ones named in ``use_mine_anyway``."""
        chosen: dict[str, Callable] = {}
        for name, result in self.results.items():
            if result.uses_mine(use_mine_anyway=name in self.use_mine_anyway):
                chosen.update(result.mine)
        return chosen

    def table(self) -> str:
        """One line per exercise: whose function the model will use, and why."""
        lines = []
        for exercise in EXERCISES:
            name, functions = exercise.name, ", ".join(f"my_{f}" for f in exercise.functions)
            result = self.results.get(name)
            if result is not None and result:
                verdict = f"{PASS} yours"
            elif result is not None and result.status == "wrong" and name in self.use_mine_anyway:
                verdict = f"{FAIL} fails its check, used anyway (you asked for it)"
            elif result is not None and result.status == "wrong":
                verdict = f"{FAIL} fails its check ({result.first_failure}): the library's"
            elif result is not None:
                verdict = f"{FAIL} {result.why_not_mine}: the library's"
            else:
                verdict = f"{FAIL} {self.problems.get(name, 'not collected')}: the library's"
            lines.append(f"{exercise.notebook[:2]}  {name:<18} {functions:<40} {verdict}")
        return "\n".join(lines)


def collect_solutions(
    notebook_dir: str | os.PathLike = ".",
    *,
    exercises: Iterable[Exercise] = EXERCISES,
    use_mine_anyway: Iterable[str] = (),
    quiet: bool = False,
) -> Solutions:
    """Read each exercise's solution cell from the saved notebooks in ``notebook_dir``, run it
    and check it (quietly, never raising), and print the table of what the model will use.

    ``use_mine_anyway``: exercise names whose function is used even though it fails its check.
    """
    notebook_dir = Path(notebook_dir)
    solutions = Solutions(use_mine_anyway=frozenset(use_mine_anyway))
    notebooks: dict[str, dict | None] = {}
    for exercise in exercises:
        if exercise.notebook not in notebooks:
            path = notebook_dir / f"{exercise.notebook}.ipynb"
            notebooks[exercise.notebook] = (
                json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            )
        notebook = notebooks[exercise.notebook]
        if notebook is None:
            solutions.problems[exercise.name] = f"{exercise.notebook}.ipynb is not here"
            continue
        source = solution_source(notebook, exercise)
        if source is None:
            solutions.problems[exercise.name] = f"no cell {exercise.solution_id!r}"
            continue
        try:
            functions = _load_functions(
                source, exercise, f"{exercise.notebook}.ipynb:{exercise.solution_id}"
            )
        except Exception as error:  # the learner's cell: report it, use the library
            solutions.problems[exercise.name] = (
                f"the cell does not run ({type(error).__name__}: {error})"
            )
            continue
        solutions.results[exercise.name] = exercise.check(
            *functions.values(), quiet=True, strict=False
        )
    if not quiet:
        print(f"your solutions in {notebook_dir.resolve()} (the saved notebooks: save first)")
        print(solutions.table())
    return solutions
