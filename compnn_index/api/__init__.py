"""The query API: load an index store and its model, explain images by correspondence.

>>> cnn = CompNN.load("indexes/facades")                            # doctest: +SKIP
>>> result = cnn.explain("photo.jpg", layer="decoder2", top_k=16)    # doctest: +SKIP
>>> result.reconstructions["target"]                                 # doctest: +SKIP

Every public method limits threads once, for its whole duration
(:func:`compnn_index.checks.thread_limit`); the search methods below it use the limit in force.
"""
from .building import build_store
from .core import *  # noqa: F401,F403  (CompNN and the result types)
from .core import __all__ as _core_all

__all__ = [*_core_all, "build_store"]
