"""scripts/render_course.py (`make html`): executes notebooks into HTML pages with an index."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_course.py"


@pytest.fixture(scope="module")
def render_course():
    """The script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_course", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_course"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("render_course", None)


def write_notebook(path: Path, title: str, code_cells: list[str], intro: str) -> Path:
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{intro}\n\n**What it needs**: nothing.")]
    cells += [nbformat.v4.new_code_cell(source) for source in code_cells]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)
    return path


TINY_CELLS = [
    "import os\n"
    "print('fast =', os.environ['MNC_FAST'], '| data root =', os.environ['MNC_DATA_ROOT'])",
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(2, 2))\n"
    "ax.plot([0, 1], [1, 0]);",
    "import ipywidgets as widgets\nwidgets.IntSlider(value=3, max=9, description='image')",
]


def test_render_course_writes_pages_and_index(tmp_path: Path, render_course) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    tiny = write_notebook(
        notebook_dir / "00_tiny.ipynb",
        "00 · A tiny lesson",
        TINY_CELLS,
        "**What you will learn**\n\n* how to **add** numbers;\n* how to plot\n  a line.",
    )
    build = tmp_path / "build"
    lines: list[str] = []
    results = render_course.render_course([tiny], build, log=lines.append)

    assert [r.error for r in results] == [None]
    page = (build / "00_tiny.html").read_text()
    # fast mode, data under build/
    assert f"fast = 1 | data root = {(build / 'data').resolve()}" in page
    # the figure, embedded
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 1
    assert "application/vnd.jupyter.widget-state+json" in page  # the slider's state is saved
    assert "A tiny lesson" in page
    # the source notebook is left alone
    assert nbformat.read(tiny, as_version=4).cells[1].outputs == []

    index = (build / "index.html").read_text()
    assert render_course.COURSE_TITLE in index
    assert '<a href="00_tiny.html">00 · A tiny lesson</a>' in index
    assert "<li>how to <strong>add</strong> numbers;</li>" in index and "a line." in index
    assert "What it needs" not in index  # only the "What you will learn" bullets
    assert re.search(r"executed in \d+\.\d s", index)
    assert (
        lines[0] == "[1/1] 00_tiny.ipynb ..."
        and "ok" in lines[1]
        and lines[-1].startswith("rendered 1 notebooks")
    )
    # no temporary files left
    assert sorted(p.name for p in build.iterdir()) == ["00_tiny.html", "index.html"]


def test_failing_notebook_is_named_with_its_cell_and_the_others_still_render(
    tmp_path: Path, render_course, capsys
) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_notebook(
        notebook_dir / "00_broken.ipynb",
        "00 · Broken",
        ["x = 1", "raise ValueError('boom')", "y = 2"],
        "A lesson that fails.",
    )
    write_notebook(
        notebook_dir / "01_fine.ipynb", "01 · Fine", ["print('still here')"], "A lesson that works."
    )
    build = tmp_path / "build"

    status = render_course.main(["--notebook-dir", str(notebook_dir), "--build-dir", str(build)])

    assert status == 1
    stderr = capsys.readouterr().err
    assert (
        "00_broken.ipynb failed at cell 3 of 4 (code cell 2, `raise ValueError('boom')`): "
        "ValueError: boom"
        in stderr
    )
    assert "01_fine" not in stderr
    assert "ValueError" in (build / "00_broken.html").read_text()  # the page shows the traceback
    assert "still here" in (build / "01_fine.html").read_text()
    index = (build / "index.html").read_text()
    assert "FAILED at cell 3 of 4" in index
    assert "A lesson that works." in index  # the first paragraph as the summary


def test_a_notebook_that_stops_on_purpose_is_rendered_as_stopped_not_failed(
    tmp_path: Path, render_course, capsys
) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_notebook(
        notebook_dir / "09_gpu.ipynb",
        "09 · Needs a GPU",
        ["from mnc_teach.course.tracks import StopNotebook\nprint('checking')",
         "raise StopNotebook('no GPU here: run it on a machine with one')", "print('never')"],
        "A lesson that needs what this machine lacks.",
    )
    build = tmp_path / "build"

    status = render_course.main(["--notebook-dir", str(notebook_dir), "--build-dir", str(build)])

    assert status == 0 and "failed" not in capsys.readouterr().err
    page = (build / "09_gpu.html").read_text()
    assert "The notebook stops here." in page and "Traceback" not in page
    assert page.count("never") == 1  # in the last cell's source only: that cell did not run
    index = (build / "index.html").read_text()
    assert "stopped: no GPU here: run it on a machine with one" in index


def test_channel_reads_wait_in_one_second_slices(render_course) -> None:
    """A missed wake-up costs at most a slice, not the whole timeout; the timeout still holds."""
    calls: list[float | None] = []

    async def get_msg(timeout=None):
        calls.append(timeout)
        if len(calls) < 3:
            raise Empty  # as when pyzmq's poll misses a message until its timeout ends
        return {"msg_type": "execute_reply"}

    sliced = render_course._sliced(get_msg)
    assert asyncio.run(sliced(timeout=None)) == {"msg_type": "execute_reply"}
    assert calls == [render_course.POLL_SLICE_S] * 3
    calls.clear()
    assert asyncio.run(sliced(timeout=60))["msg_type"] == "execute_reply" and len(calls) == 3
    assert all(t <= render_course.POLL_SLICE_S for t in calls)

    async def never(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(render_course._sliced(never)(timeout=2.5))
    assert 2.4 < time.monotonic() - start < 4
