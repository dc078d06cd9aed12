"""Rendered pages that work with no network: the browser-side scripts they need, copied beside them,
and a check of a page in headless Chromium with every network request refused.

    python scripts/offline_pages.py build/07_five_stages_and_inference.html [--out-dir DIR]

A page of ``make html`` needs three scripts: require.js, the widget renderer
(``@jupyter-widgets/html-manager``'s ``embed-amd.js``, which draws each widget's saved state) and
MathJax (the formulas). nbconvert loads them from CDNs; :func:`install_page_scripts` fetches pinned
versions with ``npm pack`` (checked against npm's sha512, cached in ~/.cache/mnc-teach/web) and
copies them into ``<build>/_static/``; ``scripts/render_course.py`` points the pages there.

The check (:func:`check_page`, the command above) opens a page from disk in Debian's Chromium
(/usr/bin/chromium, through Playwright) with every request that is not ``file:`` or ``data:``
aborted, waits for the widgets and MathJax, and reports what rendered: the widget views, the
figures inside them, the typeset formulas and TeX left untypeset. It saves screenshots of the
first widget with a figure and of the first formula, and exits with 1 when something is missing.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STATIC_DIR = "_static"  # <build>/_static: the pages' scripts, fonts and licenses
WEB_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnc-teach" / "web"
NPM_TIMEOUT_S = 300
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class WebPackage:
    """An npm package the pages load in the browser: its pinned tarball (npm's sha512 integrity)
    and the files copied from it (patterns inside the package) into ``_static/<folder>``."""

    spec: str
    integrity: str
    files: tuple[str, ...]
    folder: str


WEB_PACKAGES = (
    # the renderer of ipywidgets 7 and 8 states (AMD build, needs require.js) and its icon fonts
    WebPackage("@jupyter-widgets/html-manager@1.0.15",
               "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp"
               "47bCrJ3CQA==",
               ("dist/embed-amd.js", "dist/*.woff", "dist/*.woff2", "dist/*.ttf", "dist/*.eot",
                "dist/*.svg", "dist/embed.js.LICENSE.txt"), "jupyter-widgets"),
    WebPackage("requirejs@2.3.8",
               "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFl"
               "yQXSowL6Mw==", ("require.js",), "requirejs"),
    # MathJax 3: TeX input with every extension and SVG output in one file (no fonts to load)
    WebPackage("mathjax@3.2.2",
               "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1v"
               "O+geW0OhGw==", ("es5/tex-svg-full.js", "LICENSE"), "mathjax"),
)
# nbconvert's lab template, changed where the vendored copies need it:
# - embed-amd.js looks for its icon fonts beside the AMD modules it defines (webpack's public path
#   is the folder of the module's URL, e.g. ./@jupyter-widgets/base.js): require.js maps them to
#   the folder of embed-amd.js;
# - the template configures MathJax 2 (MathJax.Hub.Config in a text/x-mathjax-config script, which
#   MathJax 3 ignores): the same settings in MathJax 3's form, set before it loads.
PAGE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
{{ super() }}
{%- set assets = resources.widget_renderer_url.rsplit('/', 1)[0] %}
<script>
requirejs.config({paths: {'@jupyter-widgets': '{{ assets }}',
                          '@jupyter-widgets/html-manager/dist': '{{ assets }}'}});
</script>
{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'}
};
</script>
<script src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
"""
OFFLINE_SENTENCE = (
    "Widgets show their last state (their controls and the figure they drew last) and formulas "
    "are typeset by copies of the widget renderer (@jupyter-widgets/html-manager 1.0.15), "
    f"require.js 2.3.8 and MathJax 3.2.2 in <code>{STATIC_DIR}/</code>: the pages need no network."
)
CDN_SENTENCE = (
    "Widgets show their last state when the browser can load the widget renderer (from unpkg.com) "
    "and require.js, and formulas are typeset when it can load MathJax 2.7.7 (both from "
    "cdnjs.cloudflare.com): these pages were rendered without local copies of those scripts, so "
    "they need a network."
)


@dataclass(frozen=True)
class PageScripts:
    """Where the pages load require.js, the widget renderer and MathJax from."""

    offline: bool
    note: str  # one line for the log ("" for the CDNs by choice)
    exporter_settings: dict  # HTMLExporter traits
    index_sentence: str  # what the index page says about it


CDN_SCRIPTS = PageScripts(False, "", {}, CDN_SENTENCE)  # nbconvert's defaults


def _integrity(tarball: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()


def unpack_web_package(package: WebPackage, tarball: Path, dest: Path) -> list[Path]:
    """Check ``tarball`` against the pinned integrity and copy the package's ``files`` (regular
    files only, flattened to their names) into ``dest``; returns the files written.

    Raises:
        ValueError: the tarball is not the pinned one, or lacks one of ``files``.
    """
    if _integrity(tarball) != package.integrity:
        raise ValueError(f"{tarball.name} does not match the pinned integrity of {package.spec}")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            inner = member.name.removeprefix("package/")
            if member.isfile() and any(fnmatch.fnmatch(inner, p) for p in package.files):
                target = dest / Path(inner).name
                target.write_bytes(archive.extractfile(member).read())
                written.append(target)
    names = [path.name for path in written]
    missing = [p for p in package.files if not fnmatch.filter(names, Path(p).name)]
    if missing:
        raise ValueError(f"{package.spec} has no {', '.join(missing)}")
    return written


def fetch_web_packages(cache: Path = WEB_CACHE) -> Path:
    """The files of every :data:`WEB_PACKAGES` in ``cache/<folder>/``, fetched with ``npm pack``
    (the tarball only: no dependencies, no install scripts) unless cached; returns ``cache``.

    Raises:
        OSError, subprocess.SubprocessError, ValueError: no npm, no network, a bad tarball.
    """
    for package in WEB_PACKAGES:
        folder = cache / package.folder
        fingerprint = hashlib.sha256(package.integrity.encode()).hexdigest()[:16]
        stamp = cache / f".{package.folder}.{fingerprint}"  # written once the folder is complete
        if stamp.is_file() and folder.is_dir():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            reply = subprocess.run(
                ["npm", "pack", "--json", "--pack-destination", tmp, package.spec],
                capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False, cwd=tmp,
            )
            if reply.returncode != 0:
                last = (reply.stderr.strip().splitlines() or ["no message"])[-1]
                raise subprocess.SubprocessError(f"npm pack {package.spec} failed: {last}")
            shutil.rmtree(folder, ignore_errors=True)
            tarball = Path(tmp) / json.loads(reply.stdout)[0]["filename"]
            unpack_web_package(package, tarball, folder)
        stamp.touch()
    return cache


def install_page_scripts(build_dir: Path, cache: Path = WEB_CACHE,
                         fetch=fetch_web_packages) -> PageScripts:
    """Copy the scripts of :data:`WEB_PACKAGES` into ``build_dir/_static`` and point the pages
    there; when ``fetch`` fails, nbconvert's CDNs with a note that says why."""
    try:
        fetched = fetch(cache)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        note = (f"offline scripts: npm could not fetch them ({reason}); the pages load require.js, "
                "the widget renderer and MathJax from CDNs")
        return PageScripts(False, note, {}, CDN_SENTENCE)
    static = build_dir / STATIC_DIR
    for package in WEB_PACKAGES:
        shutil.rmtree(static / package.folder, ignore_errors=True)
        shutil.copytree(fetched / package.folder, static / package.folder)
    settings = {
        "require_js_url": f"{STATIC_DIR}/requirejs/require.js",
        "widget_renderer_url": f"{STATIC_DIR}/jupyter-widgets/embed-amd.js",
        "mathjax_url": f"{STATIC_DIR}/mathjax/tex-svg-full.js",
        "raw_template": PAGE_TEMPLATE,
    }
    note = (f"offline scripts: {', '.join(p.spec for p in WEB_PACKAGES)} copied to {static} "
            f"(npm tarballs cached in {cache})")
    return PageScripts(True, note, settings, OFFLINE_SENTENCE)


# --- the check in Chromium -------------------------------------------------------------------
WIDGET_VIEW_SCRIPT = 'script[type="application/vnd.jupyter.widget-view+json"]'
WIDGET_FIGURE = ".jupyter-widgets img[src^='data:image/png']"
RENDERED_VIEW = ".widget-subarea > .jupyter-widgets"  # where embed-amd.js draws a saved view
# what the page shows once the widget renderer and MathJax are done (evaluated in the page)
PAGE_STATE_JS = """([figureSelector, viewSelector, renderedSelector]) => {
  const figures = [...document.querySelectorAll(figureSelector)].map(img => {
    const box = img.getBoundingClientRect();
    const shown = box.width > 0 && box.height > 0 && getComputedStyle(img).visibility !== 'hidden';
    return {width: img.naturalWidth, height: img.naturalHeight, visible: shown};
  });
  const markdown = [...document.querySelectorAll('.jp-RenderedMarkdown')].map(element => {
    const prose = element.cloneNode(true);  // without code, where a $ is no formula
    prose.querySelectorAll('code, pre').forEach(code => code.remove());
    return prose.textContent;
  });
  return {
    views: document.querySelectorAll(viewSelector).length,
    rendered: document.querySelectorAll(renderedSelector).length,
    figures,
    mathjax: window.MathJax && window.MathJax.version || null,
    formulas: document.querySelectorAll('mjx-container').length,
    math_errors: document.querySelectorAll('mjx-merror').length,
    untypeset: markdown.join('\\n').match(/\\$[^$\\n]+\\$/g) || [],
  };
}"""
ALL_VIEWS_RENDERED_JS = """([viewSelector, renderedSelector]) =>
  document.querySelectorAll(renderedSelector).length
    >= document.querySelectorAll(viewSelector).length"""


@dataclass
class PageCheck:
    """What a page showed in Chromium with the network off."""

    page: Path
    views: int = 0  # widget views saved in the page
    rendered: int = 0  # widget views the renderer drew
    figures: list[dict] = field(default_factory=list)  # PNGs inside widgets: width, height, visible
    mathjax: str | None = None  # MathJax's version, None when it did not load
    formulas: int = 0  # typeset formulas
    math_errors: int = 0
    untypeset: list[str] = field(default_factory=list)  # $...$ left as text in markdown
    blocked: list[str] = field(default_factory=list)  # requests refused (network)
    failed: list[str] = field(default_factory=list)  # local files that did not load
    screenshots: list[Path] = field(default_factory=list)

    def problems(self, *, need_figure: bool = True) -> list[str]:
        found = []
        if self.rendered < self.views:
            found.append(f"{self.rendered} of {self.views} widget views rendered")
        if need_figure and not any(f["visible"] and f["width"] for f in self.figures):
            found.append("no widget figure visible")
        if self.mathjax is None:
            found.append("MathJax did not load")
        if self.math_errors or self.untypeset:
            found.append(f"{self.math_errors} MathJax errors; TeX as text: {self.untypeset[:3]}")
        return found + [f"local file did not load: {url}" for url in self.failed]

    def summary(self) -> str:
        sizes = ", ".join(f"{f['width']}x{f['height']} px{'' if f['visible'] else ' (hidden)'}"
                          for f in self.figures) or "none"
        return (f"{self.page.name}: {self.rendered} of {self.views} widget views rendered; "
                f"figures in widgets: {sizes}; MathJax {self.mathjax or 'not loaded'}: "
                f"{self.formulas} formulas typeset, {self.math_errors} errors, "
                f"{len(self.untypeset)} left as text; "
                f"{len(self.blocked)} network requests refused"
                + "".join(f"\n  refused: {url}" for url in self.blocked[:10])
                + "".join(f"\n  screenshot: {path}" for path in self.screenshots))


def check_page(page: Path, out_dir: Path, *, timeout_ms: int = 60_000,
               chromium: Path = CHROMIUM) -> PageCheck:
    """Open ``page`` in headless Chromium with the network off (only ``file:`` and ``data:``
    load), wait for its widgets and formulas, screenshot them into ``out_dir``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    page = page.resolve()
    check = PageCheck(page)
    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS,
                                             headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, offline=True)

            def refuse_network(route) -> None:
                url = route.request.url
                if url.startswith(("file:", "data:", "blob:")):
                    route.continue_()
                else:
                    check.blocked.append(url)
                    route.abort("internetdisconnected")

            context.route("**/*", refuse_network)
            tab = context.new_page()
            tab.on("requestfailed", lambda request: request.url.startswith("file:")
                   and check.failed.append(request.url))
            tab.goto(page.as_uri(), wait_until="load", timeout=timeout_ms)
            try:  # every saved view drawn, MathJax done (or absent); what is missing is reported
                tab.wait_for_function(ALL_VIEWS_RENDERED_JS, timeout=timeout_ms,
                                      arg=[WIDGET_VIEW_SCRIPT, RENDERED_VIEW])
                tab.evaluate("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
                tab.evaluate("() => document.fonts.ready.then(() => true)")  # the icon fonts
                tab.wait_for_load_state("networkidle", timeout=timeout_ms)
            except PlaywrightTimeout:
                pass
            state = tab.evaluate(PAGE_STATE_JS, [WIDGET_FIGURE, WIDGET_VIEW_SCRIPT, RENDERED_VIEW])
            for key, value in state.items():
                setattr(check, key, value)
            check.screenshots = _screenshots(tab, out_dir, page.stem)
        finally:
            browser.close()
    return check


def _screenshots(tab, out_dir: Path, stem: str) -> list[Path]:
    """The first widget output with a figure, the first typeset formula's paragraph."""
    shots = []
    targets = {
        "widget": tab.locator(".jp-OutputArea-output", has=tab.locator(WIDGET_FIGURE)).first,
        "formula": tab.locator(".jp-RenderedMarkdown p, .jp-RenderedMarkdown li",
                               has=tab.locator("mjx-container")).first,
    }
    for name, locator in targets.items():
        if locator.count():
            path = out_dir / f"{stem}.{name}.png"
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=path)
            shots.append(path)
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=Path, help="rendered pages, e.g. build/07_*.html")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="screenshots (default: <page folder>/offline-check)")
    parser.add_argument("--no-figure", action="store_true",
                        help="do not require a figure inside a widget")
    args = parser.parse_args(argv)
    status = 0
    for page in args.pages:
        check = check_page(page, args.out_dir or page.parent / "offline-check")
        problems = check.problems(need_figure=not args.no_figure)
        print(check.summary())
        print("  OK" if not problems else "".join(f"  PROBLEM: {p}\n" for p in problems).rstrip())
        status = status or int(bool(problems))
    return status


if __name__ == "__main__":
    sys.exit(main())
