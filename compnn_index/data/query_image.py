"""Turning what a user passes as a query image into a network input (dataset files: data/images.py).

Accepted: a NumPy array (H, W, 3) uint8 / (3, H, W) float in [-1, 1], a PIL image, or a path to
an image file. Dataset ids are resolved by the API, which knows the index store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CompNNError, QueryError

ImageLike = Union[np.ndarray, Image.Image, str, Path]


#: PIL modes read as colour (alpha dropped, palette and grey expanded to RGB).
_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1")
#: 16-bit grey modes: reduced to 8 bits (the high byte), as Pillow itself reads 16-bit RGB/RGBA.
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _from_pil(img: Image.Image, what: str) -> np.ndarray:
    if img.mode in _MODES_16:
        grey = np.asarray(img)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise QueryError(f"{what}: expected 8- or 16-bit pixel values, got PIL mode {img.mode!r} "
                             f"with values in [{grey.min()}, {grey.max()}]")
        img = Image.fromarray((grey.astype(np.uint32) >> 8).astype(np.uint8), mode="L")
    elif img.mode not in _MODES:
        raise QueryError(f"{what}: expected an RGB or grey image (8 or 16 bits), got PIL mode "
                         f"{img.mode!r}")
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) / 127.5 - 1.0, dtype=np.float32)


def load_image(image: ImageLike, *, name: str = "image", size: tuple[int, int] | None = None,
               native: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``image`` as float32 (3, H, W) in [-1, 1].

    ``size``: the expected ``(H, W)`` of an image file, checked from its header before any pixel
    is decoded (a file declaring a huge size is refused, not decompressed). ``native``: the
    geometry of the store's dataset files, named in that refusal (:func:`dataset_image` reads them).

    Raises
    ------
    QueryError
        If the file cannot be read, declares another size, or the array has the wrong shape,
        dtype or channel count.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise QueryError(f"{name}: {str(path)!r} is a directory, expected an image file")
        if not path.is_file():
            raise QueryError(f"{name}: no such image file: {str(path)!r}")
        try:
            with Image.open(path) as img:
                if size is not None and (img.height, img.width) != tuple(size):
                    also = f" or {native[0]}×{native[1]} (its dataset's files)" if native else ""
                    raise QueryError(f"{path}: expected a {size[0]}×{size[1]} image (height×width, "
                                     f"the index's image size){also}, got {img.height}×{img.width}; "
                                     "resize or crop it (compnn query --resize or --crop)")
                img.load()
                return _from_pil(img, str(path))
        except Image.DecompressionBombError as exc:
            raise QueryError(f"{path}: refused to decode ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise QueryError(f"{path}: cannot read as an image ({exc})") from None
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (3,):
            arr = arr[..., :3].transpose(2, 0, 1)
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise QueryError(
                f"{name}: expected an array of shape (3, H, W) or (H, W, 3), got {image.shape}"
            )
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 127.5 - 1.0
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise QueryError(f"{name}: array contains NaN or infinite values")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1.001 or hi > 1.001:
                raise QueryError(
                    f"{name}: expected float values in [-1, 1] (or uint8), got range [{lo:.3g}, {hi:.3g}]"
                )
        else:
            raise QueryError(f"{name}: expected uint8 or float array, got dtype {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise QueryError(
        f"{name}: expected an array, PIL image, path or dataset id, got {type(image).__name__}"
    )


#: How a query image of another size is brought to the store's size.
FITS = ("resize", "crop")


def fit_image(image: np.ndarray, size: tuple[int, int], how: str, *, name: str = "image") -> np.ndarray:
    """Bring a float32 ``(3, H, W)`` image to ``size = (H, W)``.

    ``"resize"``: bilinear (the aspect ratio is not kept); ``"crop"``: the centred window of
    ``size`` (refused when the image is smaller on either side).
    """
    if how not in FITS:
        raise QueryError(f"Unknown fit {how!r}; expected one of {', '.join(FITS)}")
    h, w = (int(v) for v in size)
    ih, iw = image.shape[1:]
    if (ih, iw) == (h, w):
        return image
    if how == "crop":
        if ih < h or iw < w:
            raise QueryError(
                f"{name}: a {ih}×{iw} (H×W) image cannot be cropped to the index's {h}×{w}; "
                "use --resize"
            )
        top, left = (ih - h) // 2, (iw - w) // 2
        return np.ascontiguousarray(image[:, top:top + h, left:left + w])
    pixels = np.clip(np.round((image.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR), dtype=np.float32)
    return np.ascontiguousarray(resized.transpose(2, 0, 1) / 127.5 - 1.0, dtype=np.float32)


def dataset_geometry(dataset: dict | None) -> tuple[int, int] | None:
    """``(H, W)`` of the files of the dataset a store was built from (manifest ``dataset``), or
    None when unknown (stores built before it was recorded, synthetic or wrapped datasets)."""
    src = (dataset or {}).get("source_size")
    return (int(src[0]), int(src[1])) if src else None


def dataset_image(image: str | Path | Image.Image, dataset: dict | None,
                  size: tuple[int, int]) -> np.ndarray | None:
    """A file (or decoded PIL image) of the store's dataset geometry preprocessed as the build
    preprocessed its training files: the input half of a pix2pix AB file (by the recorded
    direction), bilinear-resized to ``size`` — the same functions the dataset readers call.
    None for any other geometry.

    Raises
    ------
    QueryError
        If the file of that geometry cannot be decoded as a photo.
    """
    from .images import read_photo, resize_photo, to_network

    geometry = dataset_geometry(dataset)
    if geometry is None and (dataset or {}).get("kind") == "pix2pix":
        # a store built before the files' geometry was recorded: its own AB files, unresized
        geometry = (int(size[0]), 2 * int(size[1]))
    if geometry is None:
        return None
    if isinstance(image, Image.Image):
        if (image.height, image.width) != geometry or image.mode not in _MODES:
            return None
        photo = image.convert("RGB")
    else:
        path = Path(image)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                if (img.height, img.width) != geometry:
                    return None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None  # load_image words the refusal
        try:
            photo = read_photo(path)
        except CompNNError as exc:
            raise QueryError(str(exc)) from None
    if dataset.get("kind") == "pix2pix" and photo.width % 2 == 0:
        from .pix2pix import ab_halves

        photo = ab_halves(photo, dataset.get("direction", "AtoB"))[0]
    return to_network(resize_photo(photo, tuple(size)))
