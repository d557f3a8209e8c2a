"""Layer-similarity metrics: CKA (linear / RBF, biased / unbiased / minibatch), CCA family and NBS."""

from pyprune.similarity._inputs import flatten_activations
from pyprune.similarity.cca import cca, mean_cca, pwcca, r2_cca, svcca, svd_reduce
from pyprune.similarity.cka import HsicTerms, cka, cka_matrix, hsic, hsic_terms
from pyprune.similarity.multi import ModelsCKA, cka_matrix_models
from pyprune.similarity.nbs import nbs, nbs_kernel
from pyprune.similarity.neighbors import cknna, mutual_knn
from pyprune.similarity.procrustes import procrustes_distance, procrustes_similarity
from pyprune.similarity.regression import linear_regression_r2
from pyprune.similarity.rsa import rdm, rsa
from pyprune.similarity.statistics import (
    CKAMatrixTest,
    SimilarityTestResult,
    cka_matrix_test,
    similarity_test,
)
from pyprune.similarity.streaming import MinibatchCKA

__all__ = [
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
]
