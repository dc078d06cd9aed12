"""The instructor's README gives the commands of the whole round, the points and the limits."""

from __future__ import annotations

from mnc_teach.course.instructor_guide import instructor_readme


def test_readme_has_the_commands_points_and_time_limit() -> None:
    text = instructor_readme(
        assignment="hw", course_id="c-1", exchange="/x/ex", points="| POINTS |",
        cell_timeout_s=42,
    )
    for command in ("nbgrader release_assignment hw", "nbgrader collect hw",
                    "python -m mnc_teach assignments grade .", "nbgrader release_feedback hw",
                    "nbgrader fetch_assignment hw --course c-1 --Exchange.root=/x/ex",
                    "nbgrader submit hw --course c-1 --Exchange.root=/x/ex"):
        assert command in text, command
    assert "| POINTS |" in text and "42 s" in text and "#1961" in text
    assert "{" not in text  # every placeholder filled
