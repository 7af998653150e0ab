"""Jobs above the API: what ``compnn train | build | query | evaluate | compare | demo`` do.

Each job is callable from Python and composes :class:`compnn_index.api.CompNN` (and the build and
training functions below it); the command line and the service call jobs, never the other way
round. ``workflows`` (train, build, query into files), ``evaluate`` (the papers' tables),
``compare`` (exact vs HyperPatch-Match vs FAISS ANN), ``demo`` (the report of ``make demo``).
"""
