"""The architecture fingerprint a plan carries: its parameters' names and shapes.

A plan (or a depth plan) is made for one architecture in one state; applying it to anything else would cut the
wrong rows, so every applier checks the fingerprint first and names the first difference.
"""

from __future__ import annotations

from torch import nn

Fingerprint = list[tuple[str, tuple[int, ...]]]
"""``(parameter name, shape)`` of every parameter, in ``model.named_parameters()`` order."""


def model_fingerprint(model: nn.Module) -> Fingerprint:
    """Names and shapes of ``model``'s parameters, ``torch.nn.utils.prune``'s ``_orig`` suffix stripped."""
    return [(name.removesuffix("_orig"), tuple(p.shape)) for name, p in model.named_parameters()]


def check_fingerprint(fingerprint: Fingerprint, model: nn.Module) -> None:
    """Raise ValueError naming the first difference when ``model`` is not the architecture ``fingerprint`` (a plan's,
    from :func:`model_fingerprint`) describes."""
    found = model_fingerprint(model)
    if found == fingerprint:
        return
    expected = dict(fingerprint)
    actual = dict(found)
    for name, shape in fingerprint:
        if name not in actual:
            problem = f"the model has no parameter {name!r}"
            break
        if actual[name] != shape:
            problem = f"parameter {name!r} has shape {actual[name]}, the plan expects {shape}"
            break
    else:
        extra = [name for name in actual if name not in expected]
        problem = f"the model has parameters the plan does not know: {extra[:5]}"
    raise ValueError(
        f"model: the plan was made for a different architecture ({problem}). Apply a plan to a fresh instance "
        "of the model it was made for, in the state it had when planned (earlier plans applied first)."
    )
