""":func:`open_dataset`: validate the options, recognise the folder layout, build the reader."""
from __future__ import annotations

import os
from pathlib import Path

from ..checks import check_choice, check_int, is_callable_spec, is_int
from ..errors import DataError
from .annotated import AnnotatedDataset
from .base import PairedDataset
from .images import IMAGE_EXTENSIONS, SIZE_MULTIPLE, describe_listing, list_images
from .pix2pix import Pix2PixDataset
from .synthetic import SyntheticFacades
from .wrapped import SAMPLES, WrappedDataset, open_factory_dataset, select_indices

DIRECTIONS = ("AtoB", "BtoA")
TASKS = ("translate", "segment")


def _normalise_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else None
    if (
        pair is None or len(pair) != 2 or not all(is_int(v) for v in pair)
        or not all(v > 0 and v % SIZE_MULTIPLE == 0 for v in pair)
    ):
        raise DataError(
            f"Expected size = None, an int or (H, W) of positive multiples of {SIZE_MULTIPLE}, "
            f"but size = {size!r}"
        )
    return int(pair[0]), int(pair[1])


def _check_options(split: str, direction: str, task: str | None, limit: int | None, seed: int,
                   ignore_index: int | None) -> tuple[int | None, int, int | None]:
    """Check the options; return ``limit``, ``seed`` and ``ignore_index`` as Python ints."""
    if not isinstance(split, str) or not split or "/" in split or "\\" in split or split in (".", ".."):
        raise DataError(f"Expected split to be a folder name such as 'train', but split = {split!r}")
    check_choice(direction, "direction", DIRECTIONS, error=DataError)
    if task is not None:
        check_choice(task, "task", TASKS, error=DataError)
    if limit is not None:
        limit = check_int(limit, "limit", low=1, error=DataError)
    seed = check_int(seed, "seed", low=0, error=DataError)
    if ignore_index is not None:
        ignore_index = check_int(ignore_index, "ignore_index", low=0, error=DataError)
    return limit, seed, ignore_index


def _split_files(root: Path, split: str, limit: int | None, sample: str = "first",
                 seed: int = 0) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith("annot"))
        listing = ", ".join(f"{name} ({len(list_images(root / name))} images)" for name in found)
        raise DataError(f"{folder} does not exist; found splits: {listing or 'none'}")
    files = list_images(folder)
    if not files:
        raise DataError(
            f"{folder} contains no {'/'.join(IMAGE_EXTENSIONS)} images; found {describe_listing(folder)}"
        )
    return [files[i] for i in select_indices(len(files), limit, sample, seed)]


