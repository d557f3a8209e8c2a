#include "cpu/rbf_gram.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/parallel.h"

namespace pyprune {
namespace {

constexpr int64_t kRowsPerBlock = 32;

// exp(x) for the kernel's arguments x = scale * d <= 0, written without calls or branches so that the pass
// below vectorises (a scalar libm exp costs several times the rest of the pass): x = k ln2 + r with
// |r| <= ln2 / 2 (Cody-Waite: ln2 split in two so k ln2 is exact), exp(r) by its Taylor polynomial of degree
// 13 (truncation below 4e-18 relative), times 2^k built in the exponent bits. Within 2 ulps of exp for
// x >= -708; below, where exp(x) < 3.4e-308, it returns 0 (as exp(-inf)); NaN stays NaN.
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10, kRound = 6755399441055744.0;  // 1.5 * 2^52
  const bool underflow = x < -708.0;
  const double y = underflow ? 0.0 : x;
  const double shifted = y * kLog2e + kRound;  // round to nearest: k sits in the low mantissa bits
  const double k = shifted - kRound;
  const double r = (y - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!, then Horner down to 1/0!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t shifted_bits, scale_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(double));
  scale_bits = (shifted_bits - static_cast<int64_t>(0x4338000000000000) + 1023) << 52;  // 2^k, k in [-1022, 0]
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof(double));
  const double value = p * scale;
  return x != x ? x : (underflow ? 0.0 : value);
}

// row[c] = exp(scale * row[c]) for c < count: one vectorised loop per ISA, picked at load time.
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void exp_row(T* __restrict__ row, int64_t count, double scale) {
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) row[c] = static_cast<T>(exp_nonpositive(scale * static_cast<double>(row[c])));
}

// Selecting the median by a full nth_element over n(n-1)/2 values costs more than the rest of the kernel, so
// it is bracketed first: a deterministic pseudo-random sample of kSample distances gives two values [lo, hi]
// that almost surely enclose the wanted ranks, one parallel pass counts the values below lo and gathers those
// in [lo, hi], and nth_element runs on that small bracket only. If the bracket misses (possible only for
// unusual distributions) the exact fallback selects over a full copy. The result is exact either way.
// The sampled pairs are spread over all samples: a grid of every pair among a few hundred samples gives
// distances correlated through those samples, whose quantiles missed the bracket for plain Gaussian data.
constexpr int64_t kSample = 1 << 15;

// Values of 0-based ranks k_lo and k_hi (k_hi - k_lo in {0, 1}) among the strictly-lower entries of d.
template <typename T>
std::pair<double, double> lower_order_statistics(const T* d, int64_t n, int64_t ld, int64_t k_lo, int64_t k_hi,
                                                 int num_threads) {
  const int64_t m = n * (n - 1) / 2;
  auto select = [&](std::vector<T>& values, int64_t offset) {
    const int64_t hi_index = k_hi - offset;
    std::nth_element(values.begin(), values.begin() + hi_index, values.end());
    const double hi_value = static_cast<double>(values[hi_index]);
    if (k_lo == k_hi) return std::make_pair(hi_value, hi_value);
    // The next smaller rank is the largest value left of hi_index once nth_element has partitioned.
    const double lo_value = hi_index == 0 ? -std::numeric_limits<double>::infinity()
                                          : static_cast<double>(*std::max_element(values.begin(), values.begin() + hi_index));
    return std::make_pair(lo_value, hi_value);
  };
  auto exact = [&]() {
    std::vector<T> all;
    all.reserve(m);
    for (int64_t r = 1; r < n; ++r) all.insert(all.end(), d + r * ld, d + r * ld + r);
    return select(all, 0);
  };
  if (m < 8 * kSample) return exact();

  std::vector<T> sample(kSample);
  for (int64_t i = 0; i < kSample; ++i) {
    // Lower-triangle index q from splitmix64(i), then its row r (r (r - 1) / 2 <= q < r (r + 1) / 2).
    uint64_t z = static_cast<uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    const int64_t q = static_cast<int64_t>((z ^ (z >> 31)) % static_cast<uint64_t>(m));
    int64_t r = static_cast<int64_t>((1.0 + std::sqrt(1.0 + 8.0 * static_cast<double>(q))) * 0.5);
    while (r * (r - 1) / 2 > q) --r;
    while (r * (r + 1) / 2 <= q) ++r;
    sample[i] = d[r * ld + (q - r * (r - 1) / 2)];
  }
  const double size = static_cast<double>(sample.size());
  const double margin = 4.0 * std::sqrt(size) + 8.0;
  const int64_t i_lo = static_cast<int64_t>(std::floor(static_cast<double>(k_lo) / m * size - margin));
  const int64_t i_hi = static_cast<int64_t>(std::ceil(static_cast<double>(k_hi) / m * size + margin));
  // Two selections instead of a sort of the sample (which cost as much as the rest of the median).
  const bool has_lo = i_lo > 0, has_hi = i_hi < static_cast<int64_t>(sample.size());
  if (has_hi) std::nth_element(sample.begin(), sample.begin() + i_hi, sample.end());
  if (has_lo) std::nth_element(sample.begin(), sample.begin() + i_lo, has_hi ? sample.begin() + i_hi : sample.end());
  const T lo = has_lo ? sample[i_lo] : std::numeric_limits<T>::lowest();
  const T hi = has_hi ? sample[i_hi] : std::numeric_limits<T>::max();

  const int64_t num_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int workers = worker_count(num_blocks, num_threads);
  std::vector<int64_t> below(workers, 0);
  std::vector<std::vector<T>> inside(workers);
  parallel_blocks(num_blocks, workers, [&](int worker, int64_t block) {
    const int64_t r0 = block * kRowsPerBlock, r1 = std::min(n, r0 + kRowsPerBlock);
    std::vector<T>& out = inside[worker];
    int64_t count = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = d + r * ld;
      size_t pos = out.size();
      out.resize(pos + static_cast<size_t>(r));  // room for the whole row, trimmed after it
      T* dst = out.data();
      // Branch-free compaction (every value is written, the position advances only for those inside): a
      // branch taken for a few percent of the values at random costs more than the rest of the pass.
      for (int64_t c = 0; c < r; ++c) {
        const T v = row[c];
        count += v < lo;
        dst[pos] = v;
        pos += static_cast<size_t>((v >= lo) & (v <= hi));
      }
      out.resize(pos);
    }
    below[worker] += count;
  });
  int64_t num_below = 0;
  size_t num_inside = 0;
  for (int w = 0; w < workers; ++w) {
    num_below += below[w];
    num_inside += inside[w].size();
  }
  if (num_below > k_lo || num_below + static_cast<int64_t>(num_inside) <= k_hi) return exact();
  std::vector<T> bracket;
  bracket.reserve(num_inside);
  for (const auto& part : inside) bracket.insert(bracket.end(), part.begin(), part.end());
  return select(bracket, num_below);
}

