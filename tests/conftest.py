"""Shared pytest set-up: headless matplotlib (figures closed after each test), and tests/ importable
(fixture builders live there)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after MPLBACKEND is set)
import pytest  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(autouse=True)
def close_figures():
    """Close every pyplot figure a test opened, so figures do not pile up across tests."""
    yield
    plt.close("all")
