"""Textbook float64 NumPy implementations of the similarity definitions, written independently of pyprune's
code paths: explicit n x n matrices, the centering matrix H, Song et al.'s formula term by term."""

from __future__ import annotations

import numpy as np


def linear_gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x @ x.T


def rbf_gram(x: np.ndarray, threshold: float) -> np.ndarray:
    """Google's convention: sigma^2 = threshold^2 * median of all squared distances (diagonal included)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sq = np.sum(x * x, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    np.fill_diagonal(dist, 0)
    return np.exp(-dist / (2 * threshold**2 * np.median(dist)))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.sum((h @ k @ h) * (h @ l @ h))) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def cka(x, y, kernel: str = "linear", threshold: float = 0.5, unbiased: bool = False) -> float:
    gram = linear_gram if kernel == "linear" else (lambda a: rbf_gram(a, threshold))
    k, l = gram(x), gram(y)
    hsic = hsic_unbiased if unbiased else hsic_biased
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
