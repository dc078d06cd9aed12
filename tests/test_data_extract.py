"""Tests for mnc_teach/data/extract.py: unsafe members are refused before anything is written;
good tar and zip archives extract, merging into an existing folder."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from mnc_teach.data.extract import UnsafeArchiveError, safe_extract


def _unsafe_tar(path: Path, bad: tarfile.TarInfo) -> None:
    """A tar whose first member is harmless and whose second is ``bad``."""
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        tar.addfile(bad, io.BytesIO(b"evil") if bad.isfile() else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "absolute", "symlink", "symlink_inside", "hardlink", "fifo", "zip_dotdot"],
)
def test_unsafe_archive_is_refused_and_nothing_written(tmp_path, kind):
    target = tmp_path / "work" / "target"
    target.mkdir(parents=True)
    outside = tmp_path / "work" / "evil"
    archive = tmp_path / ("bad.zip" if kind == "zip_dotdot" else "bad.tar")
    member = {
        "dotdot": "../evil",
        "absolute": str(outside),
        "symlink": "link",
        "symlink_inside": "link",
        "hardlink": "hard",
        "fifo": "pipe",
        "zip_dotdot": "../evil",
    }[kind]
    if kind == "zip_dotdot":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("good.txt", b"ok")
            zf.writestr(member, b"evil")
    else:
        bad = {
            "dotdot": lambda: _member(member),
            "absolute": lambda: _member(member),
            "symlink": lambda: _member(member, tarfile.SYMTYPE, str(outside)),
            "symlink_inside": lambda: _member(member, tarfile.SYMTYPE, "good.txt"),
            "hardlink": lambda: _member(member, tarfile.LNKTYPE, "../evil"),
            "fifo": lambda: _member(member, tarfile.FIFOTYPE),
        }[kind]()
        _unsafe_tar(archive, bad)
    with pytest.raises(UnsafeArchiveError, match=repr(member).replace("\\", "\\\\")):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []  # not even the harmless first member
    assert not outside.exists()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["target"]


def test_safe_extract_zip_and_merge_into_existing_folder(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/new.txt", b"new")
        zf.writestr("top/clash.txt", b"from archive")
    target = tmp_path / "target"
    (target / "top").mkdir(parents=True)
    (target / "top" / "mine.txt").write_bytes(b"user file")
    (target / "top" / "clash.txt").write_bytes(b"old")
    paths = safe_extract(archive, target)
    assert sorted(paths) == sorted([target / "top/new.txt", target / "top/clash.txt"])
    assert (target / "top" / "new.txt").read_bytes() == b"new"
    assert (target / "top" / "clash.txt").read_bytes() == b"from archive"
    assert (target / "top" / "mine.txt").read_bytes() == b"user file"  # merged, not replaced
    assert sorted(p.name for p in target.iterdir()) == ["top"]  # no staging folder left


def test_safe_extract_a_good_tar_gz(tmp_path):
    archive = tmp_path / "good.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("top/sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256))}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "out"
    stale = target / f".{archive.name}.extracting-old"  # left by an interrupted run
    stale.mkdir(parents=True)
    paths = safe_extract(archive, target)
    assert paths == [target / "top/sub", target / "top/a.txt", target / "top/sub/b.bin"]
    assert (target / "top" / "a.txt").read_bytes() == b"alpha"
    assert (target / "top" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert sorted(p.name for p in target.iterdir()) == ["top"]  # no staging folder, stale or new


@pytest.mark.parametrize("name", ["C:/evil.txt", "\\evil.txt", "a/../../evil.txt", ".."])
def test_windows_style_and_indirect_escapes_are_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(name, b"evil")
    with pytest.raises(UnsafeArchiveError, match="refused"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()  # refused before the folder is even made


def test_not_an_archive_says_delete_it(tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"this is not a tar file")
    with pytest.raises(ValueError, match="broken.tar is not a tar or zip archive") as error:
        safe_extract(archive, tmp_path / "target")
    assert str(error.value).endswith("delete it.")
