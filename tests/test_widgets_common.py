"""widgets.common: a shown figure is released from pyplot, the frontend test, the gallery's items,
and the explorer base (empty dataset refused, one value per image cached, controls redraw)."""

from __future__ import annotations

import sys
import types

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
from fakes import FakeInstances

from mnc_teach.widgets.common import (
    GALLERY_SIZE,
    Explorer,
    gallery_items,
    has_widget_frontend,
    show_figure,
)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class CountingExplorer(Explorer):
    """An explorer that draws the number of its image and counts the reads of the dataset."""

    def __init__(self, dataset, index: int = 0):
        super().__init__(dataset, index)
        self.scale = widgets.FloatSlider(value=1.0)
        self.widget = widgets.VBox([self.index, self.scale, self.output])
        self.reads: list[int] = []
        self.watch(self.scale)

    def read(self, index: int):
        self.reads.append(index)
        return self.dataset[index]

    def update(self, change=None) -> None:
        image, target = self.cached(self.index.value, self.read)
        fig, ax = plt.subplots()
        ax.set_title(f"{target['image_id']} x {self.scale.value:g}")
        self.show(fig)


def test_show_figure_releases_the_figure_from_pyplot() -> None:
    fig, _ = plt.subplots()
    assert fig.number in plt.get_fignums()
    show_figure(widgets.Output(), fig)
    assert fig.number not in plt.get_fignums()


def test_the_explorer_base_reads_each_image_once_and_redraws_on_every_control() -> None:
    before = set(plt.get_fignums())
    explorer = CountingExplorer(FakeInstances(3), index=1)
    assert explorer.reads == [1] and explorer.figure.axes[0].get_title() == "img001 x 1"
    explorer.scale.value = 2.0  # another control: redrawn from the cached item
    assert explorer.reads == [1] and explorer.figure.axes[0].get_title() == "img001 x 2"
    explorer.index.value = 2
    explorer.scale.value = 3.0
    assert explorer.reads == [1, 2] and explorer.figure.axes[0].get_title() == "img002 x 3"
    assert (explorer.index.min, explorer.index.max) == (0, 2)
    assert WIDGET_MIME in explorer._repr_mimebundle_()
    assert set(plt.get_fignums()) == before  # every figure shown was released


def test_an_explorer_of_an_empty_dataset_says_which() -> None:
    with pytest.raises(ValueError, match="CountingExplorer got an empty dataset"):
        CountingExplorer(FakeInstances(0))


def test_gallery_items_are_read_once_in_the_given_order() -> None:
    dataset = FakeInstances(6)
    items = gallery_items(dataset, (4, 1))
    assert [target["image_id"] for _, target in items] == ["img004", "img001"]
    assert len(gallery_items(dataset)) == GALLERY_SIZE
    assert len(gallery_items([dataset[0]])) == 1  # a list of (image, target) works too


def test_widget_frontend_means_a_kernel_started_by_a_notebook_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert not has_widget_frontend()  # plain python under pytest

    class ZMQInteractiveShell:  # the shell class of an ipykernel kernel
        pass

    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    assert not has_widget_frontend()  # a kernel, but headless (nbclient)
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/06_cascade_end_to_end.ipynb")
    assert has_widget_frontend()
    fake_ipython.get_ipython = lambda: None  # IPython imported, but no kernel running
    assert not has_widget_frontend()
