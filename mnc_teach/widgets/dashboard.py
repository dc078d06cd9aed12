"""The live training dashboard (COURSE.md): loss curves, learning rate, speed, a gallery of
predictions, Stop.

    dashboard = TrainingDashboard(gallery=val_ds, gallery_indices=(0, 1, 2, 3))
    run = dashboard.run_in_background(cfg, "runs/first")   # shows the dashboard; trains in a thread
    history = run.join()                                    # in a later cell: wait for the end

Why a thread: while a cell runs, the kernel handles no widget events, so a Stop button of a
training loop that runs *in* the cell could only be clicked after the end. Training in a
background thread leaves the kernel free to receive the click; the click only sets a flag,
and the loop (in its thread) saves a checkpoint and returns after the current step. All
drawing happens in the training thread, on figures made with matplotlib's object API
(``Figure()``, never pyplot, which is not thread-safe); the figures reach the page as PNG
bytes in ``ipywidgets.Image`` widgets. Passing the dashboard to ``train(callbacks=[...])``
in the cell itself works too: the curves update live, but only a kernel interrupt (which
the loop also turns into a clean stop) can end the run early.

Without a widget frontend (plain ``python``, CI, headless ``nbclient``) the dashboard is a
:class:`~mnc_teach.engine.state.ProgressPrinter`: a tqdm bar and a printed line every
``log_every`` steps. The drawings are :mod:`mnc_teach.viz.losses` and
:mod:`mnc_teach.viz.gallery`; a run on disk (finished, or running in another process) is shown
by :mod:`mnc_teach.widgets.run_viewer`.
"""

from __future__ import annotations

import html
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch
from IPython import get_ipython
from IPython.display import display
from matplotlib.figure import Figure

from mnc_teach.config import MNCConfig
from mnc_teach.engine.inference import predict_images
from mnc_teach.engine.loop import train
from mnc_teach.engine.state import ProgressPrinter, TrainHistory, TrainState, format_seconds
from mnc_teach.viz.common import figure_png
from mnc_teach.viz.gallery import SCORE_THRESHOLD, draw_prediction_gallery, new_gallery_figure
from mnc_teach.viz.losses import LOSS_FIGSIZE, draw_history
from mnc_teach.widgets.common import gallery_items, has_widget_frontend

__all__ = ["BackgroundTraining", "TrainingDashboard", "train_in_background"]


