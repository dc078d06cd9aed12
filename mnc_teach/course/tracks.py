"""The course's two tracks: one parameter cell picks the data, the preset and the device.

    TRACK = "shapes"   the CPU course: the synthetic shapes data and the shapes-cpu preset
    TRACK = "voc"      PASCAL VOC 2012 + SBD with MNC's split and the VGG-16 preset, on a GPU

    track = course_track(TRACK, data_root=DATA_ROOT, fast=FAST, device=DEVICE)
    track.cfg          the preset, its data.root set (fast mode: small sizes, same code paths)
    track.device       where the notebook runs the model (CUDA when available)
    track.prepare(num_train=..., num_val=...)   makes the data ready, or raises DataMissing

Everything a notebook does after its parameter cell reads ``track.cfg`` and ``track.device``;
nothing else branches on the track (COURSE.md, "Conventions").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mnc_teach.config import MNCConfig, get_preset, override
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.voc import MNC_SPLITS, find_sbd_dir, find_voc_dir, make_mnc_split
from mnc_teach.engine.inference import resolve_device

__all__ = ["TRACKS", "DataMissing", "StopNotebook", "Track", "course_track"]

TRACKS = {"shapes": "shapes-cpu", "voc": "voc-vgg16-paper"}  # track -> its preset
SHAPES_FOLDER = "shapes"  # the shapes data lives in DATA_ROOT/shapes; VOC and SBD in DATA_ROOT


class StopNotebook(Exception):
    """Ends a notebook's "Run All" at the cell that raises it, showing only its message: IPython
    prints what ``_render_traceback_`` returns instead of a traceback, and no later cell runs.
    ``scripts/render_course.py`` renders such a notebook as stopped, not failed."""

    def _render_traceback_(self) -> list[str]:
        return [f"\033[1;31mThe notebook stops here.\033[0m {self}"]


class DataMissing(StopNotebook, RuntimeError):
    """The track's data is not there; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Track:
    name: str  # "shapes" or "voc"
    cfg: MNCConfig  # the preset of the track, with data.root set
    device: torch.device
    fast: bool  # fast mode (tests, CI): small sizes, same code paths

    @property
    def data_root(self) -> Path:
        return Path(self.cfg.data.root)

    def prepare(self, *, num_train: int = 1000, num_val: int = 200) -> None:
        """Make the data ready. shapes: generate ``num_train`` / ``num_val`` images (nothing
        to do when they exist). voc: check VOC 2012 and SBD, write MNC's split once.

        Raises:
            DataMissing: the voc data is not downloaded (the message gives the commands).
        """
        if self.name == "shapes":
            generate_shapes(self.data_root, seed=0, num_train=num_train, num_val=num_val,
                            progress=False)
            return
        root = self.data_root
        try:
            sbd_dir, _ = find_sbd_dir(root), find_voc_dir(root)
        except FileNotFoundError:
            raise DataMissing(
                f"the voc track needs SBD and PASCAL VOC 2012 in {root}: run "
                f"`python -m mnc_teach download sbd --root {root}` and "
                f"`python -m mnc_teach download voc2012 --root {root}` (about 1.4 GB and 2 GB), "
                'or set TRACK = "shapes" to follow the course on the CPU'
            ) from None
        if not all((sbd_dir / f"{split}.txt").is_file() for split in MNC_SPLITS):
            counts = make_mnc_split(root, root)
            print(f"wrote MNC's split of SBD: {counts['mnc_train']} train, "
                  f"{counts['mnc_val']} val images")


def course_track(
    name: str = "shapes",
    *,
    data_root: str | os.PathLike = "../data",
    fast: bool = False,
    device: str | torch.device | None = None,
) -> Track:
    """The track called ``name`` (see :data:`TRACKS`) on ``data_root``.

    Fast mode keeps the shapes preset as it is and shrinks the voc one to sizes a CPU runs in
    seconds (64-96 px images with 32-128 px anchors, fewer proposals and RoIs, 256-d fcs, no
    ImageNet download): the
    tests run the voc track on a tiny VOC/SBD fixture that way.
    """
    if name not in TRACKS:
        raise ValueError(f"TRACK is {name!r}; choose one of {', '.join(map(repr, TRACKS))}")
    cfg, root = get_preset(TRACKS[name]), Path(data_root).expanduser()
    cfg = override(cfg, "data.root", str(root / SHAPES_FOLDER if name == "shapes" else root))
    if name == "voc":
        cfg = override(cfg, "data.num_workers", 0 if fast else cfg.data.num_workers)
        if fast:
            cfg = _tiny_voc(cfg)
    device = resolve_device(device)
    if name == "voc" and device.type == "cpu" and not fast:
        print("note: the voc track on a CPU is slow (minutes per training step); it is meant "
              "for a GPU")
    return Track(name=name, cfg=cfg, device=device, fast=fast)


def _tiny_voc(cfg: MNCConfig) -> MNCConfig:
    """The VGG-16 preset at sizes a CPU trains in seconds: same stages, same code paths."""
    return dataclasses.replace(
        cfg,
        backbone=dataclasses.replace(cfg.backbone, pretrained=False),
        # anchors of 32-128 px (base 16 x 2, 4, 8): the paper's 128-512 px do not fit the images
        rpn=dataclasses.replace(cfg.rpn, anchor_scales=(2, 4, 8), pre_nms_top_n_train=300,
                                post_nms_top_n_train=50, pre_nms_top_n_test=300,
                                post_nms_top_n_test=50, min_size=4.0),
        # 7 x 7 RoI features warped directly: half the fc6 weights (26 M parameters, not 56 M)
        roi=dataclasses.replace(cfg.roi, batch_size=16, output_size=7, warp_pool=1),
        classifier=dataclasses.replace(cfg.classifier, fc_dim=256),
        data=dataclasses.replace(cfg.data, min_size=64, max_size=96),
        train=dataclasses.replace(cfg.train, images_per_batch=2, accumulate=1),
    )
