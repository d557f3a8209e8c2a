"""Type stub of the compiled module built from csrc/bindings.cpp."""

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

def gram_hsic_terms(
    grams_a: list[npt.NDArray[np.floating]],
    grams_b: list[npt.NDArray[np.floating]] | None = None,
    num_threads: int = 1,
) -> GramHsicTerms: ...
def rbf_from_linear_gram(gram: npt.NDArray[np.floating], threshold: float, num_threads: int = 1) -> float: ...
