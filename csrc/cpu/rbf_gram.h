// RBF kernel matrix from a linear Gram matrix, with the bandwidth set from the median pairwise distance.
#pragma once

#include <cstdint>

namespace pyprune {

// On entry the lower triangle of `gram` (n x n, rows ld elements apart) holds G = X X^T. On exit it holds
// K_rc = exp(-D_rc / (2 t^2 m)) with D_rc = |x_r - x_c|^2 = G_rr + G_cc - 2 G_rc (clamped at 0 against
// round-off) and m = the median of all n^2 entries of D, the zero diagonal included, with numpy's convention
// for an even count (mean of the two middle values). This is Kornblith et al.'s "threshold x median distance"
// bandwidth. The upper triangle is not touched. Returns m.
//
// If every D is zero (a constant representation) K becomes all ones. If m is zero while some distances are
// not, the bandwidth is undefined and std::invalid_argument is thrown.
template <typename T>
double rbf_from_linear_gram(T* gram, int64_t n, int64_t ld, double threshold, int num_threads);

}  // namespace pyprune
