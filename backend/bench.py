"""``python -m backend.bench``: an alias of :mod:`backend.tools.bench`, kept for old commands."""

from __future__ import annotations

import sys

from backend.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
