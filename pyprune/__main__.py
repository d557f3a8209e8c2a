"""``python -m pyprune``: the same command line as the ``pyprune`` script."""

from __future__ import annotations

from pyprune.app.cli import main

raise SystemExit(main())
