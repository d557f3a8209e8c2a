// Inner products of one symmetric matrix with many simultaneous row-and-column permutations of another.
//
// For symmetric n x n matrices A and B and S permutations p_s of {0, ..., n-1} this computes
//   out[s] = <A, P_s B P_s^T>_F = sum_{i,j} A[i, j] B[p_s(i), p_s(j)]
// accumulated in double whatever T is. With A, B the centred Gram matrices HKH and HLH of two layers, out[s] is
// the biased HSIC numerator of the layers after shuffling the samples of the second one by p_s, so a CKA
// permutation test needs only this and the two (fixed) self terms. Only the lower triangle of A is read (c <= r);
// B is read at arbitrary (r, c), so it must be stored in full.
#pragma once

#include <cstdint>

namespace pyprune {

// a: element (0, 0) of A, rows lda elements apart; b likewise with ldb. perms: S x n row-major int64, each row a
// permutation of 0..n-1 (not re-checked here: the caller validates). out: S doubles, overwritten.
template <typename T>
void permutation_hsic(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t n, const int64_t* perms,
                      int64_t num_perms, int num_threads, double* out);

}  // namespace pyprune
