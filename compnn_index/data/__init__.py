"""Datasets: pix2pix AB folders, image + annotation folders, synthetic facades; label palettes.

Everything is opened through :func:`open_dataset`, which returns a :class:`PairedDataset` of
:class:`Sample` objects (inputs float32 ``(3, H, W)`` in ``[-1, 1]``; targets the same, or
int64 ``(H, W)`` class indices for segmentation).
"""
from .base import PairedDataset, Sample
from .factory import open_dataset, open_like, trained_ignore_index
from .facade_params import MATERIALS
from .palette import FACADES_CLASSES, FACADES_PALETTE, colorize, jet_palette, labels_from_colors
from .synthetic import SyntheticFacades
from .wrapped import SAMPLES, WrappedDataset, as_paired_dataset, select_indices

__all__ = [
    "FACADES_CLASSES",
    "FACADES_PALETTE",
    "MATERIALS",
    "PairedDataset",
    "SAMPLES",
    "Sample",
    "SyntheticFacades",
    "WrappedDataset",
    "as_paired_dataset",
    "colorize",
    "jet_palette",
    "labels_from_colors",
    "open_dataset",
    "open_like",
    "trained_ignore_index",
    "select_indices",
]
