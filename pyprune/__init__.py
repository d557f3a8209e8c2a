"""pyprune: fast, exact neural-network pruning and layer-similarity analysis for PyTorch.

Similarity: :func:`cka`, :func:`cka_matrix`, :class:`MinibatchCKA`, :func:`cca`, :func:`mean_cca`,
:func:`svcca`, :func:`pwcca`, :func:`nbs`; activations from :func:`capture`; whole-model heatmaps with
:func:`compare_models`. Kernels: C++ on CPU, CUDA through CuPy, each with a plain-torch reference selected by
:func:`set_backend`. See :func:`info` for what is available on this machine.
"""

from importlib import metadata as _metadata

from pyprune.activations import capture, iterate_activations
from pyprune.compare import LayerSimilarity, compare_models
from pyprune.measure import count, latency, report
from pyprune.ops.backend import get_backend, set_backend, use_backend
from pyprune.plot import plot_similarity
from pyprune.pruning import (
    METHODS,
    AblationDamage,
    CKADamage,
    FilterNorm,
    Magnitude,
    PruningPlan,
    RandomChannels,
    RandomWeights,
    Taylor,
    TorchPruningImportance,
    ablation_damage,
    apply_plan,
    load_pruned,
    make_permanent,
    plan,
    plan_structured,
    plan_unstructured,
    prune,
    register_method,
    save_pruned,
    sensitivity_analysis,
)
from pyprune.pruning.depth import BlockPlan, block_importance, plan_blocks, prune_blocks
from pyprune.similarity import (
    CKAMatrixTest,
    HsicTerms,
    MinibatchCKA,
    ModelsCKA,
    SimilarityTestResult,
    cca,
    cka,
    cka_matrix,
    cka_matrix_models,
    cka_matrix_test,
    cknna,
    flatten_activations,
    hsic,
    hsic_terms,
    linear_regression_r2,
    mean_cca,
    mutual_knn,
    nbs,
    nbs_kernel,
    procrustes_distance,
    procrustes_similarity,
    pwcca,
    r2_cca,
    rdm,
    rsa,
    similarity_test,
    svcca,
    svd_reduce,
)
from pyprune.system_info import format_info, info
from pyprune.training import fit as train
from pyprune.training import schedules

try:
    __version__ = _metadata.version("pyprune")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "METHODS",
    "AblationDamage",
    "BlockPlan",
    "CKADamage",
    "CKAMatrixTest",
    "FilterNorm",
    "HsicTerms",
    "LayerSimilarity",
    "Magnitude",
    "MinibatchCKA",
    "ModelsCKA",
    "PruningPlan",
    "RandomChannels",
    "RandomWeights",
    "SimilarityTestResult",
    "Taylor",
    "TorchPruningImportance",
    "__version__",
    "ablation_damage",
    "apply_plan",
    "block_importance",
    "capture",
    "cca",
    "cka",
    "cka_matrix",
    "cka_matrix_models",
    "cka_matrix_test",
    "cknna",
    "compare_models",
    "count",
    "flatten_activations",
    "format_info",
    "get_backend",
    "hsic",
    "hsic_terms",
    "info",
    "iterate_activations",
    "latency",
    "linear_regression_r2",
    "load_pruned",
    "make_permanent",
    "mean_cca",
    "mutual_knn",
    "nbs",
    "nbs_kernel",
    "plan",
    "plan_blocks",
    "plan_structured",
    "plan_unstructured",
    "plot_similarity",
    "procrustes_distance",
    "procrustes_similarity",
    "prune",
    "prune_blocks",
    "pwcca",
    "r2_cca",
    "rdm",
    "register_method",
    "report",
    "rsa",
    "save_pruned",
    "schedules",
    "sensitivity_analysis",
    "set_backend",
    "similarity_test",
    "svcca",
    "svd_reduce",
    "train",
    "use_backend",
]
