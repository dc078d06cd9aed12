"""The live training dashboard (COURSE.md): loss curves, learning rate, speed, a sample's predictions, Stop.

    dashboard = TrainingDashboard(sample=val_ds[0], class_names=val_ds.class_names)
    run = dashboard.run_in_background(cfg, "runs/first")   # shows the dashboard; training runs in a thread
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
:class:`~mnc_teach.train.ProgressPrinter`: a tqdm bar and a printed line every ``log_every`` steps.
"""

from __future__ import annotations

import io
import math
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnc_teach import viz
from mnc_teach.checkpoint import TrainHistory
from mnc_teach.config import MNCConfig
from mnc_teach.train import ProgressPrinter, TrainState, format_seconds, train

__all__ = ["BackgroundTraining", "TrainingDashboard", "draw_history", "has_widget_frontend", "plot_history",
           "train_in_background"]  # fmt: skip

MAX_POINTS = 2000  # longer curves are thinned to every k-th step for drawing (the history keeps all)
SAMPLE_SCORE_THRESHOLD = 0.5  # draw the sample's detections scoring at least this
DPI = 80
LOSS_FIGSIZE = (10.0, 3.4)
SAMPLE_FIGSIZE = (7.0, 3.6)


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel that a notebook frontend started (JupyterLab, Notebook, VS Code).

    A kernel started by Jupyter Server gets ``JPY_SESSION_NAME`` (VS Code: ``VSCODE_PID``); a
    headless ``nbclient`` run gets neither, and plain ``python`` has no kernel at all.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    return "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ


