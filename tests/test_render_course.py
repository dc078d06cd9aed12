"""scripts/render_course.py (`make html`): executes notebooks into HTML pages with an index; and
scripts/offline_pages.py's copies of the pages' scripts (no network here: npm is faked; the real
download and the check in Chromium are in tests/test_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_course.py"



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


# ipywidgets 8 saves its models as state format 2 with these modules; @jupyter-widgets/html-manager
# 1.0.15 (the vendored renderer) bundles them: ipywidgets 8's base and controls (and 7's, as base7
# and controls7) and its own output widget. Another ipywidgets may need another renderer.
HTML_MANAGER_1_MODULES = {("@jupyter-widgets/base", "2.0.0"),
                          ("@jupyter-widgets/controls", "2.0.0"),
                          ("@jupyter-widgets/output", "1.0.0")}


def saved_widget_modules(page: str) -> set[tuple[str, str]]:
    """(module, version) of every widget model saved in a rendered page (state format 2)."""
    match = re.search(r'application/vnd.jupyter.widget-state\+json">\s*(.*?)\s*</script>', page,
                      flags=re.DOTALL)
    state = json.loads(match.group(1))
    assert state["version_major"] == 2, state["version_major"]
    return {(model["model_module"], model["model_module_version"])
            for model in state["state"].values()}


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
    results = render_course.render_course([tiny], build, fast=True,
                                          scripts=render_course.CDN_SCRIPTS, log=lines.append)

    assert [r.error for r in results] == [None]
    page = (build / "00_tiny.html").read_text()
    # fast mode, data under build/fast (full mode's: build/full)
    assert f"fast = 1 | data root = {(build / 'fast' / 'data').resolve()}" in page
    # the figure, embedded
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 1
    # the slider's state is saved, in the form @jupyter-widgets/html-manager 1.0.15 renders
    assert saved_widget_modules(page) <= HTML_MANAGER_1_MODULES
    assert "A tiny lesson" in page
    # the source notebook is left alone
    assert nbformat.read(tiny, as_version=4).cells[1].outputs == []

    index = (build / "index.html").read_text()
    assert render_course.COURSE_TITLE in index
    assert '<a href="00_tiny.html">00 · A tiny lesson</a>' in index
    assert "<li>how to <strong>add</strong> numbers;</li>" in index and "a line." in index
    assert "What it needs" not in index  # only the "What you will learn" bullets
    assert re.search(r"executed in \d+\.\d s", index)
    assert "fast mode (MNC_FAST=1" in index and "unpkg.com" in index  # where the widgets load from
    assert lines[0].startswith("rendering 1 notebooks in fast mode (MNC_FAST=1)")
    assert lines[1] == "[1/1] 00_tiny.ipynb ..."
    assert re.match(r"\[1/1\] 00_tiny.ipynb: ok, \d+\.\d s \(so far 0 min \d+ s\)", lines[2])
    assert re.match(r"rendered 1 notebooks in fast mode \(MNC_FAST=1\) in \d+\.\d s", lines[-1])
    # no temporary files left
    assert sorted(p.name for p in build.iterdir()) == [
        "00_tiny.html", "index.html", "paper_vs_code.html"]  # docs/*.md rendered beside the pages


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

    status = render_course.main(["--notebook-dir", str(notebook_dir), "--build-dir", str(build),
                                 "--fast", "--cdn"])

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

    status = render_course.main(["--notebook-dir", str(notebook_dir), "--build-dir", str(build),
                                 "--fast", "--cdn"])

    assert status == 0 and "failed" not in capsys.readouterr().err
    page = (build / "09_gpu.html").read_text()
    assert "The notebook stops here." in page and "Traceback" not in page
    assert page.count("never") == 1  # in the last cell's source only: that cell did not run
    index = (build / "index.html").read_text()
    assert "stopped: no GPU here: run it on a machine with one" in index


def fake_tarball(path: Path, files: dict[str, bytes]) -> str:
    """An npm-style tarball (members under package/) at ``path``; returns its sha512 integrity."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(f"package/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_unpack_web_package_checks_the_tarball_and_copies_only_the_listed_files(
    tmp_path: Path, render_course
) -> None:
    offline = sys.modules["offline_pages"]
    tarball = tmp_path / "html-manager-1.0.15.tgz"
    integrity = fake_tarball(tarball, {"dist/embed-amd.js": b"define()", "dist/ab12.woff2": b"font",
                                       "dist/embed.js": b"not this", "README.md": b"nor this"})
    package = offline.WebPackage("html-manager@1.0.15", integrity,
                                 ("dist/embed-amd.js", "dist/*.woff2"), "jupyter-widgets")

    written = offline.unpack_web_package(package, tarball, tmp_path / "out")

    assert sorted(path.name for path in written) == ["ab12.woff2", "embed-amd.js"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ab12.woff2", "embed-amd.js"]
    assert (tmp_path / "out" / "embed-amd.js").read_bytes() == b"define()"
    other = offline.WebPackage(package.spec, "sha512-AAAA", package.files, package.folder)
    with pytest.raises(ValueError, match="does not match the pinned integrity"):
        offline.unpack_web_package(other, tarball, tmp_path / "other")
    lacking = offline.WebPackage(package.spec, integrity, ("dist/*.ttf",), package.folder)
    with pytest.raises(ValueError, match=r"has no dist/\*\.ttf"):
        offline.unpack_web_package(lacking, tarball, tmp_path / "lacking")


def fake_fetch(cache: Path) -> Path:
    """What fetch_web_packages leaves in the cache, without npm: one file per listed name."""
    for package in sys.modules["offline_pages"].WEB_PACKAGES:
        folder = cache / package.folder
        folder.mkdir(parents=True, exist_ok=True)
        for pattern in package.files:
            (folder / Path(pattern).name.replace("*", "font")).write_text(f"// {package.spec}")
    return cache


def test_pages_load_the_copies_beside_them_and_typeset_with_mathjax_3(
    tmp_path: Path, render_course
) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    tiny = write_notebook(notebook_dir / "00_math.ipynb", "00 · Math", TINY_CELLS[2:],
                          "The loss $L = L_1 + L_2$.")
    build = tmp_path / "build"
    lines: list[str] = []
    scripts = render_course.install_page_scripts(build, tmp_path / "cache", fetch=fake_fetch)
    render_course.render_course([tiny], build, fast=True, scripts=scripts, log=lines.append)

    static = build / "_static"
    assert (static / "jupyter-widgets" / "embed-amd.js").is_file()
    assert (static / "jupyter-widgets" / "font.woff2").is_file()  # the icon fonts beside it
    assert (static / "requirejs" / "require.js").is_file()
    assert (static / "mathjax" / "tex-svg-full.js").is_file()
    assert lines[0].startswith("offline scripts: @jupyter-widgets/html-manager@1.0.15, "
                               "requirejs@2.3.8, mathjax@3.2.2 copied to")
    page = (build / "00_math.html").read_text()
    assert '<script src="_static/requirejs/require.js"></script>' in page
    assert "var widgetRendererSrc = '_static/jupyter-widgets/embed-amd.js';" in page
    # embed-amd.js finds its fonts beside the modules it defines: mapped to its own folder
    assert "'@jupyter-widgets/html-manager/dist': '_static/jupyter-widgets'" in page
    # MathJax 3, configured before it loads, for $...$ as the notebooks write it
    assert "window.MathJax = {" in page and "inlineMath: [['$', '$'], ['\\\\(', '\\\\)']]" in page
    assert '<script src="_static/mathjax/tex-svg-full.js"></script>' in page
    assert "MathJax.Hub" not in page  # no MathJax 2 configuration left
    # no CDN left but mermaid's, which the page imports only for ```mermaid diagrams (none here)
    cdn_urls = re.findall(r"https?://(?:unpkg|cdnjs|cdn\.jsdelivr)[^\"' ]*", page)
    assert cdn_urls and all("/mermaid" in url for url in cdn_urls), cdn_urls
    assert "$L = L_1 + L_2$" in page  # left for MathJax
    index = (build / "index.html").read_text()
    assert "the pages need no network" in index and "unpkg.com" not in index


def test_without_npm_the_pages_use_the_cdns_and_one_line_says_so(
    tmp_path: Path, render_course, monkeypatch
) -> None:
    offline = sys.modules["offline_pages"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm
    scripts = offline.install_page_scripts(tmp_path / "build", tmp_path / "cache")
    assert not scripts.offline and scripts.exporter_settings == {}
    assert scripts.note.startswith("offline scripts: npm could not fetch them (FileNotFoundError")
    assert "\n" not in scripts.note and "unpkg.com" in scripts.index_sentence
    assert not (tmp_path / "build" / "_static").exists()

    def npm_fails(cache: Path) -> Path:
        raise subprocess.SubprocessError("npm pack requirejs@2.3.8 failed: ENOTFOUND")

    scripts = offline.install_page_scripts(tmp_path / "build", tmp_path / "cache", fetch=npm_fails)
    assert "ENOTFOUND); the pages load require.js, the widget renderer and MathJax from CDNs" in (
        scripts.note)


def test_full_mode_is_the_default_with_its_own_data_root(tmp_path: Path, render_course,
                                                          capsys) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_notebook(notebook_dir / "00_env.ipynb", "00 · Env", TINY_CELLS[:1], "Which mode.")
    build = tmp_path / "build"

    status = render_course.main(["--notebook-dir", str(notebook_dir), "--build-dir", str(build),
                                 "--cdn"])

    assert status == 0
    # full mode; notebook 06's runs go to <data root>/../runs = build/full/runs, where 07 and 08
    # look; the fast mode's smaller datasets (build/fast) never meet the full ones
    page = (build / "00_env.html").read_text()
    assert f"fast = 0 | data root = {(build / 'full' / 'data').resolve()}" in page
    out = capsys.readouterr().out
    assert f"full mode (MNC_FAST=0); datasets and runs in {build / 'full'}\n" in out
    assert "full mode (MNC_FAST=0)" in (build / "index.html").read_text()
    assert "offline scripts" not in out  # --cdn: no npm asked


def test_links_to_docs_pages_reach_rendered_pages_and_anchors(render_course, tmp_path) -> None:
    # Every ../docs/<page>.md#anchor link of a notebook names a page of docs/ and one of its
    # headings' GitHub anchors; rendered, the link points at <page>.html beside the notebook's page.
    pages = {p.stem: p for p in render_course.render_docs(SCRIPT.parents[1] / "docs", tmp_path)}
    assert "paper_vs_code" in pages
    links = []
    for notebook in sorted((SCRIPT.parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            links += [(notebook.name, *m) for m in
                      re.findall(r"\.\./docs/([\w-]+)\.md(?:#([\w-]+))?", "".join(cell["source"]))]
    assert links, "the notebooks link docs/paper_vs_code.md"
    for notebook, page, anchor in links:
        assert page in pages, f"{notebook} links docs/{page}.md, which does not exist"
        if anchor:
            assert f'id="{anchor}"' in pages[page].read_text(), (
                f"{notebook} links docs/{page}.md#{anchor}: no heading has that anchor")
    assert render_course.github_anchor("The paper's results") == "the-papers-results"
    assert render_course.github_anchor("Stages 2 and 3: RoI warping, masks and classes") == (
        "stages-2-and-3-roi-warping-masks-and-classes")
    rendered = render_course.link_docs_pages('<a href="../docs/paper_vs_code.md#inference">x</a>')
    assert rendered == '<a href="paper_vs_code.html#inference">x</a>'
