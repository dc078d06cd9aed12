"""Shared pytest set-up: headless matplotlib (figures closed after each test), and tests/ importable
(fixture builders live there)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after MPLBACKEND is set)
import pytest  # noqa: E402

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
