"""A training run on disk, finished or still training in another process: curves, status, a
gallery, Reload.

    viewer = RunViewer("runs/06_cascade/main", gallery=val_ds, gallery_indices=(0, 1, 2, 3))
    viewer              # in a notebook: Reload button, score slider, status line, curves, gallery
    viewer.watch(600)   # re-read the files every 5 s for 10 minutes, or until the run is finished

A run folder is what :func:`~mnc_teach.engine.loop.train` writes
(:mod:`mnc_teach.engine.checkpoint`): ``history.json`` at the start, after each validation and
with each checkpoint, and ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, both
replaced atomically (a reader gets the whole old file or the whole new one). Reload reads them
again, so the viewer works the same for a finished run and for one that ``python -m mnc_teach
train --out DIR`` (or another notebook) is still writing. The gallery shows the checkpoint's
model (run on ``device``, the CPU by default, so it does not compete with a training GPU); it is
predicted again only when the checkpoint changed, and the score slider redraws it from the
detections it has.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch
from IPython.display import display
from matplotlib.figure import Figure
from torch import nn

from mnc_teach.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mnc_teach.engine.inference import predict_images
from mnc_teach.engine.state import CHECKPOINT_NAME, HISTORY_NAME, TrainHistory, format_seconds
from mnc_teach.viz.common import figure_png
from mnc_teach.viz.gallery import SCORE_THRESHOLD, draw_prediction_gallery, new_gallery_figure
from mnc_teach.viz.losses import LOSS_FIGSIZE, draw_history
from mnc_teach.widgets.common import gallery_items, has_widget_frontend

__all__ = ["GID_NO_CHECKPOINT", "RunViewer"]

RETRY_DELAY_S = 0.2  # a file that could not be read is read once more after this pause
GID_NO_CHECKPOINT = "no-checkpoint"  # the gallery's text while the run has no checkpoint yet


def _load_history(path: Path) -> TrainHistory:
    try:
        return TrainHistory.load(path)
    except json.JSONDecodeError as error:  # a ValueError: read again by _read_retrying
        raise ValueError(f"cannot read {path} ({error}); it is not a history.json written by "
                         "train") from error


def _read_retrying(path: Path, read: Any) -> Any:
    """``read(path)``, once more after RETRY_DELAY_S if it fails (a file being replaced or
    half-copied)."""
    try:
        return read(path)
    except (OSError, ValueError):  # what _load_history and load_checkpoint raise on a bad read
        time.sleep(RETRY_DELAY_S)
        return read(path)


class RunViewer:
    """Curves, status line and prediction gallery of the run in ``run_dir`` (module docstring).

    Args:
        run_dir: a folder written by ``train`` (``history.json``, ``checkpoint.pt``).
        gallery: fixed validation images: a dataset, or a list of ``(image, target)``; None:
            curves only.
        gallery_indices: which of its items to show (default: the first four).
        class_names: names for the labels; default ``gallery.class_names``.
        score_threshold: initial value of the score slider (detections drawn score at least this).
        device: where the gallery's model runs.
        frontend: show widgets (True) or print the status and show the figures (False); default
            :func:`~mnc_teach.widgets.common.has_widget_frontend`.

    Attributes:
        widget: the box to display (displaying the viewer itself works too).
        reload_button, score_slider, status: the Reload button, the score slider, the status line.
        history, checkpoint_step, max_steps, model: what the last reload read
            (``checkpoint_step`` and ``model`` None: no checkpoint yet).
        history_figure, gallery_figure: the figures drawn last.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``history.json`` is missing (at creation and on
            :meth:`reload`).
    """

    def __init__(self, run_dir: str | os.PathLike, *, gallery: Any = None,
                 gallery_indices: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None,
                 score_threshold: float = SCORE_THRESHOLD, device: str | torch.device = "cpu",
                 frontend: bool | None = None) -> None:
        self.run_dir, self.device = Path(run_dir).expanduser(), torch.device(device)
        self.gallery = gallery_items(gallery, gallery_indices) if gallery is not None else []
        self.class_names = tuple(class_names or getattr(gallery, "class_names", ("background",)))
        self.frontend = has_widget_frontend() if frontend is None else frontend
        self.history, self.checkpoint_step, self.max_steps = TrainHistory(), None, None
        self.model: nn.Module | None = None  # the checkpoint's, in eval mode on device
        self.detections: list[dict] | None = None  # of the gallery, by that model
        # (inode, mtime, size) of the files read last (None: no checkpoint yet; (): not read yet)
        self._history_key: tuple = ()
        self._checkpoint_key: tuple | None = ()
        self.history_figure = Figure(figsize=LOSS_FIGSIZE)
        self.gallery_figure = new_gallery_figure(len(self.gallery)) if self.gallery else None

        self.reload_button = widgets.Button(description="Reload", icon="refresh",
                                            tooltip="read the run's files again")
        self.reload_button.on_click(lambda _: self._reload_showing_errors())
        self.score_slider = widgets.FloatSlider(value=score_threshold, min=0.0, max=1.0, step=0.05,
                                                description="min score", continuous_update=False)
        self.score_slider.observe(lambda _: self.redraw_gallery(), names="value")
        self.status = widgets.HTML()
        self.history_image = widgets.Image(format="png")
        self.gallery_image = widgets.Image(format="png")
        rows = [widgets.HBox([self.reload_button, self.score_slider, self.status]),
                self.history_image]
        self.widget = widgets.VBox(rows + ([self.gallery_image] if self.gallery else []))
        self.reload()

    # -- reading ------------------------------------------------------------------------------
    def reload(self) -> None:
        """Read ``history.json`` and ``checkpoint.pt`` again; redraw what changed, and the status
        line."""
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"no run folder {self.run_dir}; train writes one "
                                    f"(`python -m mnc_teach train --out {self.run_dir}` "
                                    "or train(cfg, out_dir))")
        history_changed, checkpoint_changed = self._read_history(), self._read_checkpoint()
        if history_changed or checkpoint_changed:  # (max_steps comes from the checkpoint)
            draw_history(self.history_figure, self.history, max_steps=self.max_steps)
            self.history_image.value = figure_png(self.history_figure)
        self.status.value = self.status_text()  # shown before the gallery's predictions
        if checkpoint_changed and self.gallery:
            images = [image for image, _ in self.gallery]
            if self.model is None:
                self.detections = None
            else:
                self.detections = predict_images(self.model, images, self.device)
            self.redraw_gallery()

    def _read_history(self) -> bool:
        """Read ``history.json`` if it changed since the last reload; whether it did."""
        path = self.run_dir / HISTORY_NAME
        try:
            info = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"no {path}: train writes it when a run starts, after each "
                                    "validation and with each checkpoint; is this a run folder?"
                                    ) from None
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if key == self._history_key:
            return False
        self.history = _read_retrying(path, _load_history)
        self._history_key = key
        return True

    def _read_checkpoint(self) -> bool:
        """Read ``checkpoint.pt`` (step, max_steps, model) if it changed since the last reload;
        whether it did."""
        path = self.run_dir / CHECKPOINT_NAME
        try:
            info = path.stat()
            key = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:  # not written yet (the first comes after checkpoint_every steps)
            key = None
        if key == self._checkpoint_key:
            return False
        if key is None:
            self.checkpoint_step, self.model, self._checkpoint_key = None, None, None
            return True
        checkpoint = _read_retrying(path, load_checkpoint)  # weights, config, step: one file
        self.model, cfg = model_from_checkpoint(checkpoint, self.device)
        self.max_steps, self.checkpoint_step = cfg.train.max_steps, int(checkpoint["step"])
        self._checkpoint_key = key
        return True

    @property
    def steps_done(self) -> int:
        return self.history.steps[-1]["step"] if self.history.steps else 0

    @property
    def finished(self) -> bool:
        """True once the checkpoint of the run's last step is written (the last file ``train``
        writes)."""
        return (self.checkpoint_step is not None
                and self.steps_done >= self.checkpoint_step >= self.max_steps)

    def _reload_showing_errors(self) -> None:
        """The Reload button: errors go to the status line (a widget callback's exception is not
        shown)."""
        try:
            self.reload()
        except Exception as error:
            self.status.value = f"<b style='color:#b00'>{type(error).__name__}: {error}</b>"

    def watch(self, seconds: float, every: float = 5.0) -> int:
        """Reload every ``every`` seconds for ``seconds``, or until the run is finished; returns the
        number of reloads.

        It blocks the cell (the images still update; clicks wait); interrupting the kernel ends it.
        """
        reloads = 0
        try:
            for _ in range(max(1, round(seconds / every))):
                if self.finished:
                    break
                time.sleep(every)
                self.reload()
                reloads += 1
                if not self.frontend:
                    print(self.status_text(html=False), flush=True)
        except KeyboardInterrupt:
            pass
        return reloads

    # -- drawing ------------------------------------------------------------------------------
    def status_text(self, html: bool = True) -> str:
        """Finished or not, steps done / max, last loss and val loss, checkpoint step, age of the
        history."""
        steps, val = self.history.steps, self.history.val
        parts = ["finished" if self.finished else "not finished (training, or stopped)",
                 f"step {self.steps_done}/{self.max_steps or '?'}"]
        if steps:
            parts.append(f"loss {steps[-1]['total']:.4f}")
        diverged = self.history.divergence()
        if diverged:
            parts.append(f"<b style='color:#b00'>{diverged}</b>" if html else diverged)
        parts.append(f"val loss {val[-1]['total']:.4f} (step {val[-1]['step']})" if val
                     else "no validation losses")
        parts.append("no checkpoint yet" if self.checkpoint_step is None
                     else f"checkpoint of step {self.checkpoint_step}")
        if (self.checkpoint_step or 0) > self.steps_done:
            parts[-1] += (" (newer than the history: an earlier run's, overwritten by one just "
                          "started?)")
        try:
            age = time.time() - (self.run_dir / HISTORY_NAME).stat().st_mtime
            parts.append(f"{HISTORY_NAME} written {format_seconds(age)} ago")
        except FileNotFoundError:
            pass
        if not html:
            return " · ".join(parts)
        return f"<b>{parts[0]}</b> &middot; " + " &middot; ".join(parts[1:])

    def redraw_gallery(self) -> None:
        """Draw the gallery's detections scoring at least the slider's value (no new prediction)."""
        if not self.gallery:
            return
        fig = self.gallery_figure
        if self.detections is None:
            fig.clear()
            fig.text(0.5, 0.5, f"no checkpoint yet in {self.run_dir}:\ntrain writes one every "
                     "checkpoint_every steps and at the end; press Reload then", ha="center",
                     va="center", gid=GID_NO_CHECKPOINT)
        else:
            images, targets = zip(*self.gallery, strict=True)
            draw_prediction_gallery(fig, images, targets, self.detections, self.class_names,
                                    score_threshold=self.score_slider.value,
                                    step=self.checkpoint_step)
        self.gallery_image.value = figure_png(fig)

    def _ipython_display_(self) -> None:
        if self.frontend:
            display(self.widget)
            return
        print(self.status_text(html=False))
        display(*[fig for fig in (self.history_figure, self.gallery_figure) if fig is not None])

    def __repr__(self) -> str:
        return f"RunViewer({str(self.run_dir)!r}): {self.status_text(html=False)}"
