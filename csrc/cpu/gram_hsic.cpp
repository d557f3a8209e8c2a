#include "cpu/gram_hsic.h"

#include <algorithm>
#include <vector>

#include "cpu/parallel.h"

namespace pyprune {
namespace {

constexpr int64_t kRowsPerBlock = 16;
// Column chunk of one row for all La + Lb matrices: small enough that the chunks of twenty or so layers sit in
// L2 while every pair is multiplied, so each Gram entry is loaded from memory once.
constexpr int64_t kColumnChunk = 512;

template <typename T>
inline double dot_to_double(const T* x, const T* y, int64_t len) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < len; ++k) sum += static_cast<double>(x[k]) * static_cast<double>(y[k]);
  return sum;
}

template <typename T>
inline double sum_to_double(const T* x, int64_t len) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < len; ++k) sum += static_cast<double>(x[k]);
  return sum;
}

template <typename T>
inline void add_to_double(double* acc, const T* x, int64_t len) {
#pragma omp simd
  for (int64_t k = 0; k < len; ++k) acc[k] += static_cast<double>(x[k]);
}

// Partial sums owned by one worker; merged after the parallel loop.
struct Partial {
  std::vector<double> cross, self_a, self_b, rows_a, rows_b;
};

// Accumulates row r of every matrix into `part`. target_clones builds AVX-512, AVX2 and baseline versions and
// picks one at load time, so one binary is fast on every x86-64 machine.
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void accumulate_row(const T* const* grams_a, const int64_t* ld_a, int64_t num_a, const T* const* grams_b,
                    const int64_t* ld_b, int64_t num_b, bool same, int64_t n, int64_t r, Partial& part) {
  const int64_t num_cols = r;  // strictly-lower entries of row r; the diagonal is added with weight 1 below
  std::vector<const T*> row_a(num_a), row_b(num_b);
  for (int64_t i = 0; i < num_a; ++i) row_a[i] = grams_a[i] + r * ld_a[i];
  for (int64_t j = 0; j < num_b; ++j) row_b[j] = grams_b[j] + r * ld_b[j];

  for (int64_t c0 = 0; c0 < num_cols; c0 += kColumnChunk) {
    const int64_t len = std::min(kColumnChunk, num_cols - c0);
    for (int64_t i = 0; i < num_a; ++i) {
      const T* x = row_a[i] + c0;
      if (same) {
        for (int64_t j = i; j < num_a; ++j) part.cross[i * num_a + j] += 2.0 * dot_to_double(x, row_a[j] + c0, len);
      } else {
        for (int64_t j = 0; j < num_b; ++j) part.cross[i * num_b + j] += 2.0 * dot_to_double(x, row_b[j] + c0, len);
        part.self_a[i] += 2.0 * dot_to_double(x, x, len);
      }
      part.rows_a[i * n + r] += sum_to_double(x, len);
      add_to_double(part.rows_a.data() + i * n + c0, x, len);
    }
    if (!same) {
      for (int64_t j = 0; j < num_b; ++j) {
        const T* y = row_b[j] + c0;
        part.self_b[j] += 2.0 * dot_to_double(y, y, len);
        part.rows_b[j * n + r] += sum_to_double(y, len);
        add_to_double(part.rows_b.data() + j * n + c0, y, len);
      }
    }
  }
  // Diagonal entries (r, r).
  for (int64_t i = 0; i < num_a; ++i) {
    const double da = static_cast<double>(row_a[i][r]);
    part.rows_a[i * n + r] += da;
    if (same) {
      for (int64_t j = i; j < num_a; ++j) part.cross[i * num_a + j] += da * static_cast<double>(row_a[j][r]);
    } else {
      for (int64_t j = 0; j < num_b; ++j) part.cross[i * num_b + j] += da * static_cast<double>(row_b[j][r]);
      part.self_a[i] += da * da;
    }
  }
  if (!same) {
    for (int64_t j = 0; j < num_b; ++j) {
      const double db = static_cast<double>(row_b[j][r]);
      part.rows_b[j * n + r] += db;
      part.self_b[j] += db * db;
    }
  }
}

}  // namespace

