"""One-shot pruning of language models from a small calibration set.

Methods (registered, so ``pyprune.plan``/``prune``, plans in JSON, ``load_pruned`` and the schedules take them):

* ``"wanda"``: Sun et al. 2023, ``|W_ij| * ||X_j||_2`` compared within each output row.
* ``"sparsegpt"``: Frantar & Alistarh 2023, layer-wise OBS reconstruction (the new weights are in the plan).
* ``"magnitude"`` with ``n_m=(2, 4)``, ``owl=True`` or ``blocks=...`` runs here too (the one-shot form of the
  magnitude baseline).

Every method takes ``n_m=(n, m)`` for N:M semi-structured sparsity and ``owl=True`` for OWL's outlier-weighed
block sparsities (Yin et al. 2023). :func:`to_semi_structured` moves 2:4-sparse Linear weights to
``torch.sparse.to_sparse_semi_structured`` on GPUs that support it.
"""

from pyprune.pruning.methods import Method, register_method
from pyprune.pruning.oneshot.calibration import find_blocks, run_blocks
from pyprune.pruning.oneshot.owl import outlier_ratio, owl_n_per_block, owl_sparsities
from pyprune.pruning.oneshot.planner import SCORES, plan_oneshot
from pyprune.pruning.oneshot.semi_structured import (
    satisfies_n_m,
    semi_structured_unsupported,
    to_semi_structured,
)
from pyprune.pruning.oneshot.solvers import select_by_score, sparsegpt


def _planner(score: str):
    def planner(model, amount, *, example_input=None, data=None, loss_fn=None, seed=0, **options):
        # Deterministic given the calibration batches: the seed of a sampled calibration set is the caller's.
        return plan_oneshot(model, amount, method=score, data=data, example_input=example_input, **options)

    return planner


ONESHOT_OPTIONS = ("n_m", "owl", "blocks")
"""Options that send the ``"magnitude"`` method to :func:`plan_oneshot`."""

magnitude_oneshot = _planner("magnitude")

for _method in (
    Method(
        "wanda",
        _planner("wanda"),
        "|w| * ||x_j|| per output row, one-shot from calibration data (Sun et al. 2023)",
        False,
        needs_data=True,
    ),
    Method(
        "sparsegpt",
        _planner("sparsegpt"),
        "OBS reconstruction, one-shot from calibration data (Frantar & Alistarh 2023)",
        False,
        needs_data=True,
    ),
):
    register_method(_method)

__all__ = [
    "ONESHOT_OPTIONS",
    "SCORES",
    "find_blocks",
    "magnitude_oneshot",
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
