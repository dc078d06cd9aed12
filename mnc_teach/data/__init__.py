"""Datasets and transforms: synthetic shapes (VOC layout), PASCAL VOC 2012 and SBD.

``download.py`` (fetching VOC 2012 / SBD) and ``extract.py`` (safe archive extraction) are
imported on their own: ``from mnc_teach.data import download``.
"""

from mnc_teach.data.shapes import SHAPE_CLASSES, dataset_fingerprint, generate_shapes
from mnc_teach.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestSide, collate
from mnc_teach.data.voc import VOC_CLASSES, VOCInstanceSegmentation, make_mnc_split, voc_colormap

__all__ = [
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestSide",
    "VOCInstanceSegmentation",
    "collate",
    "dataset_fingerprint",
    "generate_shapes",
    "make_mnc_split",
    "voc_colormap",
]