class TrainingDashboard:
    """A training callback that shows the run live in a notebook (see the module docstring).

    Args:
        refresh_every: redraw the curves and the status line every this many steps.
        gallery: fixed validation images: a dataset, or a list of ``(image Tensor[3, H, W],
            target)``.
        gallery_indices: which of its items to show (default: the first four).
        gallery_every: redraw the gallery's predictions every this many steps (default 5 x
            refresh_every), and at the start and the end.
        score_threshold: the gallery draws detections scoring at least this.
        class_names: names for the labels (index 0 background); default ``gallery.class_names``.
        frontend: force the widget view (True) or the printed fallback (False); default
            :func:`~mnc_teach.widgets.common.has_widget_frontend`.

    Attributes:
        widget: the box to display (displaying the dashboard itself works too).
        stop_button, status: the Stop button and the status line (widgets).
        loss_figure, gallery_figure: the figures drawn last (``None`` before the first drawing).
        stop_requested: set by the Stop button or :meth:`request_stop`; the loop then ends cleanly.
    """

    def __init__(self, *, refresh_every: int = 10, gallery: Any = None,
                 gallery_indices: Sequence[int] | None = None, gallery_every: int | None = None,
                 score_threshold: float = SCORE_THRESHOLD,
                 class_names: Sequence[str] | None = None, frontend: bool | None = None) -> None:
        self.refresh_every = max(1, refresh_every)
        self.gallery = gallery_items(gallery, gallery_indices) if gallery is not None else []
        self.class_names = tuple(class_names or getattr(gallery, "class_names", ("background",)))
        self.gallery_every = gallery_every or 5 * self.refresh_every
        self.score_threshold = score_threshold
        self.frontend = has_widget_frontend() if frontend is None else frontend
        self.stop_requested, self.last_state, self._shown = False, None, False
        self.loss_figure: Figure | None = None
        self.gallery_figure: Figure | None = None
        self.printer = None if self.frontend else ProgressPrinter()
        if self.frontend:
            self.stop_button = widgets.Button(
                description="Stop", button_style="danger", icon="stop",
                tooltip="finish this step, save a checkpoint and stop")
            self.stop_button.on_click(lambda _: self.request_stop())
            self.status = widgets.HTML("waiting for training to start")
            self.loss_image = widgets.Image(format="png")
            self.gallery_image = widgets.Image(format="png")
            self.widget = widgets.VBox([widgets.HBox([self.stop_button, self.status]),
                                        self.loss_image, self.gallery_image])

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (what the Stop button does)."""
        self.stop_requested = True
        if self.frontend:
            self.stop_button.disabled = True
            self.status.value = "stopping after this step..."

    def show(self) -> None:
        """Display the widget once (in a notebook; nothing happens elsewhere)."""
        if self.frontend and not self._shown and get_ipython() is not None:
            display(self.widget)
            self._shown = True

    def _repr_mimebundle_(self, **kwargs):
        self._shown = True
        if not self.frontend:
            return {"text/plain": repr(self)}
        return self.widget._repr_mimebundle_(**kwargs)

    # -- callback interface -------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        self.last_state = state
        if self.printer is not None:
            return self.printer.on_train_start(state)
        self.show()
        self.refresh(state)
        self.refresh_gallery(state)

    def on_step_end(self, state: TrainState) -> None:
        self.last_state = state
        state.stop_requested = state.stop_requested or self.stop_requested
        if self.printer is not None:
            return self.printer.on_step_end(state)
        if state.step % self.refresh_every == 0 or state.step == state.max_steps:
            self.refresh(state)
        if state.step % self.gallery_every == 0:
            self.refresh_gallery(state)

    def on_validation(self, state: TrainState) -> None:
        if self.printer is not None:
            return self.printer.on_validation(state)
        self.refresh(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.printer is not None:
            return self.printer.on_train_end(state)
        self.refresh(state, phase="finished" if state.step >= state.max_steps else "stopped")
        self.refresh_gallery(state)
        self.stop_button.disabled = True

    def on_error(self, error: BaseException) -> None:
        """Called by :class:`BackgroundTraining` when the run raised."""
        if self.printer is not None:
            print(f"training failed: {type(error).__name__}: {error}", file=sys.stderr)
        else:
            self.status.value = f"<b style='color:#b00'>failed: {type(error).__name__}: {error}</b>"
            self.stop_button.disabled = True

    # -- drawing ------------------------------------------------------------------------------
    def status_text(self, state: TrainState, phase: str | None = None) -> str:
        """One line: phase, step, loss, lr, speed, elapsed, ETA (and GPU memory on CUDA)."""
        phase = phase or ("stopping" if state.stop_requested or self.stop_requested else "running")
        parts = [f"<b>{phase}</b>", f"step {state.step}/{state.max_steps}"]
        if state.losses:
            parts += [f"loss {state.losses['total']:.4f}", f"lr {state.lr:.2e}",
                      f"{state.images_per_s:.1f} img/s",
                      f"elapsed {format_seconds(state.elapsed_s)}",
                      f"ETA {format_seconds(state.eta_s)}"]
        if state.val_losses:
            parts.append(f"val loss {state.val_losses['total']:.4f}")
        if state.device.type == "cuda":
            gib = torch.cuda.max_memory_allocated(state.device) / 2**30
            parts.append(f"GPU memory {gib:.2f} GiB")
        diverged = state.history.divergence()
        if diverged:
            parts.append(f"<b style='color:#b00'>{html.escape(diverged)}</b>")
        return " &middot; ".join(parts)

    def refresh(self, state: TrainState | None = None, phase: str | None = None) -> None:
        """Redraw the loss and lr curves and the status line from ``state.history``."""
        state = state or self.last_state
        if state is None:
            return
        if self.loss_figure is None:
            self.loss_figure = Figure(figsize=LOSS_FIGSIZE)
        draw_history(self.loss_figure, state.history, max_steps=state.max_steps)
        if self.frontend:
            self.loss_image.value = figure_png(self.loss_figure)
            self.status.value = self.status_text(state, phase)

    def refresh_gallery(self, state: TrainState | None = None) -> None:
        """Run the model on the gallery (``engine.inference.predict_images``: its mode and the RNG
        are left as they were) and draw its predictions."""
        state = state or self.last_state
        if not self.gallery or state is None:
            return
        images, targets = zip(*self.gallery, strict=True)
        detections = predict_images(state.model, images, state.device)
        if self.gallery_figure is None:
            self.gallery_figure = new_gallery_figure(len(images))
        draw_prediction_gallery(self.gallery_figure, images, targets, detections, self.class_names,
                                score_threshold=self.score_threshold, step=state.step)
        if self.frontend:
            self.gallery_image.value = figure_png(self.gallery_figure)

    def run_in_background(self, cfg: MNCConfig, out_dir: str | os.PathLike,
                          **train_kwargs: Any) -> BackgroundTraining:
        """Show the dashboard and start ``train(cfg, out_dir, callbacks=[self], **train_kwargs)``
        in a thread.

        Without a widget frontend there is no button to keep responsive, and a kernel drops what
        a thread prints once its cell has finished; so training then runs right here, in the
        calling thread, printing into the cell (the handle comes back finished).
        """
        self.stop_requested = False  # a new run (the dashboard may have stopped an earlier one)
        if self.frontend:
            self.stop_button.disabled = False
        self.show()
        return train_in_background(cfg, out_dir, dashboard=self, background=self.frontend,
                                   **train_kwargs)


class BackgroundTraining:
    """Handle of a training run: ``join()``, ``result``, ``done``, ``stop()``. With ``background``
    the run goes on in a daemon thread; without, it runs to its end (or error) in the
    constructor."""

    def __init__(self, cfg: MNCConfig, out_dir: str | os.PathLike,
                 dashboard: TrainingDashboard | None, *, callbacks: Sequence[Any],
                 train_kwargs: dict[str, Any], background: bool = True) -> None:
        self.dashboard, self.history, self.error, self._stop = dashboard, None, None, False
        callbacks = [dashboard or ProgressPrinter(), *callbacks, self]
        self._thread = None
        if not background:
            # errors raise here
            self.history = train(cfg, Path(out_dir), callbacks=callbacks, **train_kwargs)
            return
        self._thread = threading.Thread(target=self._run,
                                        args=(cfg, Path(out_dir), callbacks, train_kwargs),
                                        name="mnc-teach-train", daemon=True)
        self._thread.start()

    def _run(self, cfg, out_dir, callbacks, train_kwargs) -> None:
        try:
            self.history = train(cfg, out_dir, callbacks=callbacks, **train_kwargs)
        except BaseException as error:  # kept for join()/result, shown by the dashboard
            self.error = error
            if self.dashboard is not None:
                self.dashboard.on_error(error)
            else:
                print(f"training failed: {type(error).__name__}: {error}", file=sys.stderr)

    def on_train_start(self, state: TrainState) -> None:
        state.stop_requested = state.stop_requested or self._stop

    on_step_end = on_train_start

    def stop(self) -> None:
        """Ask the run to stop after the current step (with a checkpoint)."""
        self._stop = True

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    @property
    def result(self) -> TrainHistory:
        """The run's history; raises the run's error if it failed, RuntimeError while it runs."""
        if not self.done:
            raise RuntimeError("training is still running; wait with .join() or ask it to stop "
                               "with .stop()")
        if self.error is not None:
            raise self.error
        return self.history

    def join(self, timeout: float | None = None) -> TrainHistory | None:
        """Wait for the end (at most ``timeout`` seconds); the history, or None if still running.

        Interrupting the wait (Ctrl-C, Jupyter's stop button) stops the training cleanly, with a
        checkpoint, instead of leaving it running unseen in its thread."""
        if self._thread is not None:
            try:
                self._thread.join(timeout)
            except KeyboardInterrupt:
                print("interrupted: stopping the training after this step "
                      "(a checkpoint is written)")
                self.stop()
                self._thread.join()
        return self.result if self.done else None


def train_in_background(cfg: MNCConfig, out_dir: str | os.PathLike,
                        dashboard: TrainingDashboard | None = None, *,
                        callbacks: Sequence[Any] = (), background: bool = True,
                        **train_kwargs: Any) -> BackgroundTraining:
    """Start ``train`` in a daemon thread with ``dashboard`` (default: a ProgressPrinter) and
    ``callbacks`` (``background=False``: run it to the end first). ``train_kwargs`` go to
    :func:`~mnc_teach.engine.loop.train`."""
    return BackgroundTraining(cfg, out_dir, dashboard, callbacks=callbacks,
                              train_kwargs=train_kwargs, background=background)
