"""The NN field: the one result type every search method returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NNField:
    """For every query feature position, the matched database hyperpatch.

    Attributes
    ----------
    image : ndarray of int64, shape (Hq, Wq)
        Database image id of the match (the index store's image id, not a shortlist slot).
    y, x : ndarray of int32, shape (Hq, Wq)
        Position of the matched hyperpatch in that image's feature grid (top-left of the window).
    similarity : ndarray of float32, shape (Hq, Wq)
        Cosine similarity (inner product of unit vectors) of query and match.
    """

    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    similarity: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.ascontiguousarray(self.image, dtype=np.int64)
        self.y = np.ascontiguousarray(self.y, dtype=np.int32)
        self.x = np.ascontiguousarray(self.x, dtype=np.int32)
        self.similarity = np.ascontiguousarray(self.similarity, dtype=np.float32)
        shapes = {a.shape for a in (self.image, self.y, self.x, self.similarity)}
        if len(shapes) != 1 or self.image.ndim != 2:
            raise ValueError(
                f"NNField arrays must share one 2-D shape, got image {self.image.shape}, "
                f"y {self.y.shape}, x {self.x.shape}, similarity {self.similarity.shape}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON-ready nested lists (``image``, ``y``, ``x``, ``similarity``)."""
        return {
            "image": self.image.tolist(),
            "y": self.y.tolist(),
            "x": self.x.tolist(),
            "similarity": np.round(self.similarity.astype(np.float64), 6).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NNField":
        return cls(np.asarray(d["image"]), np.asarray(d["y"]), np.asarray(d["x"]), np.asarray(d["similarity"]))
