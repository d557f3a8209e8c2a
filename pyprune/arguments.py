"""Argument checks shared by the library's user-facing functions, so that equal mistakes get equal messages.

Every message starts with the argument's name and says what was expected, e.g.
``"batch_size: expected a positive int, got 0"``.
"""

from __future__ import annotations

import difflib
import numbers


def is_positive_int(value: object) -> bool:
    """True for an integer (not a bool) greater than zero, of any integral type (``int``, ``numpy.int64``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def check_positive_int(value: object, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive integer."""
    if not is_positive_int(value):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def close_matches_hint(name: object, valid: list[str]) -> str:
    """`` (did you mean 'a', 'b'?)`` for the entries of ``valid`` close to ``name``; empty when none is."""
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def unknown_name_message(argument: str, name: str, known: list[str]) -> str:
    """The error message for a ``name`` that is not one of ``known``, suggesting close matches."""
    return f"{argument}: unknown name {name!r}{close_matches_hint(name, known)}; expected one of {', '.join(map(repr, known))}"
