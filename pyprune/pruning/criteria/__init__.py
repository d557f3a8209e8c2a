"""Pruning criteria: what scores the weights or channels of a layer (higher is more important).

* :mod:`~pyprune.pruning.criteria.magnitude`: the base classes and the weight-only criteria (magnitude, filter
  norms, random baselines).
* :mod:`~pyprune.pruning.criteria.taylor`: first-order Taylor expansion of the loss (Molchanov et al. 2017).
* :mod:`~pyprune.pruning.criteria.cka_damage`: CKA damage of a layer's output when channels go.
* :mod:`~pyprune.pruning.criteria.ablation`: the loss increase of ablating each channel (Molchanov's oracle).
* :mod:`~pyprune.pruning.criteria.provable`: empirical sensitivity with provable error bounds (SiPP, PFP).

Each module is imported on its own; this package imports none of them, so scoring with one criterion does not
load the others.
"""
