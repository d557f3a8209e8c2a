"""Pruning criteria: what scores the weights or channels of a layer (higher is more important).

* :mod:`~pyprune.pruning.criteria.base`: what a criterion is (:class:`~pyprune.pruning.criteria.base.Criterion`,
  weight and channel granularity) and which layers are prunable.
* :mod:`~pyprune.pruning.criteria.magnitude`: the weight-only criteria (magnitude, filter norms, random baselines).
* :mod:`~pyprune.pruning.criteria.scored_layers`: which layers a data-driven criterion scores and where it reads
  their outputs (shared by Taylor, CKA damage and ablation).
* :mod:`~pyprune.pruning.criteria.taylor`: first-order Taylor expansion of the loss (Molchanov et al. 2017).
* :mod:`~pyprune.pruning.criteria.cka_damage`: CKA damage of a layer's output when channels go.
* :mod:`~pyprune.pruning.criteria.ablation`: the loss increase of ablating each channel (Molchanov's oracle).
* :mod:`~pyprune.pruning.criteria.provable`: empirical sensitivity with provable error bounds (SiPP, PFP).

Each module is imported on its own; this package imports none of them, so scoring with one criterion does not
load the others. The data-driven modules also hold the planner their named method runs (``plan_taylor``,
``plan_cka_damage``, ``plan_oracle``, ``plan_sipp``, ``plan_pfp``), listed in
:data:`pyprune.pruning.methods.BUILTIN_METHODS`.
"""
