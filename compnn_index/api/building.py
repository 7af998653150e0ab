"""Building an index store (plain or sharded, in process or on a Ray cluster)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch

from ..errors import QueryError


def build_store(model: torch.nn.Module, dataset, *, out: Union[str, Path], layers: Sequence[str],
                shards: int | None = None, cluster: str | None = None, progress: bool = True,
                **options) -> Path:
    """Build an index store: one store (``shards=None``), or ``shards`` shard sub-stores over
    contiguous image ranges, built one after another here or, with ``cluster``, as Ray tasks.

    ``options`` go to :func:`~compnn_index.index.build_index` (``batch_size``, ``threads``,
    ``model_path``, ``overwrite``, ...). See ``docs/distributed.md``.
    """
    from ..index import build_index
    from ..index.sharded import build_sharded

    if shards is None and cluster is None:
        return build_index(model, dataset, layers=layers, out=out, progress=progress, **options)
    if shards is None:
        raise QueryError("a build on a Ray cluster is sharded: give the number of shards (--shards N)")
    runner = None
    if cluster is not None:
        from ..distributed.ray_build import ray_runner

        runner = ray_runner(cluster, threads=options.get("threads"), progress=progress)
    return build_sharded(model, dataset, shards=shards, layers=layers, out=out, runner=runner,
                         progress=progress, **options)
