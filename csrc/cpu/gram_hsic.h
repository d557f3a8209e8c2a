// Fused HSIC statistics of many symmetric Gram matrices.
//
// For Gram matrices A_1..A_La and B_1..B_Lb (all n x n, symmetric) this computes, in one pass over their lower
// triangles, everything that biased HSIC, unbiased HSIC_1 and CKA need:
//   cross[i, j] = <A_i, B_j>_F               (La x Lb)
//   self_a[i]   = <A_i, A_i>_F,  self_b[j] = <B_j, B_j>_F
//   row_sums_a[i, :] = A_i 1,  diag_a[i, :] = diag(A_i)  (and the same for B)
// Every product and sum is accumulated in double whatever T is. Only entries (r, c) with c <= r are read, so
// the upper triangle may hold anything (for example the untouched half of a BLAS syrk result).
#pragma once

#include <cstdint>

namespace pyprune {

// grams_a[i] points at element (0, 0) of A_i, whose rows are ld_a[i] elements apart (columns contiguous).
// When grams_b is nullptr the B side is A itself: cross is La x La and symmetric, self_b/row_sums_b/diag_b are
// not written. Output arrays are dense row-major and are overwritten.
template <typename T>
void gram_hsic_terms(const T* const* grams_a, const int64_t* ld_a, int64_t num_a,
                     const T* const* grams_b, const int64_t* ld_b, int64_t num_b, int64_t n, int num_threads,
                     double* cross, double* self_a, double* self_b, double* row_sums_a, double* diag_a,
                     double* row_sums_b, double* diag_b);

}  // namespace pyprune
