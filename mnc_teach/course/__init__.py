"""The course's own tools: exercises, the seam that plugs the learner's code into the model,
the nbgrader assignments, the tracks, and the helper notebooks use to show the package's code.

    exercise        what every check shares: cases, the diagnosis, CheckResult.choose(), and
                    the rule (report interactively; raise under nbgrader and in hidden tests)
    checks_*        one check per exercise, by notebook (boxes, proposals, warp, masks,
                    classify, cascade, evaluation)
    catalog         EXERCISES: every exercise in reading order (name, notebook, check)
    seam            use_implementation(roi_warp=my_roi_warp, ...): the model calls yours
    solutions       collect_solutions(): the learner's functions from the saved notebooks
    assignments     build / grade the course as an nbgrader assignment (instructor extra)
    nbgrader_plugins, instructor_guide, polling   what assignments and headless runs use
    tracks          course_track(): the shapes (CPU) or voc (GPU) track of a notebook
    show            show_source(fn): a function, class or method's source, syntax-highlighted

``show_source`` is imported here (``from mnc_teach.course import show_source``); everything
else from its module (``from mnc_teach.course.checks_boxes import check_box_iou``).
"""

from mnc_teach.course.show import show_source

__all__ = ["show_source"]
