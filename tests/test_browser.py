"""The stage explorer in a real JupyterLab, driven by headless Chromium through Playwright; and a
rendered page (`make html`) read in Chromium with the network off.

Starts ``jupyter lab`` on 127.0.0.1 with a random token and throw-away config/runtime/IPython
folders, opens ``tests/browser/stage_explorer_demo.ipynb`` (a copy), runs it from the Run menu,
moves the "image" slider with the keyboard and checks that the figure's PNG changed. Screenshots
(before.png, after.png; failure.png on failure) go to the test's temp folder.

The offline test renders a tiny notebook (a widget with a figure, formulas) with the pages' scripts
from npm (scripts/offline_pages.py; fetched once, cached in ~/.cache/mnc-teach/web) and checks in
Chromium, every network request refused, that the figure and the formulas render.

Uses Debian's ``chromium`` (/usr/bin/chromium); Playwright never downloads a browser here. Without
it (or, for the offline test, without npm or its registry) the tests skip, unless
MNC_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from mnc_teach.config import get_preset, override, shortened
from mnc_teach.data import generate_shapes
from mnc_teach.engine.loop import train

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
DEMO = Path(__file__).resolve().parent / "browser" / "stage_explorer_demo.ipynb"
SERVER_START_S = 90  # generous everywhere: the CPU may be shared with other jobs
PAGE_TIMEOUT_MS = 90_000  # page load, kernel start, model load and first figure each take seconds
REDRAW_TIMEOUT_MS = 60_000
# the status bar's kernel item, e.g. "Python 3 (ipykernel) | Idle"
KERNEL_IDLE = re.compile(r"^(?!No Kernel).* \| Idle$")
FIGURE_IMG = ".jp-OutputArea-output .jupyter-widgets img[src^='data:image/png']"
# A few seconds of training: enough for proposals on the objects and mask-shaped masks in the
# screenshot.
TRAIN_IMAGES, TRAIN_STEPS = 16, 40
# JupyterLab settings of the throw-away config folder: no news pop-up, no update check (both go
# online).
NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}


def require_browser():
    """Playwright's sync API, or skip (fail under MNC_REQUIRE_BROWSER=1) when it or Chromium is
    missing."""
    required = os.environ.get("MNC_REQUIRE_BROWSER") == "1"
    problem = None
    if not CHROMIUM.exists():
        problem = (f"{CHROMIUM} is missing; install Debian's chromium (sudo apt-get install "
                   "chromium) to run this test")
    try:
        from playwright import sync_api
    except ImportError:
        problem = problem or ("the playwright package is missing; run `make venv` (it is in the "
                              "dev extra)")
    if problem:
        (pytest.fail if required else pytest.skip)(problem)
    return sync_api


@pytest.mark.parametrize("required, outcome",
                         [("", pytest.skip.Exception), ("1", pytest.fail.Exception)])
def test_missing_chromium_skips_here_and_fails_in_ci(required: str, outcome, monkeypatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("MNC_REQUIRE_BROWSER", required)
    with pytest.raises(outcome, match="apt-get install chromium"):
        require_browser()


def test_demo_notebook_committed_without_outputs() -> None:
    notebook = nbformat.read(DEMO, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells), f"{DEMO}: clear its outputs before committing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM (JupyterLab shuts its kernels down), then SIGKILL the server's process group."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        # a kernel left behind; the server leads its own session
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    server.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: Path):
    """A JupyterLab server on a tiny trained model; yields (base URL, token, log path, notebook
    name)."""
    require_browser()
    data_root = tmp_path / "data"
    generate_shapes(data_root / "shapes", seed=0, num_train=TRAIN_IMAGES, num_val=4,
                    progress=False)
    cfg = override(get_preset("shapes-cpu"), "data.root", str(data_root / "shapes"))
    train(shortened(override(cfg, "train.images_per_batch", 2), TRAIN_STEPS), tmp_path / "run",
          callbacks=())
    root_dir = tmp_path / "lab"
    root_dir.mkdir()
    # JupyterLab autosaves outputs into its copy, not into tests/
    shutil.copy(DEMO, root_dir / DEMO.name)
    config_dir = tmp_path / "jupyter_config"
    settings = (config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
                / "notification.jupyterlab-settings")
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(NOTIFICATION_SETTINGS))
    # without MPLBACKEND: the kernel's inline backend
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env |= {"JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"),
            "IPYTHONDIR": str(tmp_path / "ipython"), "MNC_DATA_ROOT": str(data_root),
            "MNC_DEMO_CHECKPOINT": str(tmp_path / "run" / "checkpoint.pt")}
    port, token = _free_port(), secrets.token_hex(16)
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
               "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root_dir}",
               "--LabApp.extension_manager=readonly"]  # readonly: never asks PyPI
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=root_dir, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n"
                            f"{log_path.read_text()}")
            try:
                with direct.open(f"{base}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n"
                            f"{log_path.read_text()}")
            time.sleep(0.5)
        yield base, token, log_path, DEMO.name
    finally:
        _stop(server)


@pytest.mark.browser
def test_stage_explorer_slider_redraws_in_jupyterlab(lab, tmp_path: Path) -> None:
    sync_api = require_browser()
    base, token, log_path, notebook = lab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
                                             headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=PAGE_TIMEOUT_MS)
            # Run only once the kernel is connected: before that, JupyterLab asks which kernel
            # to start.
            kernel_item = page.locator(".jp-StatusBar-TextItem", has_text=KERNEL_IDLE)
            kernel_item.wait_for(timeout=PAGE_TIMEOUT_MS)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            run_all = re.compile(r"^Run All Cells$")
            page.locator(".lm-Menu-itemLabel", has_text=run_all).click()
            figure = page.locator(FIGURE_IMG)
            figure.wait_for(timeout=PAGE_TIMEOUT_MS)
            # StageExplorer.widget
            explorer = page.locator(".jp-OutputArea-output > .widget-vbox").first
            image_label = page.locator(".widget-label", has_text=re.compile(r"^image$"))
            image_slider = explorer.locator(".widget-slider", has=image_label)
            readout = image_slider.locator(".widget-readout")
            status = explorer.locator(".widget-html-content")
            before = figure.get_attribute("src")
            status_before = status.inner_text()
            explorer.screenshot(path=tmp_path / "explorer_before.png")
            page.screenshot(path=tmp_path / "before.png")

            image_slider.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "([selector, old]) => { const img = document.querySelector(selector); "
                "return img && img.src !== old; }",
                arg=[FIGURE_IMG, before], timeout=REDRAW_TIMEOUT_MS,
            )
            after = page.locator(FIGURE_IMG).get_attribute("src")
            explorer.screenshot(path=tmp_path / "explorer_after.png")
            page.screenshot(path=tmp_path / "after.png")
            readout_after, status_after = readout.inner_text().strip(), status.inner_text()
        except BaseException:
            page.screenshot(path=tmp_path / "failure.png")
            print(f"failure screenshot: {tmp_path / 'failure.png'}\n"
                  f"jupyter lab log:\n{log_path.read_text()}")
            raise
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}: explorer_before.png, explorer_after.png, before.png, "
          "after.png")
    assert status_before.startswith("image 0 of 4 (val_000000)"), status_before
    assert readout_after == "1"
    assert status_after.startswith("image 1 of 4 (val_000001)"), status_after
    assert before.startswith("data:image/png;base64,")
    assert after.startswith("data:image/png;base64,")
    assert after != before


# a widget like the course's explorers (slider, icon button, figure in an Output), and formulas
OFFLINE_MARKDOWN = ("# 00 · Offline\n\nThe loss $L = L_1 + L_2 + L_3$, and\n\n"
                    "$$\\frac{\\partial L}{\\partial x_1} = \\sum_i w_i$$")
OFFLINE_WIDGET = """\
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