template <typename T>
void gram_hsic_terms(const T* const* grams_a, const int64_t* ld_a, int64_t num_a, const T* const* grams_b,
                     const int64_t* ld_b, int64_t num_b, int64_t n, int num_threads, double* cross,
                     double* self_a, double* self_b, double* row_sums_a, double* diag_a, double* row_sums_b,
                     double* diag_b) {
  const bool same = grams_b == nullptr;
  if (same) {
    grams_b = grams_a;
    ld_b = ld_a;
    num_b = num_a;
  }
  const int64_t num_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int workers = worker_count(num_blocks, num_threads);
  std::vector<Partial> parts(workers);
  for (auto& part : parts) {
    part.cross.assign(num_a * num_b, 0.0);
    part.rows_a.assign(num_a * n, 0.0);
    if (!same) {
      part.self_a.assign(num_a, 0.0);
      part.self_b.assign(num_b, 0.0);
      part.rows_b.assign(num_b * n, 0.0);
    }
  }
  // Blocks are dealt bottom-up (the long rows first) in a fixed cyclic order, and the partials are merged in
  // worker order below: the floating-point sums are then the same on every run with this thread count.
  parallel_blocks_cyclic(num_blocks, workers, [&](int worker, int64_t block) {
    const int64_t hi = n - block * kRowsPerBlock;
    const int64_t lo = std::max<int64_t>(0, hi - kRowsPerBlock);
    for (int64_t r = hi - 1; r >= lo; --r)
      accumulate_row(grams_a, ld_a, num_a, grams_b, ld_b, num_b, same, n, r, parts[worker]);
  });

  std::fill(cross, cross + num_a * num_b, 0.0);
  std::fill(row_sums_a, row_sums_a + num_a * n, 0.0);
  if (!same) {
    std::fill(self_a, self_a + num_a, 0.0);
    std::fill(self_b, self_b + num_b, 0.0);
    std::fill(row_sums_b, row_sums_b + num_b * n, 0.0);
  }
  for (const auto& part : parts) {
    for (int64_t k = 0; k < num_a * num_b; ++k) cross[k] += part.cross[k];
    for (int64_t k = 0; k < num_a * n; ++k) row_sums_a[k] += part.rows_a[k];
    if (!same) {
      for (int64_t k = 0; k < num_a; ++k) self_a[k] += part.self_a[k];
      for (int64_t k = 0; k < num_b; ++k) self_b[k] += part.self_b[k];
      for (int64_t k = 0; k < num_b * n; ++k) row_sums_b[k] += part.rows_b[k];
    }
  }
  if (same) {
    for (int64_t i = 0; i < num_a; ++i) {
      for (int64_t j = 0; j < i; ++j) cross[i * num_a + j] = cross[j * num_a + i];
      self_a[i] = cross[i * num_a + i];
    }
  }
  for (int64_t i = 0; i < num_a; ++i)
    for (int64_t r = 0; r < n; ++r) diag_a[i * n + r] = static_cast<double>(grams_a[i][r * ld_a[i] + r]);
  if (!same) {
    for (int64_t j = 0; j < num_b; ++j)
      for (int64_t r = 0; r < n; ++r) diag_b[j * n + r] = static_cast<double>(grams_b[j][r * ld_b[j] + r]);
  }
}

template void gram_hsic_terms<float>(const float* const*, const int64_t*, int64_t, const float* const*,
                                     const int64_t*, int64_t, int64_t, int, double*, double*, double*, double*,
                                     double*, double*, double*);
template void gram_hsic_terms<double>(const double* const*, const int64_t*, int64_t, const double* const*,
                                      const int64_t*, int64_t, int64_t, int, double*, double*, double*, double*,
                                      double*, double*, double*);

}  // namespace pyprune
