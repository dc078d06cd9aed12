"""What the widgets share: showing a figure, the explorer base, the gallery, the frontend test.

An explorer (``DatasetBrowser``, ``AnchorExplorer``, ``ProposalViewer``, ``StageExplorer``) is
a small :class:`Explorer`: its controls are attributes (``browser.index``...), ``.widget`` is
the box to display (displaying the explorer itself works too), setting a control's ``.value``
redraws (which is how the tests drive them), and what was drawn last stays inspectable
(``.figure``). Without a widget frontend (headless ``nbclient``, plain ``python``) everything
still runs; only the interactivity is missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython import get_ipython
from IPython.display import clear_output, display
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["GALLERY_SIZE", "Explorer", "gallery_items", "has_widget_frontend", "show_figure"]

GALLERY_SIZE = 4  # gallery images when no indices are given: the first four

_T = TypeVar("_T")


def show_figure(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows by ``fig``, then release the figure from pyplot (no leak,
    and the inline backend does not draw it a second time below the cell)."""
    if get_ipython() is not None:  # outside IPython, display would print the figure's repr
        with output:
            clear_output(wait=True)
            display(fig)
    plt.close(fig)


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel that a notebook frontend started (JupyterLab, VS Code...).

    A kernel started by Jupyter Server gets ``JPY_SESSION_NAME`` (VS Code: ``VSCODE_PID``); a
    headless ``nbclient`` run gets neither, and plain ``python`` has no kernel at all.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    return "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ


def gallery_items(gallery: Any, indices: Sequence[int] | None = None) -> list[tuple[Tensor, dict]]:
    """``[gallery[i] for i in indices]`` (default: the first GALLERY_SIZE items) of a dataset or
    a list of ``(image, target)``; read once, so a gallery shows the same images all run long."""
    indices = range(min(GALLERY_SIZE, len(gallery))) if indices is None else indices
    return [gallery[int(i)] for i in indices]


class Explorer:
    """An image slider over a dataset, a value cached per image, a figure shown in an Output.

    A subclass makes its other controls and ``self.widget`` (holding ``self.index`` and
    ``self.output``), then calls :meth:`watch` with its controls; its ``update()`` computes
    what it needs with :meth:`cached` and draws with :meth:`show`.

    Args:
        dataset: returns ``(image Tensor[3, H, W], target)`` by index; must not be empty.
        index: the first image shown.

    Attributes:
        dataset, index (the image slider), output (where the figure shows), widget,
        figure: the last figure drawn (closed in pyplot, still inspectable).
    """

    widget: widgets.Widget

    def __init__(self, dataset: Any, index: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError(f"{type(self).__name__} got an empty dataset; check the split and the "
                             "data folder")
        self.dataset = dataset
        self.index = widgets.IntSlider(value=index, min=0, max=len(dataset) - 1,
                                       description="image", continuous_update=False)
        self.output = widgets.Output()
        self.figure: Figure | None = None
        self._cached: tuple[int, Any] | None = None

    def cached(self, index: int, compute: Callable[[int], _T]) -> _T:
        """``compute(index)``, computed once and kept until another index is asked for (moving
        any other control reuses it)."""
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, compute(index))
        return self._cached[1]

    def watch(self, *controls: widgets.ValueWidget) -> None:
        """Redraw whenever the image slider or one of ``controls`` changes; draw once now."""
        for control in (self.index, *controls):
            control.observe(self.update, names="value")
        self.update()

    def update(self, change: dict | None = None) -> None:
        """Redraw for the current controls (``change`` is the ipywidgets event, unused)."""
        raise NotImplementedError

    def show(self, fig: Figure) -> None:
        """Keep ``fig`` as ``self.figure`` and show it in ``self.output``."""
        self.figure = fig
        show_figure(self.output, fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