slider = widgets.IntSlider(value=3, max=9, description="image")
output = widgets.Output()
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1, 2], [0, slider.value, 0])
ax.set_title("a figure in a widget")
with output:
    display(fig)
plt.close(fig)
widgets.VBox([slider, widgets.Button(description="Reload", icon="refresh"), output])
"""



@pytest.mark.browser
def test_rendered_page_shows_widget_figure_and_formulas_with_the_network_off(
    render_course, tmp_path: Path
) -> None:
    require_browser()
    offline = sys.modules["offline_pages"]
    try:
        offline.fetch_web_packages()  # once: later runs find them in the cache
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
        required = os.environ.get("MNC_REQUIRE_BROWSER") == "1"
        (pytest.fail if required else pytest.skip)(
            f"npm could not fetch the pages' scripts ({type(error).__name__}: {error}); the "
            "offline pages need npm (Node.js) and its registry once")
    cells = [nbformat.v4.new_markdown_cell(OFFLINE_MARKDOWN),
             nbformat.v4.new_code_cell(OFFLINE_WIDGET)]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook_path = tmp_path / "00_offline.ipynb"
    nbformat.write(notebook, notebook_path)
    build = tmp_path / "build"
    results = render_course.render_course([notebook_path], build, fast=True, log=print)
    assert [result.error for result in results] == [None]

    check = offline.check_page(build / "00_offline.html", tmp_path / "screenshots",
                               chromium=CHROMIUM)

    print(check.summary())
    assert check.problems() == []
    assert check.views == check.rendered == 1
    assert [figure["visible"] for figure in check.figures] == [True]
    assert check.mathjax == "3.2.2" and check.formulas == 2
    assert check.blocked == [] and check.failed == []  # nothing asked the network; fonts loaded
    assert [path.name for path in check.screenshots] == ["00_offline.widget.png",
                                                         "00_offline.formula.png"]
    # the same page with its scripts on a CDN: refused, and the check says what is missing
    online = build / "00_online.html"
    online.write_text((build / "00_offline.html").read_text().replace(
        '"_static/', '"https://unpkg.com/').replace("'_static/", "'https://unpkg.com/"))
    check = offline.check_page(online, tmp_path / "screenshots", timeout_ms=5_000,
                               chromium=CHROMIUM)
    assert check.blocked and check.problems()[:3] == [
        "0 of 1 widget views rendered", "no widget figure visible", "MathJax did not load"]
