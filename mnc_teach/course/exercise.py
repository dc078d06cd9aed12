"""What every exercise check shares: cases, the learner's call, the diagnosis, and one rule for
what a failure does (COURSE.md, "Assignments").

An exercise asks the learner to write ``my_<name>`` for one or more library functions
``<name>`` (``my_box_iou`` for :func:`mnc_teach.boxes.box_iou`), with the library's signature,
so that :func:`mnc_teach.course.seam.use_implementation` can plug it into the real model.

A checker is a function ``body(*learner_fns, cases) -> bool`` decorated with
:func:`exercise_check`. It runs the learner's functions on small cases against the library,
prints a diagnosis of the first failure through :func:`report_failure` (which case, expected vs
got, a hint) and returns False, or prints one ✓ line and returns True. The decorator turns the
answer into a :class:`CheckResult` and applies the one rule:

* interactively a failed check reports and the notebook goes on; later cells call
  ``result.choose()``, which gives the learner's function when it passed and the library's
  otherwise, with a one-line note;
* under nbgrader (``NBGRADER_EXECUTION`` is set in the kernel: validate, autograde) a failed
  or missing exercise raises :class:`ExerciseFailed`, so nbgrader sees it; so does a hidden
  test (``hidden=True``) everywhere. Hidden cases print their name and hint only: never their
  inputs or the cell's code (feedback must not reveal hidden tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from IPython import get_ipython
from torch import Tensor

__all__ = [
    "CHECK_TIME_LIMIT_S", "FAIL", "GRADING_ENV", "PASS", "Case", "CheckResult", "ExerciseFailed",
    "boxes_tensor", "call_learner", "exercise_check", "grading_mode", "passed", "random_boxes",
    "report_failure", "rows_tensor", "split_keywords", "tensor_mismatch",
]

PASS, FAIL = "✓", "✗"
# a check whose learner's function runs longer than this stops with a TimeoutError diagnosis
# (an endless loop costs its exercise, not a grading run's cell time limit); the checks
# themselves take well under a second
CHECK_TIME_LIMIT_S = 60.0
GRADING_ENV = "NBGRADER_EXECUTION"  # nbgrader sets it in the kernel: "validate" or "autograde"


def grading_mode() -> str | None:
    """``"validate"`` / ``"autograde"`` when nbgrader runs this kernel, else None."""
    return os.environ.get(GRADING_ENV) or None


class ExerciseFailed(AssertionError):
    """An exercise failed (or is missing) where a failure must stop the cell: under nbgrader,
    or in a hidden test. IPython shows the message only, not the cell's code around it (the
    diagnosis was printed just above)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class Case(NamedTuple):
    name: str
    args: tuple  # the arguments, in the order of the function's parameters
    hint: str  # printed when this case fails


# ---------------------------------------------------------------- building cases
def random_boxes(num: int, generator: torch.Generator, size: float = 128.0) -> Tensor:
    """``num`` random boxes [num, 4] xyxy: the top-left corner in [0, 0.75 size), the sides in
    [1, size / 2)."""
    top_left = torch.rand(num, 2, generator=generator) * size * 0.75  # (num, 2)
    sides = 1 + torch.rand(num, 2, generator=generator) * (size / 2 - 1)  # (num, 2)
    return torch.cat([top_left, top_left + sides], dim=1)  # (num, 4)


def boxes_tensor(rows: list[list[float]]) -> Tensor:
    """Boxes [N, 4] float32 from a list of xyxy rows (``[]`` gives [0, 4])."""
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def rows_tensor(rows: list[list[float]], width: int, *, grad: bool = False) -> Tensor:
    """float32 [len(rows), width] from a list of rows (``[]`` gives [0, width]); with ``grad``
    a leaf that requires grad, so a check can follow the gradient back to it."""
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, width).requires_grad_(grad)


def split_keywords(args: tuple, keywords: tuple[str, ...]) -> tuple[tuple, dict]:
    """``args`` split as the library takes them: the last ``len(keywords)`` by these names."""
    cut = len(args) - len(keywords)
    return args[:cut], dict(zip(keywords, args[cut:], strict=True))


# ---------------------------------------------------------------- while a check runs
@dataclass
class _Run:
    """What the running check has seen: set by :func:`exercise_check` around the body."""

    hidden: bool = False
    missing: list[str] = field(default_factory=list)  # learner functions not implemented yet


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("exercise_run", default=None)


