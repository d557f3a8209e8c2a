"""Sample-complexity arithmetic of SiPP and PFP: pure functions, no model.

Names follow the papers: ``c`` the constant C, ``delta`` the failure probability, ``P`` output positions per sample
(1 for a Linear), ``kappa`` kernel taps ``kh * kw`` (1 for a Linear), ``a = alpha * S`` the coefficient of a group
with total sensitivity ``S``.
"""

from __future__ import annotations

import math

import torch

MAX_DRAWS = 2**62
"""Cap of :func:`sample_complexity`: far beyond any count at which ``expected_distinct`` is not already ``n``."""


def sensitivity_set_size(neurons: list[int], c: float = 3.0, delta: float = 1e-16) -> int:
    """``|S| = ceil(c * ln(8 * eta * eta_max / delta))`` with ``eta = sum(neurons)``, ``eta_max = max(neurons)``.

    ``neurons`` holds ``eta_l = C_out * H_out * W_out`` (per sample) of every compressible layer. Worked examples: LeNet-300-100 (410 neurons, at most 300 in a layer), ``delta = 1e-12``: 125 with ``c = 3``, 415
    with ``c = 10``.
    """
    if not neurons or min(neurons) < 1:
        raise ValueError(f"neurons: expected a non-empty list of positive counts, got {neurons!r}")
    _check_constants(c, delta)
    return math.ceil(c * math.log(8 * sum(neurons) * max(neurons) / delta))


def alpha(patches: int, kappa: int, c: float = 3.0, delta: float = 1e-16) -> float:
    """``alpha_l = 2 c ln(8 (P + 1) kappa / delta)``: the per-layer factor of the sampling bounds."""
    _check_constants(c, delta)
    return 2 * c * math.log(8 * (patches + 1) * kappa / delta)


def error_bound(x: float, a: float) -> float:
    """``e(x; a) = (sqrt((a / 3x)^2 + 6 a / 3x) + a / 3x) / 2``: SiPPRand's relative error when ``x`` weights of a
    group with coefficient ``a`` are kept (the inverse of a Bernstein bound); ``inf`` for ``x <= 0``."""
    if x <= 0:
        return math.inf
    t = a / (3 * x)
    return 0.5 * (math.sqrt(t * t + 6 * t) + t)


def sample_complexity(epsilon: float, a: float) -> int:
    """``m(eps) = max(1, ceil(3 (6 + 2 eps) a / eps^2))``: PFP's number of draws for a ``(1 +- eps)`` layer."""
    if not epsilon > 0:
        raise ValueError(f"epsilon: expected a number > 0, got {epsilon!r}")
    # Divide twice rather than by eps^2, which underflows to 0 below eps ~ 1e-154; cap the count at
    # MAX_DRAWS, beyond which every channel with a nonzero probability is drawn anyway.
    value = 3 * (6 + 2 * epsilon) * a / epsilon / epsilon
    return 1 if value <= 1 else (math.ceil(value) if value < MAX_DRAWS else MAX_DRAWS)


def expected_distinct(probabilities: torch.Tensor, draws: int) -> int:
    """``ceil(sum_j 1 - (1 - p_j)^m)``: the expected number of distinct items in ``m`` multinomial draws."""
    p = probabilities[probabilities > 0].double()
    # log1p keeps (1 - p)^m accurate for tiny p and huge m.
    return math.ceil(float((-torch.expm1(draws * torch.log1p(-p.clamp_max(1.0)))).sum()) - 1e-9)


def adapt_sample_size(probabilities: torch.Tensor, distinct: int) -> int:
    """The number ``m`` of i.i.d. draws from ``probabilities`` expected to give ``distinct`` distinct items.

    Zeros are ignored; a single probability gives ``distinct``; ``distinct`` in {0, 1} is returned
    as is; with at most one nonzero probability the answer is that count; ``distinct`` is capped at ``n - 1``;
    uniform probabilities use the closed form ``ceil(ln(n / (n - x)) / ln(n / (n - 1)))`` (n = 100, x = 50 -> 69);
    otherwise the *smallest* ``m`` with ``expected_distinct(p, m) >= x`` by integer bisection (the originals
    return any ``m`` on the plateau where the ceiled expectation equals ``x``).
    """
    if not (isinstance(distinct, int) and distinct >= 0):
        raise ValueError(f"distinct: expected an int >= 0, got {distinct!r}")
    p = probabilities.flatten().double()
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("probabilities: expected finite values >= 0")
    nonzero = p[p > 0]
    n = int(nonzero.numel())
    if p.numel() == 1 and n == 1:
        return distinct
    if distinct in (0, 1):
        return distinct
    if n <= 1:
        return n
    x = min(distinct, n - 1)
    if bool((nonzero == nonzero[0]).all()):
        return math.ceil(math.log(n / (n - x)) / math.log(n / (n - 1)) - 1e-12)
    q = nonzero / nonzero.sum()
    # Uniform probabilities maximise the expectation, so no m below the uniform one with E > x - 1 (the
    # ceiled expectation reaching x) can do; a bound from E >= x would skip the smallest m of a near-uniform p.
    low = max(1, math.floor(math.log(n / (n - x + 1)) / -math.log1p(-1 / n)))
    high = low
    while expected_distinct(q, high) < x:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if expected_distinct(q, middle) >= x:
            high = middle
        else:
            low = middle + 1
    return low


def _check_constants(c: float, delta: float) -> None:
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a finite number > 0, got {c!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta: expected a probability in (0, 1), got {delta!r}")
