"""write_text_atomically: the new text or the old one, never a half-written file or a stray
temporary file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnc_teach.fileio import write_text_atomically


def test_writes_creates_folders_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.json"
    assert write_text_atomically(path, "first") == path
    write_text_atomically(str(path), "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_text_atomically(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(path, "bad \udc80 surrogate")  # cannot be encoded: fails mid-write
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_files_get_the_umask_mode_and_utf8(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_text_atomically(tmp_path / "page.html", "µ-Ω → ✓")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # what open() gives, not mkstemp's private 0600
    assert path.read_bytes().decode("utf-8") == "µ-Ω → ✓"
