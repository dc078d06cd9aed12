"""The instructor's README of a course folder (written by ``assignments build``)."""

from __future__ import annotations

__all__ = ["GRADING_SECONDS_PER_STUDENT", "NOTEBOOK_SECONDS", "instructor_readme"]

# Seconds to execute each notebook top to bottom on a 2-core CPU (no GPU, nothing else running),
# full mode (what a learner runs) and fast mode (what grading runs), measured with
#   make html   /   make html-fast   (python scripts/render_course.py [--fast])
# on 2026-12-01; the time a learner spends reading and writing code comes on top. Notebook 09
# trains on a GPU: on a CPU it stops at its first cell (full mode) or at its data (fast mode).
NOTEBOOK_SECONDS: dict[str, tuple[float, float]] = {
    "00_setup_and_data": (11.6, 6.3),
    "01_boxes_anchors_matching": (7.3, 8.0),
    "02_stage1_box_proposals": (47.0, 10.0),
    "03_roi_warping": (6.8, 6.5),
    "04_stage2_masks": (68.7, 8.9),
    "05_stage3_classification": (105.5, 8.4),
    "06_cascade_end_to_end": (109.3, 13.0),
    "07_five_stages_and_inference": (46.0, 12.0),
    "08_evaluation": (34.0, 12.0),
}
# `assignments grade` of one student's whole course (every notebook, nbgrader included) on the same
# machine, 2026-12-01: 120 s through the instructor README's commands on a clean clone, 94-103 s in
# tests/test_course_assignments.py; the slowest measurement is the budget
GRADING_SECONDS_PER_STUDENT = 120

README = """\
# {course_id}: instructor's folder

Made by `python -m mnc_teach assignments build`. The course is one nbgrader assignment,
`{assignment}`: notebook 06 plugs the functions the learner wrote in notebooks 01-07 into the
real model, so the notebooks travel together.

| folder / file | what it is |
|---|---|
| `source/{assignment}/` | the notebooks with solutions, hidden tests and answer keys (yours) |
| `release/{assignment}/` | the student version: solutions are stubs, hidden tests removed |
| `nbgrader_config.py` | course id, exchange, grading mode, cell time limit ({cell_timeout_s} s) |
| `submitted/`, `autograded/`, `feedback/` | nbgrader's usual folders |
| `grades.csv` | every graded cell's score, per student (written by `assignments grade`) |

Run every command below in this folder, with the environment that has mnc-teach and its
`instructor` extra (`pip install -e '.[instructor]'`; `make venv` includes it).

## Release, collect, grade

```bash
# 1. the student version into the exchange folder
nbgrader release_assignment {assignment}
# 2. each student, in a folder of their own (nbgrader knows them by their user name):
#      nbgrader fetch_assignment {assignment} --course {course_id} --Exchange.root={exchange}
#      cd {assignment} && jupyter lab   (work, save; check: nbgrader validate <notebook>.ipynb)
#      cd .. && nbgrader submit {assignment} --course {course_id} --Exchange.root={exchange}
# 3. the submissions into submitted/<student>/{assignment}
nbgrader collect {assignment}
# 4. autograde, feedback and grades.csv, each student in a process of its own
python -m mnc_teach assignments grade .
# 5. the answers by hand: JupyterLab's menu Nbgrader > Formgrader
jupyter lab
# 6. the feedback again, with your grades, and back to the students (nbgrader fetch_feedback)
nbgrader generate_feedback {assignment} --force
nbgrader release_feedback {assignment}
```

The exchange folder is `{exchange}` (set in `nbgrader_config.py`): every student must be able
to write there. On JupyterHub set `c.Exchange.root` to the shared path every user reaches
(nbgrader's default is `/usr/local/share/nbgrader/exchange`), and students drop
`--Exchange.root`. Without an exchange (an LMS, a
shared drive): hand out `release/{assignment}/` as a zip, and put each returned folder at
`submitted/<student>/{assignment}/` before `assignments grade`.

Students check their work with `nbgrader validate <notebook>.ipynb` (a stub or a wrong
function fails with the check's diagnosis), or simply by running the notebook: a check that
fails reports in one line and the notebook goes on with the library's function.

## Points

{points}

Each exercise is worth its check cell's points: the visible check and the hidden tests in the
same cell must both pass. Answers ("check yourself") are graded by hand; the answer key is
the text of each answer cell in `source/{assignment}/`.

## Grading mode

nbgrader runs every kernel with `NBGRADER_EXECUTION` set. The course then runs in fast mode
(`MNC_FAST=1`: small data, training cells in seconds) on one data folder shared by every
student (`MNC_DATA_ROOT=./data`), and a failed or missing exercise raises, so that nbgrader
sees it. Each cell may take {cell_timeout_s} s (`--cell-timeout`); a cell past it is
interrupted and costs its points, and the rest of the notebook is still graded.
`assignments grade` grades each student in a process of its own: one broken submission never
stops the run.

## Time budgets (2-core CPU, no GPU)

{times}

## Known messages

- Autograde warns that the checksum of cells with hidden tests changed: the hidden tests
  were removed from the student version and put back for grading; a known, harmless nbgrader
  issue (jupyter/nbgrader#1961).
- Notebook 09 (VOC on a GPU) stops at its data cell when VOC 2012 and SBD are not in the
  data folder; it has answers only, no exercise, so grading is unaffected.
"""


def _times_table() -> str:
    rows = ["| notebook | full mode (a learner's run) | fast mode (grading) |", "|---|---|---|"]
    for notebook, (full, fast) in NOTEBOOK_SECONDS.items():
        rows.append(f"| {notebook} | {full:.0f} s | {fast:.0f} s |")
    full_total = sum(full for full, _ in NOTEBOOK_SECONDS.values())
    fast_total = sum(fast for _, fast in NOTEBOOK_SECONDS.values())
    rows.append(f"| **00-08** | {full_total / 60:.1f} min | {fast_total / 60:.1f} min |")
    rows.append("| 09_voc_on_gpu | needs a GPU (about an hour of training: an estimate) | stops at "
                "its data cell |")
    return "\n".join(rows) + (
        "\n\nMeasured with `python scripts/render_course.py` (full) and `--fast` on 2026-12-01, "
        "nothing else running; a learner's reading and coding time comes on top. Grading one "
        "student's whole "
        f"course with `assignments grade` took up to {GRADING_SECONDS_PER_STUDENT} s."
    )


def instructor_readme(
    *, assignment: str, course_id: str, exchange: str, points: str, cell_timeout_s: int
) -> str:
    """The README.md of a course folder: the commands, the points table, the time budgets."""
    return README.format(
        assignment=assignment, course_id=course_id, exchange=exchange, points=points,
        cell_timeout_s=cell_timeout_s, times=_times_table(),
    )
