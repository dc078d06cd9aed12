"""Render the course for reading without running it: execute every notebook (full mode by default)
and export it to ``<build>/<name>.html``, with ``<build>/index.html`` listing them all.

    python scripts/render_course.py [--build-dir build] [--fast]   # make html / make html-fast

Each notebook runs in a fresh kernel with MNC_FAST=0 and MNC_DATA_ROOT=<build>/full/data
(``--fast``: MNC_FAST=1, <build>/fast/data: the two modes' datasets differ in size), so datasets and
runs stay under the build folder; notebook 06 trains into <data root>/../runs, where 07 and 08 load
its checkpoint. The pages load require.js, the widget renderer and MathJax from copies in
<build>/_static (scripts/offline_pages.py fetches them with npm), so they work with no network;
without npm or a network they load them from CDNs, and one line says so. matplotlib keeps the
kernel's inline backend (headless; with MPLBACKEND=Agg figures would come out as "<Figure ...>"
text, not pictures), and the widgets' state is saved into the page. A notebook that fails does not
stop the others: its page is written up to the failing cell (traceback included), the index marks
it, and the script exits with status 1 naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import datetime
import html
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter
from nbconvert.filters.markdown import markdown2html

from mnc_teach.course.polling import PollingNotebookClient
from mnc_teach.fileio import write_text_atomically

if str(Path(__file__).resolve().parent) not in sys.path:  # scripts/ is not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_pages import CDN_SCRIPTS, PageScripts, install_page_scripts  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
COURSE_TITLE = "mnc-teach: Multi-task Network Cascades, built step by step in PyTorch"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
# exceptions a notebook raises to stop on purpose (mnc_teach.course.tracks): not failures
DESIGNED_STOPS = ("StopNotebook", "DataMissing")
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
CELL_TIMEOUT_S = 300  # fast-mode cells take seconds; a stuck kernel fails in minutes, not hours
FULL_CELL_TIMEOUT_S = 3600  # full-mode training cells take minutes on a CPU
@dataclass
class RenderResult:
    """What became of one notebook: its page, title, summary (HTML), time, and the error if it
    failed."""

    notebook: Path
    html_path: Path
    title: str
    summary_html: str
    seconds: float
    error: str | None = None  # "cell 12 of 33 (code cell 7, `train(cfg)`): ValueError: ..."
    stopped: str | None = None  # a designed stop (StopNotebook: no GPU, no data): its message


def notebook_title_and_summary(notebook: nbformat.NotebookNode) -> tuple[str, str]:
    """The first ``# `` heading of the first markdown cell, and as HTML its "What you will learn"
    bullets (or, without them, its first paragraph after the heading)."""
    markdown_cells = (cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    first_markdown = next(markdown_cells, "")
    title_match = re.search(r"^#\s+(.+)$", first_markdown, flags=re.MULTILINE)
    title = title_match.group(1).strip() if title_match else ""
    learn = re.search(
        r"\*\*What you will learn\*\*\s*\n+((?:[*-] .*\n?(?:[ \t]+\S.*\n?)*)+)", first_markdown
    )
    if learn:
        summary = learn.group(1)
    else:
        body = first_markdown[title_match.end():] if title_match else first_markdown
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
        summary = paragraphs[0] if paragraphs else ""
    return title, markdown2html(summary) if summary else ""


def _describe_cell(notebook: nbformat.NotebookNode, cell_index: int) -> str:
    """'cell 12 of 33 (code cell 7, `first line`)' for error messages (numbers 1-based)."""
    cell = notebook.cells[cell_index]
    code_number = sum(1 for c in notebook.cells[: cell_index + 1] if c.cell_type == "code")
    first_line = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    if len(first_line) > 60:
        first_line = first_line[:57] + "..."
    where = f"cell {cell_index + 1} of {len(notebook.cells)}"
    return f"{where} (code cell {code_number}, `{first_line}`)"


def _error_summary(error: Exception) -> str:
    if isinstance(error, CellExecutionError):
        return f"{error.ename}: {error.evalue}"
    if isinstance(error, CellTimeoutError):
        return f"timed out ({error})".splitlines()[0]
    return f"{type(error).__name__}: {error}".splitlines()[0]


def render_notebook(
    path: Path, build_dir: Path, *, data_root: Path, fast: bool = True,
    timeout_s: int = CELL_TIMEOUT_S, scripts: PageScripts = CDN_SCRIPTS,
) -> RenderResult:
    """Execute ``path`` in a fresh kernel (cwd = its folder) and write ``build_dir/<stem>.html``
    (loading its scripts as ``scripts`` says)."""
    notebook = nbformat.read(path, as_version=4)
    title, summary_html = notebook_title_and_summary(notebook)
    env = {
        **os.environ,
        "MNC_FAST": "1" if fast else "0",
        "MNC_DATA_ROOT": str(data_root.resolve()),
        "MPLBACKEND": INLINE_BACKEND,
    }
    current_cell = {"index": 0}

    def remember_cell(cell, cell_index: int) -> None:
        current_cell["index"] = cell_index

    client = PollingNotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", store_widget_state=True,
        resources={"metadata": {"path": str(path.parent.resolve())}}, on_cell_start=remember_cell,
    )
    error = stopped = None
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        if exc.ename in DESIGNED_STOPS:  # the notebook says what it needs and stops on purpose
            stopped = exc.evalue
        else:
            error = f"{_describe_cell(notebook, current_cell['index'])}: {_error_summary(exc)}"
    except (CellTimeoutError, DeadKernelError) as exc:
        error = f"{_describe_cell(notebook, current_cell['index'])}: {_error_summary(exc)}"
    seconds = time.perf_counter() - start
    exporter = HTMLExporter(template_name="lab", embed_images=True, **scripts.exporter_settings)
    page, _ = exporter.from_notebook_node(
        notebook, resources={"metadata": {"name": title or path.stem}}
    )
    html_path = write_text_atomically(build_dir / f"{path.stem}.html", link_docs_pages(page))
    return RenderResult(
        path, html_path, title or path.stem, summary_html, seconds, error, stopped
    )


# a notebook's link to a page of docs/ (../docs/<name>.md#anchor), as nbconvert writes it
DOCS_LINK = re.compile(r'href="\.\./docs/([\w-]+)\.md(#[^"]*)?"')


def link_docs_pages(page: str) -> str:
    """``page`` with its links to ``../docs/<name>.md`` pointing at the rendered
    ``<name>.html`` beside it (anchors kept)."""
    return DOCS_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', page)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens
    ("The paper's results" -> "the-papers-results"); the notebooks link docs/ pages with them."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def docs_page(markdown: str) -> str:
    """A page of docs/ (markdown) as a standalone HTML page whose headings carry GitHub's
    anchors."""
    body = markdown2html(markdown)
    body = re.sub(
        r'<h([1-6]) id="[^"]*">(.*?)<a class="anchor-link" href="#[^"]*">&#182;</a></h\1>',
        lambda m: (f'<h{m.group(1)} id="{github_anchor(html.unescape(m.group(2)))}">'
                   f"{m.group(2)}</h{m.group(1)}>"),
        body,
    )
    title_match = re.search(r"^#\s+(.+)$", markdown, flags=re.MULTILINE)
    title = title_match.group(1).strip() if title_match else COURSE_TITLE
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; vertical-align: top; }}
code {{ background: #f4f4f4; padding: 0 0.2rem; }}
</style></head><body>
<p><a href="index.html">the course</a></p>
{link_docs_pages(body)}
</body></html>
"""