def open_dataset(
    data: str | os.PathLike,
    *,
    split: str = "train",
    direction: str = "AtoB",
    task: str | None = None,
    size: int | tuple[int, int] | None = None,
    limit: int | None = None,
    seed: int = 0,
    ignore_index: int | None = None,
    sample: str = "first",
    data_args: dict | None = None,
) -> PairedDataset:
    """Open a paired dataset lazily (files are read on access).

    Parameters
    ----------
    data : str, path or dataset
        ``"synthetic"`` for the built-in synthetic facades; a folder with ``{split}/`` and
        ``{split}annot/`` (image + annotation layout, e.g. CamVid); a folder with
        ``{split}/*.jpg|png`` AB images (pix2pix layout); ``"package.module:function"``, a
        function returning a map-style dataset of ``(input, target)`` pairs (called with
        ``split=`` when it takes it, and ``data_args``); or such a dataset object itself
        (e.g. a ``torch.utils.data.Dataset``), see :class:`~compnn_index.data.wrapped.WrappedDataset`.
    split : str
        Sub-folder to read (``"train"``, ``"val"``, ``"test"``); for synthetic data it selects an
        independent seed stream.
    direction : {"AtoB", "BtoA"}
        pix2pix / synthetic: which half is the input (A is the left half; synthetic A = photo,
        B = label map). The annotation layout only supports ``"AtoB"``.
    task : {"translate", "segment"}, optional
        ``"translate"``: image targets, float32 ``(3, H, W)`` in ``[-1, 1]``. ``"segment"``:
        int64 ``(H, W)`` class targets (a pix2pix target half is read by nearest Facades
        palette colour). Default: ``"segment"`` for the annotation layout, otherwise
        ``"translate"``.
    size : int or (H, W), optional
        Resize every image to this size (bilinear for photos, nearest for labels). Must be a
        multiple of 32. Default: native size (synthetic: 256).
    limit : int, optional
        Keep only ``limit`` images (chosen by ``sample``), in sorted order (synthetic: how many
        to generate; default 400 train, 100 val/test).
    seed : int
        Synthetic generator seed (recorded but unused for folders).
    ignore_index : int, optional
        Target label skipped by losses and metrics (segmentation only). Default: 11 for the
        annotation layout (CamVid void), None otherwise.
    sample : {"first", "every", "random"}
        Which ``limit`` images a folder or wrapped dataset keeps: the first, evenly spaced
        ones, or a random subset drawn with ``seed`` (not for synthetic data, where ``limit``
        is the number generated).
    data_args : dict, optional
        Keyword arguments of a ``package.module:function`` dataset.

    Returns
    -------
    PairedDataset

    Raises
    ------
    DataError
        Bad options, a missing folder or split, missing annotations, or a first image of the
        wrong shape. Bad individual files raise :class:`DataError` when read.
    """
    limit, seed, ignore_index = _check_options(split, direction, task, limit, seed, ignore_index)
    check_choice(sample, "sample", SAMPLES, error=DataError)
    shape = _normalise_size(size)
    is_path = isinstance(data, (str, os.PathLike))
    if not is_path or (is_callable_spec(data) and not Path(data).exists()):
        if shape is not None:
            raise DataError(
                f"size = {size!r} resizes folder images only; a dataset object or function "
                "returns its samples at their own size"
            )
        if not is_path:
            if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
                raise DataError(
                    "Expected data = 'synthetic', a folder path, 'package.module:function' or a "
                    f"map-style dataset of (input, target) pairs, but data = {data!r}"
                )
            if data_args:
                raise DataError("data_args apply to a 'package.module:function' dataset only")
            return WrappedDataset(data, task=task, limit=limit, sample=sample, seed=seed,
                                  ignore_index=ignore_index, identity={"split": split})
        return open_factory_dataset(data, split=split, args=data_args, task=task, limit=limit,
                                    sample=sample, seed=seed, ignore_index=ignore_index)
    if data_args:
        raise DataError(f"data_args apply to a 'package.module:function' dataset, not {data!r}")
    if isinstance(data, str) and data == "synthetic":
        if sample != "first":
            raise DataError(
                f"sample = {sample!r}: synthetic data generates limit images; sample applies to "
                "folders and datasets"
            )
        task = task or "translate"
        _check_ignore(task, ignore_index)
        return SyntheticFacades(split=split, direction=direction, task=task, size=shape,
                                limit=limit, seed=seed, ignore_index=ignore_index)
    root = Path(data)
    if not root.is_dir():
        raise DataError(
            f"dataset folder {str(root)!r} does not exist (expected 'synthetic' or a folder with "
            "train/ test/ splits)"
        )
    if (root / f"{split}annot").is_dir():
        if task == "translate":
            raise DataError(
                f"{root} has the image + annotation layout ({split}/ and {split}annot/), which "
                "only supports task='segment', but task = 'translate'"
            )
        if direction != "AtoB":
            raise DataError(
                f"{root} has the image + annotation layout, which only supports direction='AtoB' "
                f"(image to labels), but direction = {direction!r}"
            )
        ds = AnnotatedDataset(_split_files(root, split, limit, sample, seed), root=root,
                              split=split, size=shape, limit=limit, seed=seed,
                              ignore_index=ignore_index)
        ds.identity["sample"] = sample
        return ds
    task = task or "translate"
    _check_ignore(task, ignore_index)
    ds = Pix2PixDataset(_split_files(root, split, limit, sample, seed), root=root, split=split,
                        direction=direction, task=task, size=shape, limit=limit, seed=seed,
                        ignore_index=ignore_index)
    ds.identity["sample"] = sample
    return ds


def _check_ignore(task: str, ignore_index: int | None) -> None:
    if task == "translate" and ignore_index is not None:
        raise DataError(
            "ignore_index only applies to task='segment', but task = 'translate' and "
            f"ignore_index = {ignore_index}"
        )


def trained_ignore_index(trained: dict | None, given: int | None, task: str | None) -> int | None:
    """The ignore label to open a dataset with: ``given`` (``--ignore-index``) when set, else the
    one the model or store was trained with (its recorded dataset identity), so that a store built
    with, say, 255 reads its test split the same way; None (the layout's default) otherwise."""
    if given is not None:
        return given
    if task != "segment" or not trained:
        return None
    value = trained.get("ignore_index")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def open_like(
    data: str | os.PathLike,
    trained: dict | None,
    *,
    task: str,
    split: str = "test",
    direction: str | None = None,
    size: int | tuple[int, int] | None = None,
    limit: int | None = None,
    seed: int = 0,
    sample: str = "first",
    data_args: dict | None = None,
    ignore_index: int | None = None,
) -> PairedDataset:
    """Open ``data`` the way a model or store saw its training set.

    ``trained`` is the dataset identity a checkpoint or store manifest recorded (``direction``,
    ``size``, ``ignore_index``); every option left at None takes the recorded value, so a query
    split is read with the direction, image size and ignore label the database was built with.
    Given options win (a user's ``--direction`` or ``--size``).

    Examples
    --------
    >>> ds = open_like("synthetic", {"direction": "AtoB", "size": [64, 64]}, task="segment", limit=2)
    >>> ds.image_size, len(ds)
    ((64, 64), 2)
    """
    trained = trained or {}
    return open_dataset(data, split=split, direction=direction or trained.get("direction", "AtoB"), task=task,
                        size=size or trained.get("size"), limit=limit, seed=seed, sample=sample,
                        data_args=data_args, ignore_index=trained_ignore_index(trained, ignore_index, task))

