"""Sensitivity-based provable pruning (Baykal et al. 2019, Liebenwein et al. 2020): SiPP for weights, PFP for filters.

Three separate steps: sensitivities (:class:`SensitivityTracker`), allocation of the budget
across layers, sparsification (top-k or importance sampling with reweighting).
"""

from pyprune.pruning.criteria.provable.bounds import (
    adapt_sample_size,
    alpha,
    error_bound,
    expected_distinct,
    sample_complexity,
    sensitivity_set_size,
)
from pyprune.pruning.criteria.provable.pfp import (
    PFPAllocation,
    PFPAllocator,
    PFPGroup,
    PFPLayer,
    PFPNetwork,
    pfp_network,
    plan_pfp,
    select_channels,
)
from pyprune.pruning.criteria.provable.sipp import (
    SiPPAllocation,
    SmallSensitivitySetWarning,
    continuous_allocation,
    group_error,
    integer_allocation,
    sipp_allocation,
    sipp_det_plan,
    sipp_hybrid_plan,
    sipp_rand_plan,
)
from pyprune.pruning.criteria.provable.tracker import LayerShape, SensitivityTracker

__all__ = [
    "LayerShape",
    "PFPAllocation",
    "PFPAllocator",
    "PFPGroup",
    "PFPLayer",
    "PFPNetwork",
    "SensitivityTracker",
    "SiPPAllocation",
    "SmallSensitivitySetWarning",
    "adapt_sample_size",
    "alpha",
    "continuous_allocation",
    "error_bound",
    "expected_distinct",
    "group_error",
    "integer_allocation",
    "pfp_network",
    "plan_pfp",
    "sample_complexity",
    "select_channels",
    "sensitivity_set_size",
    "sipp_allocation",
    "sipp_det_plan",
    "sipp_hybrid_plan",
    "sipp_rand_plan",
]