def render_docs(docs_dir: Path, build_dir: Path) -> list[Path]:
    """Every ``docs_dir/*.md`` as ``build_dir/<name>.html`` (what the notebooks' links reach)."""
    return [
        write_text_atomically(build_dir / f"{source.stem}.html", docs_page(source.read_text()))
        for source in sorted(docs_dir.glob("*.md"))
    ]


def index_page(results: list[RenderResult], fast: bool, total_seconds: float,
               scripts: PageScripts = CDN_SCRIPTS) -> str:
    """The course's front page: each notebook's title, link, what it teaches and how long it ran."""
    mode = ("fast mode (MNC_FAST=1: small datasets, short training)" if fast
            else "full mode (MNC_FAST=0)")
    items = []
    for result in results:
        if result.error:
            status = f'<p class="failed">FAILED at {html.escape(result.error)}</p>'
        elif result.stopped:
            status = f'<p class="time">stopped: {html.escape(result.stopped)}</p>'
        else:
            status = f'<p class="time">executed in {result.seconds:.1f} s</p>'
        link = f'<a href="{html.escape(result.html_path.name)}">{html.escape(result.title)}</a>'
        items.append(f"<li><h2>{link}</h2>\n{result.summary_html}\n{status}</li>")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(COURSE_TITLE)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.45; }}
