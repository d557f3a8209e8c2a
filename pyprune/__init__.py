"""pyprune: fast, exact neural-network pruning and layer-similarity analysis for PyTorch.

Similarity: :func:`cka`, :func:`cka_matrix`, :class:`MinibatchCKA`, :func:`cca`, :func:`mean_cca`,
:func:`svcca`, :func:`pwcca`, :func:`nbs`; activations from :func:`capture`; whole-model heatmaps with
:func:`compare_models`. Kernels: C++ on CPU, CUDA through CuPy, each with a plain-torch reference selected by
:func:`set_backend`. See :func:`info` for what is available on this machine.
"""

from importlib import metadata as _metadata

from pyprune.backend import get_backend, set_backend, use_backend
from pyprune.info import format_info, info
from pyprune.similarity import HsicTerms, MinibatchCKA, cka, cka_matrix, flatten_activations, hsic, hsic_terms

try:
    __version__ = _metadata.version("pyprune")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "HsicTerms",
    "MinibatchCKA",
    "__version__",
    "cka",
    "cka_matrix",
    "flatten_activations",
    "format_info",
    "get_backend",
    "hsic",
    "hsic_terms",
    "info",
    "set_backend",
    "use_backend",
]