def _run() -> _Run:
    """The running check's record (a throwaway one outside a check)."""
    return _RUN.get() or _Run()


def _shown(value: object) -> str:
    return str(value.tolist()[:3]) if torch.is_tensor(value) else repr(value)[:80]


def call_learner(
    fn: Callable, case: Case, *, fn_name: str, keywords: tuple[str, ...] = ()
) -> tuple[bool, object]:
    """Run the learner's function on fresh copies of the case's inputs, passing the parameters
    named in ``keywords`` by name (as the library's keyword-only ones).

    Returns ``(True, result)``, or ``(False, None)`` after printing one line: "not implemented
    yet" for ``NotImplementedError`` (nbgrader's stub), else the exception and the inputs."""
    args = tuple(arg.clone() if torch.is_tensor(arg) else arg for arg in case.args)
    positional, by_name = split_keywords(args, keywords)
    try:
        return True, fn(*positional, **by_name)
    except NotImplementedError:
        _run().missing.append(fn_name)
        print(f"{FAIL} {fn_name} is not implemented yet")
    except Exception as error:  # show the learner what went wrong; do not stop the notebook
        message = f"{FAIL} {case.name}: {fn_name} raised {type(error).__name__}: {error}"
        if not _run().hidden:
            message += "\n  inputs: " + ", ".join(_shown(a) for a in case.args)
        print(f"{message}\n  hint: {case.hint}")
    return False, None


def report_failure(case: Case, lines: Sequence[str]) -> bool:
    """Print the diagnosis of a failed case (its name, ``lines`` indented, its hint) and
    return False. In a hidden test only the name and the hint are printed."""
    details = "" if _run().hidden else "".join(f"  {line}\n" for line in lines)
    print(f"{FAIL} {case.name}\n{details}  hint: {case.hint}")
    return False


def tensor_mismatch(got: object, expected: Tensor, atol: float) -> list[str]:
    """Why ``got`` is not ``expected``, as lines for :func:`report_failure`: its shape first
    (or its type, when it is no tensor), then the first values of both; [] when ``got`` matches
    within ``atol``. Gradients are ignored (both are compared detached)."""
    if not torch.is_tensor(got) or got.shape != expected.shape:
        shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
        return [f"expected a tensor of shape {tuple(expected.shape)}, got {shape}"]
    if not torch.allclose(got.detach().to(expected.dtype), expected.detach(), atol=atol):
        return [f"expected = {expected.detach().tolist()[:4]}",
                f"got      = {got.detach().tolist()[:4]}"]
    return []


def passed(message: str) -> bool:
    """Print the ✓ line of a check that passed (nothing in a hidden test) and return True."""
    if not _run().hidden:
        print(f"{PASS} {message}")
    return True