ol {{ padding-left: 0; list-style: none; }} li > h2 {{ margin-bottom: 0.3rem; font-size: 1.25rem; }}
.time {{ color: #555; font-size: 0.9rem; }} .failed {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(COURSE_TITLE)}</h1>
<p>Every notebook below was executed in {mode} on {stamp} ({total_seconds:.0f} s in all) and
saved with its outputs, so the course can be read without running it. {scripts.index_sentence}
A page runs no Python: moving a widget's slider recomputes nothing; to use the widgets, run the
notebooks with <code>make lab</code>.</p>
<ol>
{chr(10).join(items)}
</ol>
<p>Where the course differs from the paper and from the official code, and why:
<a href="paper_vs_code.html">MNC: the paper, the official code, and this course</a>.</p>
</body></html>
"""


def _minutes(seconds: float) -> str:
    """539.6 -> "9 min 0 s": rounded to whole seconds first, so never "8 min 60 s"."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s"


def render_course(
    notebooks: list[Path],
    build_dir: Path,
    *,
    data_root: Path | None = None,
    fast: bool = False,
    timeout_s: int | None = None,
    scripts: PageScripts | None = None,
    log=print,
) -> list[RenderResult]:
    """Render ``notebooks`` in order into ``build_dir`` (pages + index.html); returns one result
    for each. ``data_root``: <build>/full/data or <build>/fast/data (runs go beside it);
    ``scripts``: vendored with :func:`install_page_scripts` (CDNs when that fails)."""
    data_root = data_root or build_dir / ("fast" if fast else "full") / "data"
    timeout_s = timeout_s or (CELL_TIMEOUT_S if fast else FULL_CELL_TIMEOUT_S)
    build_dir.mkdir(parents=True, exist_ok=True)
    if scripts is None:
        scripts = install_page_scripts(build_dir)
    if scripts.note:
        log(scripts.note)
    mode = "fast mode (MNC_FAST=1)" if fast else "full mode (MNC_FAST=0)"
    log(f"rendering {len(notebooks)} notebooks in {mode}; datasets and runs in {data_root.parent}")
    results = []
    start = time.perf_counter()
    for number, path in enumerate(notebooks, start=1):
        log(f"[{number}/{len(notebooks)}] {path.name} ...")
        result = render_notebook(
            path, build_dir, data_root=data_root, fast=fast, timeout_s=timeout_s, scripts=scripts
        )
        results.append(result)
        outcome = (
            f"FAILED at {result.error}" if result.error
            else f"stopped: {result.stopped}" if result.stopped else "ok"
        )
        log(
            f"[{number}/{len(notebooks)}] {path.name}: {outcome}, {result.seconds:.1f} s "
            f"(so far {_minutes(time.perf_counter() - start)}) -> {result.html_path}"
        )
    total = time.perf_counter() - start
    render_docs(REPO_ROOT / "docs", build_dir)
    index = write_text_atomically(build_dir / "index.html",
                                  index_page(results, fast, total, scripts))
    log(f"rendered {len(results)} notebooks in {mode} in {total:.1f} s ({_minutes(total)}); "
        f"open {index}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook-dir", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--build-dir", type=Path, default=REPO_ROOT / "build")
    parser.add_argument(
        "--data-root", type=Path, default=None,
        help="MNC_DATA_ROOT (default: <build-dir>/full/data; --fast: <build-dir>/fast/data)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="fast mode (MNC_FAST=1): small datasets, a few training steps")
    mode.add_argument("--full", action="store_true", help="full mode (MNC_FAST=0), the default")
    parser.add_argument("--cdn", action="store_true",
                        help="no local copies of the pages' scripts: load them from CDNs")
    parser.add_argument(
        "--timeout", type=int, default=None,
        help=f"seconds per cell (default {FULL_CELL_TIMEOUT_S}, {CELL_TIMEOUT_S} with --fast)",
    )
    args = parser.parse_args(argv)
    notebooks = sorted(args.notebook_dir.glob(NOTEBOOK_GLOB))
    if not notebooks:
        print(f"render_course: no {NOTEBOOK_GLOB} in {args.notebook_dir}", file=sys.stderr)
        return 2
    results = render_course(
        notebooks,
        args.build_dir,
        data_root=args.data_root,
        fast=args.fast,
        timeout_s=args.timeout,
        scripts=CDN_SCRIPTS if args.cdn else None,
        log=lambda line: print(line, flush=True),
    )
    failed = [result for result in results if result.error]
    for result in failed:
        print(
            f"render_course: {result.notebook} failed at {result.error}; "
            f"its page {result.html_path} shows the traceback",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
