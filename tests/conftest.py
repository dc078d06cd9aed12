"""Shared pytest set-up: headless matplotlib (figures closed after each test), and tests/ importable
(fixture builders live there)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after MPLBACKEND is set)
import pytest  # noqa: E402

from mnc_teach.course.assignments import build_course  # noqa: E402
from mnc_teach.data.shapes import generate_shapes  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(autouse=True)
def close_figures():
    """Close every pyplot figure a test opened, so figures do not pile up across tests."""
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset of 6 train and 4 val images of 64 x 64 pixels, made once per session."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, num_train=6, num_val=4, image_size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def course_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nbgrader course folder ``assignments build`` makes from notebooks/, once per session:
    the student version (made by nbgrader itself) is in ``release/mnc``."""
    return build_course(tmp_path_factory.mktemp("course") / "mnc-course")


@pytest.fixture(scope="module")
def render_course():
    """scripts/render_course.py (`make html`) as a module; scripts/ is not a package."""
    script = TESTS_DIR.parent / "scripts" / "render_course.py"
    spec = importlib.util.spec_from_file_location("render_course", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_course"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("render_course", None)
