"""Pruning: criteria score, planners decide (a :class:`PruningPlan`), applying is the only step that mutates.

See :mod:`pyprune.pruning.criteria`, :mod:`~pyprune.pruning.selection`, :mod:`~pyprune.pruning.apply`,
:mod:`~pyprune.pruning.groups` (Torch-Pruning dependency groups) and :mod:`~pyprune.pruning.methods` (the
named-method registry).

``oneshot``, ``provable`` and :class:`TorchPruningImportance` are imported on first access: they pull in the
one-shot solvers, SiPP/PFP and Torch-Pruning, which planning with the other methods does not need.
"""

import importlib
from typing import Any

from pyprune.pruning.apply import apply_plan, make_permanent
from pyprune.pruning.criteria.ablation import AblationDamage, ablation_damage
from pyprune.pruning.criteria.base import ChannelCriterion, Criterion, WeightCriterion
from pyprune.pruning.criteria.cka_damage import CKADamage
from pyprune.pruning.criteria.magnitude import FilterNorm, Magnitude, RandomChannels, RandomWeights
from pyprune.pruning.criteria.taylor import Taylor
from pyprune.pruning.groups import group_scores
from pyprune.pruning.io import load_pruned, save_pruned
from pyprune.pruning.layers import output_layer_name
from pyprune.pruning.methods import METHODS, Method, get_method, plan, prune, register_method
from pyprune.pruning.plan import LayerPlan, PruningPlan
from pyprune.pruning.selection import plan_structured, plan_unstructured
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

_LAZY = {
    "oneshot": ("pyprune.pruning.oneshot", None),
    "provable": ("pyprune.pruning.criteria.provable", None),
    "TorchPruningImportance": ("pyprune.pruning.torch_pruning_importance", "TorchPruningImportance"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)