# ---------------------------------------------------------------- the verdict
@dataclass
class CheckResult:
    """The outcome of one check. Truthy when the learner's code passed.

    Attributes:
        exercise: the exercise's name ("box_iou").
        status: "passed", "missing" (a function raises NotImplementedError) or "wrong".
        mine: the learner's functions, by library name.
        library: the library's functions, by name (the same keys).
        diagnosis: what the check printed.
    """

    exercise: str
    status: str
    mine: dict[str, Callable]
    library: dict[str, Callable]
    diagnosis: str = ""

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        return f"<CheckResult {self.exercise}: {self.status}>"

    @property
    def why_not_mine(self) -> str:
        return {"missing": "yours is not implemented yet",
                "wrong": "yours fails its check"}.get(self.status, "")

    @property
    def first_failure(self) -> str:
        """The first ✗ line the check printed ("" when it passed)."""
        return next(
            (line[2:] for line in self.diagnosis.splitlines() if line.startswith(FAIL)), ""
        )

    def uses_mine(self, *, use_mine_anyway: bool = False) -> bool:
        """Whether later cells use the learner's functions: when the check passed, or when
        ``use_mine_anyway`` and they are implemented (wrong, not missing)."""
        return self.status == "passed" or (use_mine_anyway and self.status == "wrong")

    def implementations(self, *, use_mine_anyway: bool = False) -> dict[str, Callable]:
        """The functions later cells should use, by library name: the learner's when
        :meth:`uses_mine`, else the library's; one printed line says which."""
        names = ", ".join(self.library)
        if self.uses_mine(use_mine_anyway=use_mine_anyway):
            note = "" if self.status == "passed" else " although it fails its check"
            print(f"using your {', '.join('my_' + n for n in self.mine)}{note}")
            return dict(self.mine)
        print(f"using the library's {names}: {self.why_not_mine}")
        return dict(self.library)

    def choose(self, *, use_mine_anyway: bool = False) -> Callable | tuple[Callable, ...]:
        """:meth:`implementations` as the function (or a tuple of them, in the library order)."""
        chosen = tuple(self.implementations(use_mine_anyway=use_mine_anyway).values())
        return chosen[0] if len(chosen) == 1 else chosen


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` (unless ``quiet``) and keeps a copy."""

    def __init__(self, stream, quiet: bool):
        self.stream, self.quiet, self.copy = stream, quiet, io.StringIO()

    def write(self, text: str) -> int:
        if not self.quiet:
            self.stream.write(text)
        return self.copy.write(text)


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM: in the main thread of a Unix
    process, such as a notebook kernel; elsewhere no limit)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds:g} s (an endless loop?)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _bind_in_notebook(variable: str, value: object) -> None:
    """Set ``variable`` in the notebook's namespace (nothing outside IPython).

    A check cell reads ``<exercise>_check = check_...(...)``; when the check raises under
    nbgrader, that assignment never happens, and every later cell calling
    ``<exercise>_check.choose()`` would fail too. Binding the result first keeps a failed
    exercise from costing the cells after it."""
    shell = get_ipython()
    if shell is not None:
        shell.user_ns[variable] = value


def _failure_line(result: CheckResult, *, hidden: bool) -> str:
    """One line for :class:`ExerciseFailed`: the exercise and its first failing case."""
    first = result.first_failure
    where = "a hidden test" if hidden else "its check"
    if result.status == "missing":
        return f"exercise {result.exercise!r} is not done yet: {first}"
    return f"exercise {result.exercise!r} fails {where}: {first}"


def exercise_check(name: str, **library: Callable) -> Callable:
    """Make ``body(*learner_fns, cases=None) -> bool`` the check of exercise ``name``, whose
    learner writes ``my_<key>`` for each ``key=library_function`` given.

    The decorated check is ``check(*learner_fns, cases=None, hidden=False, quiet=False,
    strict=None) -> CheckResult``: ``cases`` replaces the visible cases (hidden tests pass
    their own), ``quiet`` prints nothing, ``strict`` says whether a failure raises
    :class:`ExerciseFailed` (None: in a hidden test or under nbgrader; False: never, as when
    notebook 06 collects the earlier notebooks' solutions).
    """
    if not library:
        raise ValueError(f"exercise {name!r} names no library function")

    def decorate(body: Callable[..., bool]) -> Callable[..., CheckResult]:
        @functools.wraps(body)
        def check(
            *learner_fns: Callable,
            cases: Sequence[Case] | None = None,
            hidden: bool = False,
            quiet: bool = False,
            strict: bool | None = None,
        ) -> CheckResult:
            if len(learner_fns) != len(library):
                wanted = ", ".join(f"my_{key}" for key in library)
                raise TypeError(f"{body.__name__} checks {len(library)} function(s): {wanted}")
            run = _Run(hidden=hidden)
            token = _RUN.set(run)
            tee = _Tee(sys.stdout, quiet)
            try:
                with contextlib.redirect_stdout(tee), _time_limit(CHECK_TIME_LIMIT_S):
                    ok = body(*learner_fns, cases=cases)
            finally:
                _RUN.reset(token)
            status = "passed" if ok else "missing" if run.missing else "wrong"
            result = CheckResult(
                exercise=name,
                status=status,
                mine=dict(zip(library, learner_fns, strict=True)),
                library=dict(library),
                diagnosis=tee.copy.getvalue(),
            )
            if strict is None:
                strict = hidden or grading_mode() is not None
            if not ok and strict:
                if not hidden:  # later cells still find `<name>_check` and use the library's
                    _bind_in_notebook(f"{name}_check", result)
                raise ExerciseFailed(_failure_line(result, hidden=hidden))
            return result

        check.exercise = name  # type: ignore[attr-defined]
        check.library = dict(library)  # type: ignore[attr-defined]
        return check

    return decorate
