// Per-row lowest-k and N:M selection fused with Wanda scoring (Sun et al. 2023). Defined by the plain-torch
// reference nm_select_reference in pyprune/ops/reference.py.
//
// For a weight W (rows x cols, the (out, in) orientation) and input-feature norms x_j >= 0 (nullptr: all 1,
// i.e. magnitude), the score of weight (i, j) is s_ij = |W_ij| * x_j computed in double. Scores are compared
// within a row, in the order (s_ij, j): equal scores rank the lower column first.
//   m == 0: the k lowest of every row are removed (0 <= k <= cols).
//   m > 0:  every group of m consecutive columns keeps n (0 < n < m, cols % m == 0): its m - n lowest go.
// removed (rows x cols, row-major) receives 1 where removed and 0 elsewhere. Extra memory: cols doubles and
// cols indices per thread.
#pragma once

#include <cstdint>

namespace pyprune {

template <typename T>
void nm_select(const T* weight, int64_t rows, int64_t cols, int64_t ld, const double* norms, int64_t k, int64_t n,
               int64_t m, uint8_t* removed, int num_threads);

}  // namespace pyprune
