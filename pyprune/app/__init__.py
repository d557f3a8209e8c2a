"""The front doors: the ``pyprune`` command line (:mod:`~pyprune.app.cli`) and the demo (:mod:`~pyprune.app.demo`).

They sit above the library: they import it, nothing in it imports them.
"""
