"""pyprune: fast, exact neural-network pruning and layer-similarity analysis for PyTorch.

Similarity: :func:`cka`, :func:`cka_matrix`, :class:`MinibatchCKA`, :func:`cca`, :func:`mean_cca`,
:func:`svcca`, :func:`pwcca`, :func:`nbs`; activations from :func:`capture`; whole-model heatmaps with
:func:`compare_models`. Kernels: C++ on CPU, CUDA through CuPy, each with a plain-torch reference selected by
:func:`set_backend`. See :func:`info` for what is available on this machine.
"""

from importlib import import_module
from importlib import metadata as _metadata
from importlib.util import find_spec
from typing import Any

# Public names by the module that defines them. Nothing is imported until first use, so that `import pyprune`
# costs nothing beyond its own file: someone computing CKA does not pay for Torch-Pruning, SciPy's optimisers or
# the training loop, and each of those loads the first time one of its names is touched.
_PUBLIC = {
    "pyprune.activations": ("capture", "iterate_activations"),
    "pyprune.compare": ("LayerSimilarity", "compare_models"),
    "pyprune.measure": ("count", "latency", "report"),
    "pyprune.ops.backend": ("get_backend", "set_backend", "use_backend"),
    "pyprune.plot": ("plot_similarity",),
    "pyprune.pruning": (
        "METHODS",
        "AblationDamage",
        "CKADamage",
        "FilterNorm",
        "Magnitude",
        "PruningPlan",
        "RandomChannels",
        "RandomWeights",
        "Taylor",
        "TorchPruningImportance",
        "ablation_damage",
        "apply_plan",
        "load_pruned",
        "make_permanent",
        "plan",
        "plan_structured",
        "plan_unstructured",
        "prune",
        "register_method",
        "save_pruned",
        "sensitivity_analysis",
    ),
    "pyprune.pruning.depth": ("BlockPlan", "block_importance", "plan_blocks", "prune_blocks"),
    "pyprune.similarity": (
        "CKAMatrixTest",
        "HsicTerms",
        "MinibatchCKA",
        "ModelsCKA",
        "SimilarityTestResult",
        "cca",
        "cka",
        "cka_matrix",
        "cka_matrix_models",
        "cka_matrix_test",
        "cknna",
        "flatten_activations",
        "hsic",
        "hsic_terms",
        "linear_regression_r2",
        "mean_cca",
        "mutual_knn",
        "nbs",
        "nbs_kernel",
        "procrustes_distance",
        "procrustes_similarity",
        "pwcca",
        "r2_cca",
        "rdm",
        "rsa",
        "similarity_test",
        "svcca",
        "svd_reduce",
    ),
    "pyprune.system_info": ("format_info", "info"),
}
# Modules bound under a short name: `pyprune.train.fit(...)`, `pyprune.schedules.imp(...)`.
_MODULES = {"schedules": "pyprune.training.schedules", "train": "pyprune.training.fit"}
_HOME = {name: module for module, names in _PUBLIC.items() for name in names}

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


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = import_module(_MODULES[name])
    elif name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
    elif not name.startswith("__") and find_spec(f"pyprune.{name}") is not None:
        value = import_module(
            f"pyprune.{name}"
        )  # a submodule: `pyprune.models.resnet20()` after `import pyprune`
    else:
        raise AttributeError(f"module 'pyprune' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
