"""``python -m compnn_index.cli``: the same as the ``compnn`` command."""
import sys

from . import main

sys.exit(main())
