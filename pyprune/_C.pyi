"""Type stub of the compiled module built from csrc/bindings.cpp."""

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

class GramHsicTerms(TypedDict):
    cross: npt.NDArray[np.float64]
    self_a: npt.NDArray[np.float64]
    self_b: npt.NDArray[np.float64]
    row_sums_a: npt.NDArray[np.float64]
    diag_a: npt.NDArray[np.float64]
    row_sums_b: npt.NDArray[np.float64]
    diag_b: npt.NDArray[np.float64]

class RbfCandidateScan(TypedDict):
    cross: npt.NDArray[np.float64]
    self_sq: npt.NDArray[np.float64]
    row_sq: npt.NDArray[np.float64]
    total: npt.NDArray[np.float64]

def gram_hsic_terms(
    grams_a: list[npt.NDArray[np.floating]],
    grams_b: list[npt.NDArray[np.floating]] | None = None,
    num_threads: int = 1,
) -> GramHsicTerms: ...
def rbf_from_linear_gram(gram: npt.NDArray[np.floating], threshold: float, num_threads: int = 1) -> float: ...
def greedy_removal_order(
    interaction: npt.NDArray[np.float64],
    active: npt.NDArray[np.bool_] | None = None,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def rbf_candidate_scan(
    distances_kept: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int64],
    inv_two_sigma_sq: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    num_threads: int = 1,
) -> RbfCandidateScan: ...
def sensitivity_update(
    weight: npt.NDArray[np.floating],
    inputs: npt.NDArray[np.floating],
    z: npt.NDArray[np.floating],
    s_mean: npt.NDArray[np.floating],
    s_max: npt.NDArray[np.floating],
    kernel_size: Sequence[int] = (),
    stride: Sequence[int] = (),
    padding: Sequence[int] = (),
    dilation: Sequence[int] = (),
    num_threads: int = 1,
    check_values: bool = True,
) -> None: ...
def check_sensitivity_values(weight: npt.NDArray[np.floating], inputs: npt.NDArray[np.floating]) -> None: ...
def nm_select(
    weight: npt.NDArray[np.floating],
    norms: npt.NDArray[np.float64] | None,
    k: int = 0,
    n: int = 0,
    m: int = 0,
    num_threads: int = 1,
) -> npt.NDArray[np.uint8]: ...
def permutation_hsic(
    a: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    permutations: npt.NDArray[np.int64],
    num_threads: int = 1,
) -> npt.NDArray[np.float64]: ...
