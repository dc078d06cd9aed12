"""The course's own tools: exercise checks and the helper notebooks use to show the package's code.

    checks   check_* exercise checkers: run a learner's function on edge cases, print a diagnosis
    show     show_source(fn): a function, class or method's source, syntax-highlighted

``show_source`` is imported here (``from mnc_teach.course import show_source``); the checkers are
imported from their module (``from mnc_teach.course.checks import check_box_iou``).
"""

from mnc_teach.course.show import show_source

__all__ = ["show_source"]
