"""Thin dispatchers over pyprune's kernels: each picks the C++, CUDA or plain-torch implementation.

Dependency direction: ``csrc`` kernels <- ``pyprune.ops`` <- metrics and criteria <- pruners <- CLI.
"""

from pyprune.ops.gram import linear_gram
from pyprune.ops.gram_hsic import gram_hsic_terms
from pyprune.ops.permutation_hsic import permutation_hsic
from pyprune.ops.rbf_gram import rbf_from_linear_gram

__all__ = ["gram_hsic_terms", "linear_gram", "permutation_hsic", "rbf_from_linear_gram"]