def _thin(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """Every k-th point (and the last) so that at most about ``max_points`` remain."""
    stride = math.ceil(len(xs) / max_points) if len(xs) > max_points else 1
    keep = list(range(0, len(xs), stride))
    if keep and keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def draw_history(fig: Figure, history: TrainHistory, max_steps: int | None = None, max_points: int = MAX_POINTS) -> None:
    """Draw loss curves (log y; one line per term plus ``total``, validation dashed with dots)
    and the learning rate into ``fig``. Lines carry gids ``train-<term>``, ``val-<term>``, ``lr``."""
    fig.clear()
    ax_loss, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    colors = matplotlib.colormaps["tab10"]
    for k, term in enumerate([*history.terms(), "total"]):
        color, width = ("black", 2.0) if term == "total" else (colors(k % 10), 1.2)
        name = term.removeprefix("loss_")
        for split, entries, style in (("train", history.steps, "-"), ("val", history.val, "o--")):
            points = [(e["step"], e[term]) for e in entries if term in e]
            if points:
                xs, ys = _thin(*map(list, zip(*points, strict=True)), max_points)
                ax_loss.plot(xs, ys, style, color=color, lw=width, ms=4, gid=f"{split}-{term}",
                             label=name if split == "train" else None)  # fmt: skip
    if history.steps:
        ax_loss.set_yscale("log")
        handles, _ = ax_loss.get_legend_handles_labels()
        if history.val:
            handles.append(Line2D([], [], ls="--", marker="o", color="gray", label="validation"))
        ax_loss.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        xs, ys = _thin([e["step"] for e in history.steps], [e["lr"] for e in history.steps], max_points)
        ax_lr.plot(xs, ys, color="tab:purple", gid="lr")
    else:
        ax_loss.text(0.5, 0.5, "waiting for the first step", ha="center", va="center", transform=ax_loss.transAxes)
    for ax in (ax_loss, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if max_steps:
            ax.set_xlim(0, max_steps)
    ax_loss.set_title("losses (log scale)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.15, wspace=0.55)


def plot_history(history: TrainHistory | dict | str | os.PathLike) -> Figure:
    """A finished (or running) run's curves: a TrainHistory, its dict, or a ``history.json`` path."""
    if isinstance(history, (str, os.PathLike)):
        history = TrainHistory.load(history)
    elif isinstance(history, dict):
        history = TrainHistory.from_dict(history)
    fig = Figure(figsize=LOSS_FIGSIZE)
    draw_history(fig, history)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


class TrainingDashboard:
    """A training callback that shows the run live in a notebook (see the module docstring).

    Args:
        refresh_every: redraw the curves and the status line every this many steps.
        sample: ``(image Tensor[3, H, W], target)`` whose predictions are drawn next to its ground truth.
        sample_every: redraw the sample's predictions every this many steps (default 5 x refresh_every).
        class_names: names for the labels (index 0 background), e.g. ``dataset.class_names``.
        frontend: force the widget view (True) or the printed fallback (False); default
            :func:`has_widget_frontend`.

    Attributes:
        widget: the box to display (displaying the dashboard itself works too).
        stop_button, status: the Stop button and the status line (widgets).
        loss_figure, sample_figure: the figures drawn last (``None`` before the first drawing).
        stop_requested: set by the Stop button or :meth:`request_stop`; the loop then ends cleanly.
    """

    def __init__(self, *, refresh_every: int = 10, sample: tuple | None = None, sample_every: int | None = None,
                 class_names: Sequence[str] = ("background",), frontend: bool | None = None) -> None:  # fmt: skip
        self.refresh_every = max(1, refresh_every)
        self.sample, self.class_names = sample, tuple(class_names)
        self.sample_every = sample_every or 5 * self.refresh_every
        self.frontend = has_widget_frontend() if frontend is None else frontend
        self.stop_requested, self.last_state, self._shown = False, None, False
        self.loss_figure: Figure | None = None
        self.sample_figure: Figure | None = None
        self.printer = None if self.frontend else ProgressPrinter()
        if self.frontend:
            import ipywidgets as widgets

            self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                              tooltip="finish this step, save a checkpoint and stop")  # fmt: skip
            self.stop_button.on_click(lambda _: self.request_stop())
            self.status = widgets.HTML("waiting for training to start")
            self.loss_image = widgets.Image(format="png")
            self.sample_image = widgets.Image(format="png")
            self.widget = widgets.VBox([widgets.HBox([self.stop_button, self.status]), self.loss_image, self.sample_image])

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (what the Stop button does)."""
        self.stop_requested = True
        if self.frontend:
            self.stop_button.disabled = True
            self.status.value = "stopping after this step..."

    def show(self) -> None:
        """Display the widget once (in a notebook; nothing happens elsewhere)."""
        ipython = sys.modules.get("IPython")
        if self.frontend and not self._shown and ipython is not None and ipython.get_ipython() is not None:
            from IPython.display import display

            display(self.widget)
            self._shown = True

    def _repr_mimebundle_(self, **kwargs):
        self._shown = True
        return self.widget._repr_mimebundle_(**kwargs) if self.frontend else {"text/plain": repr(self)}

    # -- callback interface -------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        self.last_state = state
        if self.printer is not None:
            return self.printer.on_train_start(state)
        self.show()
        self.refresh(state)
        self.refresh_sample(state)

    def on_step_end(self, state: TrainState) -> None:
        self.last_state = state
        state.stop_requested = state.stop_requested or self.stop_requested
        if self.printer is not None:
            return self.printer.on_step_end(state)
        if state.step % self.refresh_every == 0 or state.step == state.max_steps:
            self.refresh(state)
        if state.step % self.sample_every == 0:
            self.refresh_sample(state)

    def on_validation(self, state: TrainState) -> None:
        if self.printer is not None:
            return self.printer.on_validation(state)
        self.refresh(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.printer is not None:
            return self.printer.on_train_end(state)
        self.refresh(state, phase="finished" if state.step >= state.max_steps else "stopped")
        self.refresh_sample(state)
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
            parts += [f"loss {state.losses['total']:.4f}", f"lr {state.lr:.2e}", f"{state.images_per_s:.1f} img/s",
                      f"elapsed {format_seconds(state.elapsed_s)}", f"ETA {format_seconds(state.eta_s)}"]  # fmt: skip
        if state.val_losses:
            parts.append(f"val loss {state.val_losses['total']:.4f}")
        if state.device.type == "cuda":
            parts.append(f"GPU memory {torch.cuda.max_memory_allocated(state.device) / 2**30:.2f} GiB")
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
            self.loss_image.value = _png(self.loss_figure)
            self.status.value = self.status_text(state, phase)

    @torch.no_grad()
    def refresh_sample(self, state: TrainState | None = None) -> None:
        """Run the model (eval mode, no grad, RNG untouched) on the sample and draw its predictions."""
        state = state or self.last_state
        if self.sample is None or state is None:
            return
        image, target = self.sample
        model, was_training = state.model, state.model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[state.device] if state.device.type == "cuda" else []):
                detections, _ = model([image.to(state.device)])
        finally:
            model.train(was_training)
        detections = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in detections[0].items()}
        if self.sample_figure is None:
            self.sample_figure = Figure(figsize=SAMPLE_FIGSIZE)
        fig = self.sample_figure
        fig.clear()
        ax_gt, ax_pred = fig.subplots(1, 2)
        viz.draw_instances(image, target, self.class_names, ax=ax_gt, title="ground truth")
        shown = int((detections["scores"] >= SAMPLE_SCORE_THRESHOLD).sum())
        viz.draw_instances(image, detections, self.class_names, ax=ax_pred, score_threshold=SAMPLE_SCORE_THRESHOLD,
                           title=f"step {state.step}: {shown} detections with score >= {SAMPLE_SCORE_THRESHOLD}")  # fmt: skip
        fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02, wspace=0.05)
        if self.frontend:
            self.sample_image.value = _png(fig)

    def run_in_background(self, cfg: MNCConfig, out_dir: str | os.PathLike, **train_kwargs: Any) -> BackgroundTraining:
        """Show the dashboard and start ``train(cfg, out_dir, callbacks=[self], **train_kwargs)`` in a thread.

        Without a widget frontend there is no button to keep responsive, and a kernel drops what
        a thread prints once its cell has finished; so training then runs right here, in the
        calling thread, printing into the cell (the handle comes back finished).
        """
        self.stop_requested = False  # a new run (the dashboard may have stopped an earlier one)
        if self.frontend:
            self.stop_button.disabled = False
        self.show()
        return train_in_background(cfg, out_dir, dashboard=self, background=self.frontend, **train_kwargs)


class BackgroundTraining:
    """Handle of a training run: ``join()``, ``result``, ``done``, ``stop()``. With ``background``
    the run goes on in a daemon thread; without, it runs to its end (or error) in the constructor."""

    def __init__(self, cfg: MNCConfig, out_dir: str | os.PathLike, dashboard: TrainingDashboard | None,
                 callbacks: Sequence[Any], train_kwargs: dict[str, Any], background: bool = True) -> None:  # fmt: skip
        self.dashboard, self.history, self.error, self._stop = dashboard, None, None, False
        callbacks = [dashboard or ProgressPrinter(), *callbacks, self]
        self._thread = None
        if not background:
            self.history = train(cfg, Path(out_dir), callbacks=callbacks, **train_kwargs)  # errors raise here
            return
        self._thread = threading.Thread(target=self._run, args=(cfg, Path(out_dir), callbacks, train_kwargs),
                                        name="mnc-teach-train", daemon=True)  # fmt: skip
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
        """The run's history; raises the run's error if it failed, RuntimeError while it still runs."""
        if not self.done:
            raise RuntimeError("training is still running; wait with .join() or ask it to stop with .stop()")
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
                print("interrupted: stopping the training after this step (a checkpoint is written)")
                self.stop()
                self._thread.join()
        return self.result if self.done else None


def train_in_background(cfg: MNCConfig, out_dir: str | os.PathLike, dashboard: TrainingDashboard | None = None,
                        *, callbacks: Sequence[Any] = (), background: bool = True,
                        **train_kwargs: Any) -> BackgroundTraining:  # fmt: skip
    """Start ``train`` in a daemon thread with ``dashboard`` (default: a ProgressPrinter) and ``callbacks``
    (``background=False``: run it to the end first). ``train_kwargs`` go to :func:`~mnc_teach.train.train`."""
    return BackgroundTraining(cfg, out_dir, dashboard, callbacks, train_kwargs, background)
