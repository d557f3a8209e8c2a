"""Pruning: criteria score, planners decide (a :class:`PruningPlan`), applying is the only step that mutates.

See :mod:`pyprune.pruning.criteria`, :mod:`~pyprune.pruning.selection`, :mod:`~pyprune.pruning.apply`,
:mod:`~pyprune.pruning.groups` (Torch-Pruning dependency groups) and :mod:`~pyprune.pruning.methods` (the
named-method registry).
"""

from pyprune.pruning import oneshot  # importing it registers wanda and sparsegpt
from pyprune.pruning.apply import apply_plan, make_permanent
from pyprune.pruning.criteria import provable  # importing it registers the SiPP and PFP methods
from pyprune.pruning.criteria.ablation import AblationDamage, ablation_damage
from pyprune.pruning.criteria.cka_damage import CKADamage
from pyprune.pruning.criteria.magnitude import (
    ChannelCriterion,
    Criterion,
    FilterNorm,
    Magnitude,
    RandomChannels,
    RandomWeights,
    WeightCriterion,
)
from pyprune.pruning.criteria.taylor import Taylor
from pyprune.pruning.groups import TorchPruningImportance, group_scores
from pyprune.pruning.io import load_pruned, save_pruned
from pyprune.pruning.methods import METHODS, Method, get_method, plan, prune, register_method
from pyprune.pruning.plan import LayerPlan, PruningPlan
from pyprune.pruning.selection import output_layer_name, plan_structured, plan_unstructured
from pyprune.pruning.sensitivity_sweep import Sensitivity, sensitivity_analysis

__all__ = [
    "METHODS",
    "AblationDamage",
    "CKADamage",
    "ChannelCriterion",
    "Criterion",
    "FilterNorm",
    "LayerPlan",
    "Magnitude",
    "Method",
    "PruningPlan",
    "RandomChannels",
    "RandomWeights",
    "Sensitivity",
    "Taylor",
    "TorchPruningImportance",
    "WeightCriterion",
    "ablation_damage",
    "apply_plan",
    "get_method",
    "group_scores",
    "load_pruned",
    "make_permanent",
    "oneshot",
    "output_layer_name",
    "plan",
    "plan_structured",
    "plan_unstructured",
    "provable",
    "prune",
    "register_method",
    "save_pruned",
    "sensitivity_analysis",
]
