"""Layer-similarity metrics: CKA (linear / RBF, biased / unbiased / minibatch), CCA family and NBS."""

from pyprune.similarity._inputs import flatten_activations
from pyprune.similarity.cka import HsicTerms, cka, cka_matrix, hsic, hsic_terms
from pyprune.similarity.streaming import MinibatchCKA

__all__ = ["HsicTerms", "MinibatchCKA", "cka", "cka_matrix", "flatten_activations", "hsic", "hsic_terms"]
