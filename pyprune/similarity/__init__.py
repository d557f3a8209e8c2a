"""Layer-similarity metrics: CKA (linear / RBF, biased / unbiased / minibatch), CCA family and NBS."""

from pyprune.similarity._inputs import flatten_activations
from pyprune.similarity.cca import cca, mean_cca, pwcca, r2_cca, svcca, svd_reduce
from pyprune.similarity.cka import HsicTerms, cka, cka_matrix, hsic, hsic_terms
from pyprune.similarity.nbs import nbs, nbs_kernel
from pyprune.similarity.streaming import MinibatchCKA

__all__ = [
    "HsicTerms",
    "MinibatchCKA",
    "cca",
    "cka",
    "cka_matrix",
    "flatten_activations",
    "hsic",
    "hsic_terms",
    "mean_cca",
    "nbs",
    "nbs_kernel",
    "pwcca",
    "r2_cca",
    "svcca",
    "svd_reduce",
]