// Median of all n*n squared distances with numpy's convention (mean of the two middle values for an even
// count), from the strictly-lower triangle: every off-diagonal value appears twice in the full matrix and the
// n zeros of the diagonal sort first since D >= 0.
template <typename T>
double full_matrix_median(const T* d, int64_t n, int64_t ld, int num_threads) {
  const int64_t total = n * n;
  const int64_t upper_q = total / 2;
  if (upper_q < n) return 0.0;
  const int64_t k_hi = (upper_q - n) / 2;
  if (total % 2 == 1) return lower_order_statistics(d, n, ld, k_hi, k_hi, num_threads).second;
  const int64_t lower_q = upper_q - 1;
  if (lower_q < n) return 0.5 * lower_order_statistics(d, n, ld, k_hi, k_hi, num_threads).second;
  const auto [lo, hi] = lower_order_statistics(d, n, ld, (lower_q - n) / 2, k_hi, num_threads);
  return 0.5 * (lo + hi);
}

}  // namespace

template <typename T>
double rbf_from_linear_gram(T* gram, int64_t n, int64_t ld, double threshold, int num_threads) {
  if (n < 2) throw std::invalid_argument("rbf_from_linear_gram needs at least 2 samples, got " + std::to_string(n));
  if (!(threshold > 0.0)) throw std::invalid_argument("threshold must be > 0");
  std::vector<double> sq_norms(n);
  for (int64_t r = 0; r < n; ++r) sq_norms[r] = static_cast<double>(gram[r * ld + r]);

  const int64_t num_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  // Pass 1: squared distances in place (strict lower triangle).
  parallel_blocks(num_blocks, num_threads, [&](int, int64_t block) {
    const int64_t lo = block * kRowsPerBlock, hi = std::min(n, lo + kRowsPerBlock);
    for (int64_t r = lo; r < hi; ++r) {
      T* row = gram + r * ld;
      const double nr = sq_norms[r];
      for (int64_t c = 0; c < r; ++c)
        row[c] = static_cast<T>(std::max(0.0, nr + sq_norms[c] - 2.0 * static_cast<double>(row[c])));
      row[r] = T(0);
    }
  });

  const double median = full_matrix_median(gram, n, ld, num_threads);
  bool all_zero = false;
  if (median == 0.0) {
    all_zero = true;
    for (int64_t r = 1; r < n && all_zero; ++r)
      all_zero = std::all_of(gram + r * ld, gram + r * ld + r, [](T v) { return v == T(0); });
  }
  if (median == 0.0 && !all_zero)
    throw std::invalid_argument(
        "the median pairwise distance is 0 (more than half of the samples coincide), so the RBF bandwidth "
        "threshold * median is undefined; use the linear kernel or remove duplicate samples");

  // Pass 2: the kernel itself. A constant representation gives the all-ones kernel.
  const double scale = all_zero ? 0.0 : -1.0 / (2.0 * threshold * threshold * median);
  parallel_blocks(num_blocks, num_threads, [&](int, int64_t block) {
    const int64_t lo = block * kRowsPerBlock, hi = std::min(n, lo + kRowsPerBlock);
    for (int64_t r = lo; r < hi; ++r) {
      T* row = gram + r * ld;
      exp_row(row, r, scale);
      row[r] = T(1);
    }
  });
  return median;
}

template double rbf_from_linear_gram<float>(float*, int64_t, int64_t, double, int);
template double rbf_from_linear_gram<double>(double*, int64_t, int64_t, double, int);

}  // namespace pyprune
