"""Every op of the kernel layer, by its :class:`~pyprune.ops.spec.OpSpec`: what ``pyprune info`` lists and what
``tests/test_ops_spec.py`` checks against the references. An op that is not here is not tested as a kernel."""

from __future__ import annotations

from pyprune.ops.cka_damage import GREEDY_SPEC, SCAN_SPEC
from pyprune.ops.gram_hsic import SPEC as GRAM_HSIC_SPEC
from pyprune.ops.nm_select import SPEC as NM_SELECT_SPEC
from pyprune.ops.permutation_hsic import SPEC as PERMUTATION_HSIC_SPEC
from pyprune.ops.rbf_gram import SPEC as RBF_GRAM_SPEC
from pyprune.ops.sensitivity import SPEC as SENSITIVITY_SPEC
from pyprune.ops.spec import OpSpec

OPS: tuple[OpSpec, ...] = (
    GRAM_HSIC_SPEC,
    RBF_GRAM_SPEC,
    GREEDY_SPEC,
    SCAN_SPEC,
    SENSITIVITY_SPEC,
    NM_SELECT_SPEC,
    PERMUTATION_HSIC_SPEC,
)
