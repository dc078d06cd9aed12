"""Safe archive extraction: check every member before writing anything.

Used by download.py for the VOC 2012 tar and SBD's benchmark.tgz, and usable on its own:
no absolute paths, no ``..`` escapes, no links, no devices or fifos; extraction goes to a
hidden staging folder inside the target and is then moved into place, so an interrupted
run never leaves a half-extracted tree that looks complete.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["UnsafeArchiveError", "safe_extract"]


class UnsafeArchiveError(RuntimeError):
    """An archive member would write outside the target folder or is not a plain file/folder."""


def _check_member_name(name: str, archive: Path) -> None:
    """Raise if writing ``name`` could land outside the extraction folder."""
    unix_name = name.replace("\\", "/")  # a backslash is a separator on Windows
    if PurePosixPath(unix_name).is_absolute() or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refused.")
    normalized = posixpath.normpath(unix_name)
    if normalized == ".." or normalized.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder; refused.")


def _checked_tar_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        _check_member_name(member.name, archive)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a link to {member.linkname!r}; refused."
            )
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a device/fifo; refused."
            )
    return members


def _checked_zip_members(zip_file: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zip_file.infolist()
    for member in members:
        _check_member_name(member.filename, archive)
        file_type = stat.S_IFMT(member.external_attr >> 16)  # 0 when made on Windows/in memory
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{archive}: member {member.filename!r} is a link; refused.")
    return members


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; merge into an existing folder, replacing clashing entries."""
    if src.is_dir() and dst.is_dir():  # merge (dst may be the user's symlink to a folder)
        for child in src.iterdir():
            _move_into(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    shutil.move(src, dst)


def safe_extract(archive: Path, target_dir: Path) -> list[Path]:
    """Extract a tar (any compression) or ``.zip`` into ``target_dir``, refusing anything unsafe.

    Every member is checked before anything is written: no absolute paths, no ``..``
    escaping ``target_dir``, no symlinks or hardlinks, no devices or fifos; otherwise
    ``UnsafeArchiveError`` names the member and nothing is extracted. Extraction goes to a
    hidden temporary folder inside ``target_dir`` whose entries are then moved (merged)
    into place. Returns the extracted paths, ``target_dir / member name``.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    is_zip = archive.suffix.lower() == ".zip"
    try:
        handle = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*")
    except (tarfile.ReadError, zipfile.BadZipFile) as err:
        raise ValueError(f"{archive} is not a tar or zip archive ({err}); delete it.") from err
    with handle:
        if is_zip:
            names = [m.filename for m in _checked_zip_members(handle, archive)]
        else:
            names = [m.name for m in _checked_tar_members(handle, archive)]
        target_dir.mkdir(parents=True, exist_ok=True)
        staging_prefix = f".{archive.name}.extracting-"
        for stale in target_dir.glob(staging_prefix + "*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix, dir=target_dir))
        try:
            if is_zip:
                handle.extractall(staging)
            elif hasattr(tarfile, "data_filter"):  # Python >= 3.12, 3.11.4+: a second guard
                handle.extractall(staging, filter="data")
            else:
                handle.extractall(staging)
            for entry in staging.iterdir():
                _move_into(entry, target_dir / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [target_dir / posixpath.normpath(name.replace("\\", "/")) for name in names]
