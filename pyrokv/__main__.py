"""``python -m pyrokv``: the same as the ``pyrokv`` command."""

import sys

from .cli import main

sys.exit(main())
