"""One-shot pruning of language models from a small calibration set.

Methods (listed in :data:`pyprune.pruning.methods.BUILTIN_METHODS`, so ``pyprune.plan``/``prune``, plans in JSON,
``load_pruned`` and the schedules take them):

* ``"wanda"``: Sun et al. 2023, ``|W_ij| * ||X_j||_2`` compared within each output row.
* ``"sparsegpt"``: Frantar & Alistarh 2023, layer-wise OBS reconstruction (the new weights are in the plan).
* ``"magnitude"`` with ``n_m=(2, 4)``, ``owl=True`` or ``blocks=...`` runs here too (the one-shot form of the
  magnitude baseline).

Every method takes ``n_m=(n, m)`` for N:M semi-structured sparsity and ``owl=True`` for OWL's outlier-weighed
block sparsities (Yin et al. 2023). :func:`to_semi_structured` moves 2:4-sparse Linear weights to
``torch.sparse.to_sparse_semi_structured`` on GPUs that support it.
"""

from pyprune.pruning.oneshot.calibration import find_blocks, run_blocks
from pyprune.pruning.oneshot.owl import outlier_ratio, owl_n_per_block, owl_sparsities
from pyprune.pruning.oneshot.planner import SCORES, plan_oneshot
from pyprune.pruning.oneshot.semi_structured import (
    satisfies_n_m,
    semi_structured_unsupported,
    to_semi_structured,
)
from pyprune.pruning.oneshot.solvers import select_by_score, sparsegpt

__all__ = [
    "SCORES",
    "find_blocks",
    "outlier_ratio",
    "owl_n_per_block",
    "owl_sparsities",
    "plan_oneshot",
    "run_blocks",
    "satisfies_n_m",
    "select_by_score",
    "semi_structured_unsupported",
    "sparsegpt",
    "to_semi_structured",
]
