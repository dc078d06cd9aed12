"""Download PASCAL VOC 2012 and SBD: resumable, checksum-verified, safely extracted.

Three steps, each usable on its own:

1. ``download_file`` streams a URL into ``<dest>.part``. If a ``.part`` is already there
   it asks the server for the rest only (HTTP ``Range: bytes=N-``), checks the md5 and
   only then renames ``.part`` -> ``dest``; so ``dest`` existing means "complete and verified".
2. ``safe_extract`` (extract.py) checks every archive member *before* writing anything (no absolute
   paths, no ``..`` escapes, no links, no devices), extracts into a hidden temporary
   folder inside the target and then moves the result into place.
3. ``download_dataset`` ties them together and writes a small ``.<name>.complete`` stamp
   last; a re-run that finds the stamp downloads nothing.

Only the standard library (urllib, tarfile, zipfile) plus torchvision's md5 helper and tqdm.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5
from tqdm.auto import tqdm

from mnc_teach.data.extract import UnsafeArchiveError, safe_extract
from mnc_teach.fileio import write_text_atomically

__all__ = [
    "MIRROR_ENV_VAR", "RESOURCES", "ChecksumError", "DownloadError", "Resource",
    "UnsafeArchiveError",  # from extract.py: download_dataset raises it for an unsafe archive
    "download_dataset", "download_file",
]

MIRROR_ENV_VAR = "MNC_TEACH_MIRROR"  # base URL of a mirror; the archive's file name is appended
PART_SUFFIX = ".part"  # an unfinished download, resumed by the next run
CORRUPT_SUFFIX = ".corrupt"  # a finished download whose checksum was wrong, kept for inspection
USER_AGENT = "mnc-teach-downloader (urllib)"
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416


@dataclass(frozen=True)
class Resource:
    """One downloadable archive.

    Attributes:
        name: short key, e.g. ``"voc2012"``; also names the ``.<name>.complete`` stamp.
        url: where the official copy lives.
        filename: the archive's file name once downloaded.
        md5: hex md5 of the whole archive, checked before anything is extracted.
        extracted_marker: path, relative to the download root, that exists after extraction;
            ``download_dataset`` returns ``root / extracted_marker``.
        size_bytes: archive size, only used for friendly messages (``None`` = unknown).
    """

    name: str
    url: str
    filename: str
    md5: str
    extracted_marker: str
    size_bytes: int | None = None


# URLs and md5s are the ones torchvision uses: torchvision/datasets/voc.py
# (DATASET_YEAR_DICT["2012"]; thor.robots.ox.ac.uk is where host.robots.ox.ac.uk redirects)
# and torchvision/datasets/sbd.py (SBDataset.url / .md5; extracted folder
# benchmark_RELEASE/dataset). Sizes are the Content-Length the servers report.
RESOURCES: dict[str, Resource] = {
    "voc2012": Resource(
        name="voc2012",
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        filename="VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        extracted_marker="VOCdevkit/VOC2012",
        size_bytes=1_999_639_040,
    ),
    "sbd": Resource(
        name="sbd",
        url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        filename="benchmark.tgz",
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
        extracted_marker="benchmark_RELEASE/dataset",
        size_bytes=1_419_539_633,
    ),
}


class DownloadError(RuntimeError):
    """The file could not be fetched (offline, unreachable host, HTTP error, dropped connection)."""


class ChecksumError(RuntimeError):
    """A downloaded file does not have the expected md5."""


def _human_size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "size unknown"
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"To download by hand, fetch {url} (e.g. `wget -c {url}`) and save it as {dest}; "
        f"then re-run, it will be verified and extracted. To use a mirror, set "
        f"{MIRROR_ENV_VAR} to its base URL or pass url=..."
    )


def _offline_error(url: str, dest: Path, *, part: Path, reason: object) -> DownloadError:
    kept = (
        f"The partial download ({_human_size(part.stat().st_size)}) is kept at {part}; "
        "re-running resumes it. "
        if part.exists() and part.stat().st_size > 0
        else ""
    )
    return DownloadError(
        f"Could not download {url}: {reason}. We appear to be offline, or the server is "
        f"unreachable or dropped the connection. {kept}{_manual_hint(url, dest)}"
    )


def _total_from_content_range(header: str | None) -> int | None:
    """``"bytes 100-199/200"`` or ``"bytes */200"`` -> 200; ``None`` when absent or ``*``."""
    if not header or "/" not in header:
        return None
    total = header.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _set_aside(bad: Path, name: Path) -> Path:
    """Move a file with a wrong checksum to ``<name>.corrupt`` (kept for inspection); return
    that path."""
    corrupt = name.with_suffix(name.suffix + CORRUPT_SUFFIX)
    os.replace(bad, corrupt)
    return corrupt


def _finish(part: Path, dest: Path, md5: str | None) -> Path:
    """Verify ``part`` and atomically rename it to ``dest``; set a bad file aside."""
    if md5 is not None:
        actual = calculate_md5(part)
        if actual != md5.lower():
            corrupt = _set_aside(part, dest)
            raise ChecksumError(
                f"Checksum mismatch for {dest.name}: expected md5 {md5}, got {actual}. "
                f"The bad file was moved to {corrupt} so the next run starts afresh; "
                "delete it once you no longer need it. If this keeps happening the server "
                "or mirror serves a different file."
            )
    os.replace(part, dest)
    return dest


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` and verifying the md5.

    The bytes go to ``dest.part``; ``dest`` appears (atomic rename) only once the whole file
    is there and, if ``md5`` is given, verified. ``timeout`` is in seconds, per connection
    attempt and per read. Returns ``dest``.

    Raises:
        DownloadError: offline, unreachable host, HTTP error, or the connection dropped
            (the ``.part`` is kept; calling again resumes).
        ChecksumError: the finished file has another md5 (it is moved to ``dest.corrupt``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + PART_SUFFIX)
    offset = part.stat().st_size if part.exists() else 0

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == HTTP_RANGE_NOT_SATISFIABLE and offset > 0:
            # Nothing left past `offset`: the .part is complete, or longer than the file.
            total = _total_from_content_range(err.headers.get("Content-Range"))
            complete = calculate_md5(part) == md5.lower() if md5 else total == offset
            if complete:
                return _finish(part, dest, md5=None)  # already verified just above
            part.unlink()  # a stale or oversized .part: start again from byte zero
            return download_file(
                url, dest, md5=md5, progress=progress, chunk_size=chunk_size, timeout=timeout
            )
        raise DownloadError(
            f"The server answered HTTP {err.code} ({err.reason}) for {url}. Check the URL "
            f"or try a mirror. {_manual_hint(url, dest)}"
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _offline_error(url, dest, part=part, reason=getattr(err, "reason", err)) from err

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        content_range = response.headers.get("Content-Range", "")
        resumed = offset > 0 and response.status == HTTP_PARTIAL_CONTENT
        if resumed and not content_range.startswith(f"bytes {offset}-"):
            raise DownloadError(
                f"{url} answered Content-Range {content_range!r} to 'Range: bytes={offset}-'; "
                f"delete {part} and re-run to download from the start."
            )
        if not resumed:  # 200: the Range header was ignored (or not sent), restart at zero
            offset = 0
        total = _total_from_content_range(content_range) if resumed else length
        expected_end = offset + length if length is not None else total

        with (
            open(part, "ab" if resumed else "wb") as file,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            written = offset
            try:
                while chunk := response.read(chunk_size):
                    file.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                reason = f"connection lost ({err!r})"
                raise _offline_error(url, dest, part=part, reason=reason) from err
    if expected_end is not None and written < expected_end:
        reason = f"the connection closed after {written} of {expected_end} bytes"
        raise _offline_error(url, dest, part=part, reason=reason)
    return _finish(part, dest, md5)


def _resolve_url(resource: Resource, url: str | None) -> str:
    """The ``url`` argument (a full URL, or a base ending in "/"), else the mirror environment
    variable, else the official URL."""
    if url:
        return url + resource.filename if url.endswith("/") else url
    mirror = os.environ.get(MIRROR_ENV_VAR)
    if mirror:
        return mirror.rstrip("/") + "/" + resource.filename
    return resource.url


def download_dataset(
    name: str,
    root: Path,
    *,
    url: str | None = None,
    progress: bool = True,
    keep_archive: bool = True,
    resource: Resource | None = None,
) -> Path:
    """Download, verify and extract dataset ``name`` into ``root``; return its folder.

    Steps: (1) if ``root/<marker>`` and the ``root/.<name>.complete`` stamp (holding the md5)
    exist, return at once; (2) if the archive is in ``root`` with the right md5, skip the
    download, else download it (resuming a ``.part``); (3) remove the stamp, extract safely,
    write the stamp; so a crash mid-extraction is redone by the next run.

    Args:
        name: a key of ``RESOURCES`` ("voc2012" or "sbd").
        root: download folder, e.g. ``Path("data")``.
        url: full URL of the archive, or a mirror base URL ending in "/"; default: the
            ``MNC_TEACH_MIRROR`` environment variable (a base URL), else the official URL.
        progress: show progress bars.
        keep_archive: keep the archive after extraction (``False`` deletes it).
        resource: use this ``Resource`` instead of ``RESOURCES[name]`` (tests, new datasets).

    Returns:
        ``root / resource.extracted_marker``, e.g. ``data/VOCdevkit/VOC2012``.
    """
    if resource is None:
        if name not in RESOURCES:
            raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(RESOURCES)}.")
        resource = RESOURCES[name]
    root, md5 = Path(root).expanduser(), resource.md5.lower()
    if root.exists() and not root.is_dir():
        raise ValueError(f"the download folder {root} is a file; choose a folder for --root")
    dataset_dir = root / resource.extracted_marker
    stamp = root / f".{resource.name}.complete"
    if dataset_dir.exists() and stamp.exists() and stamp.read_text().strip() == md5:
        print(f"{resource.name} is already there: {dataset_dir} (nothing to download).")
        return dataset_dir

    if dataset_dir.exists():
        print(f"{dataset_dir} exists but has no completion stamp; extracting again to be sure.")
    root.mkdir(parents=True, exist_ok=True)
    archive = root / resource.filename
    if archive.exists():
        print(f"Verifying {archive} ({_human_size(archive.stat().st_size)}) ...")
    if archive.exists() and calculate_md5(archive) == md5:
        print(f"Found verified {archive}; skipping the download.")
    else:
        if archive.exists():
            corrupt = _set_aside(archive, archive)
            print(f"{archive} has a wrong checksum: moved to {corrupt}, downloading again.")
        source = _resolve_url(resource, url)
        print(f"Downloading {resource.name} ({_human_size(resource.size_bytes)}) from {source}")
        print(f"  to {archive}")
        download_file(source, archive, md5=md5, progress=progress)

    print(f"Extracting {archive.name} into {root} ...")
    stamp.unlink(missing_ok=True)
    safe_extract(archive, root)
    if not dataset_dir.exists():
        raise RuntimeError(
            f"Extracted {archive} but {dataset_dir} is missing: the archive does not have "
            f"the expected layout. Check that {archive.name} is the right file."
        )
    write_text_atomically(stamp, md5 + "\n")  # a stamp is never half-written
    if not keep_archive:
        archive.unlink()
    print(f"{resource.name} is ready: {dataset_dir}")
    return dataset_dir
