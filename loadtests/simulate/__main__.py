"""``python -m loadtests.simulate``: see :mod:`loadtests.simulate.cli`."""

from loadtests.simulate.cli import main

raise SystemExit(main())
