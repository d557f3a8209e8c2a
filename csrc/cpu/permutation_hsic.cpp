#include "cpu/permutation_hsic.h"

#include <algorithm>

#include "cpu/parallel.h"

namespace pyprune {
namespace {

// Permutations handled together: each row of A is loaded once per group and reused from L1/L2 for every
// permutation of the group, so A (half of n^2 values) streams from memory S / kPermGroup times instead of S.
constexpr int64_t kPermGroup = 8;

// sum_{c < len} a[c] * b[p[c]]: a gathered dot product, in double.
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
double gathered_dot(const T* a, const T* b, const int64_t* p, int64_t len) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < len; ++c) sum += static_cast<double>(a[c]) * static_cast<double>(b[p[c]]);
  return sum;
}

}  // namespace

template <typename T>
void permutation_hsic(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t n, const int64_t* perms,
                      int64_t num_perms, int num_threads, double* out) {
  const int64_t num_groups = (num_perms + kPermGroup - 1) / kPermGroup;
  // Each group writes only its own out[] entries, so no per-worker partial sums are needed.
  parallel_blocks(num_groups, num_threads, [&](int, int64_t group) {
    const int64_t s0 = group * kPermGroup, s1 = std::min(num_perms, s0 + kPermGroup);
    double sums[kPermGroup] = {};
    for (int64_t r = 0; r < n; ++r) {
      const T* a_row = a + r * lda;
      const double a_diag = static_cast<double>(a_row[r]);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t* p = perms + s * n;
        const T* b_row = b + p[r] * ldb;
        // Strictly-lower entries stand for themselves and their mirror image, hence the factor 2.
        sums[s - s0] += 2.0 * gathered_dot(a_row, b_row, p, r) + a_diag * static_cast<double>(b_row[p[r]]);
      }
    }
    for (int64_t s = s0; s < s1; ++s) out[s] = sums[s - s0];
  });
}

template void permutation_hsic<float>(const float*, int64_t, const float*, int64_t, int64_t, const int64_t*, int64_t,
                                      int, double*);
template void permutation_hsic<double>(const double*, int64_t, const double*, int64_t, int64_t, const int64_t*,
                                       int64_t, int, double*);

}  // namespace pyprune
