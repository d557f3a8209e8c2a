#include "cpu/nm_select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/parallel.h"

namespace pyprune {
namespace {

constexpr int64_t kRowsPerBlock = 8;

// Marks the `drop` lowest (score, column) pairs of columns [begin, begin + count) of one row. nth_element with
// the index as a tie-breaker is a strict total order, so the chosen set is unique whatever the thread count.
void mark_lowest(const double* score, int64_t begin, int64_t count, int64_t drop, std::vector<int64_t>& order,
                 uint8_t* out) {
  if (drop <= 0) return;
  order.resize(count);
  for (int64_t j = 0; j < count; ++j) order[j] = begin + j;
  auto lower = [score](int64_t a, int64_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
  if (drop < count) std::nth_element(order.begin(), order.begin() + (drop - 1), order.end(), lower);
  for (int64_t j = 0; j < std::min(drop, count); ++j) out[order[j]] = 1;
}

}  // namespace

template <typename T>
void nm_select(const T* weight, int64_t rows, int64_t cols, int64_t ld, const double* norms, int64_t k, int64_t n,
               int64_t m, uint8_t* removed, int num_threads) {
  if (rows < 0 || cols < 0 || ld < cols) throw std::invalid_argument("nm_select: bad sizes or leading dimension");
  if (m == 0 && (k < 0 || k > cols)) throw std::invalid_argument("nm_select: k must be in [0, cols]");
  if (m != 0 && (m < 0 || n <= 0 || n >= m || cols % m != 0))
    throw std::invalid_argument("nm_select: need 0 < n < m and cols % m == 0");
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int workers = worker_count(blocks, num_threads);
  std::vector<std::vector<double>> scores(workers, std::vector<double>(cols));
  std::vector<std::vector<int64_t>> orders(workers);
  parallel_blocks(blocks, workers, [&](int worker, int64_t block) {
    double* s = scores[worker].data();
    for (int64_t i = block * kRowsPerBlock; i < std::min(rows, (block + 1) * kRowsPerBlock); ++i) {
      const T* w = weight + i * ld;
      uint8_t* out = removed + i * cols;
      for (int64_t j = 0; j < cols; ++j) {
        // The product of a float widened to double and a double, rounded once: the reference's float64 multiply.
        const double a = std::fabs(static_cast<double>(w[j]));
        const double score = norms ? a * norms[j] : a;
        // NaN (refused by pyprune.ops.checks, but a direct caller may pass one, or inf * 0) compares false with
        // everything, which breaks nth_element's strict order and can take it past the row: rank it as +inf.
        s[j] = std::isnan(score) ? std::numeric_limits<double>::infinity() : score;
        out[j] = 0;
      }
      if (m == 0) {
        mark_lowest(s, 0, cols, k, orders[worker], out);
      } else {
        for (int64_t g = 0; g < cols; g += m) mark_lowest(s, g, m, m - n, orders[worker], out);
      }
    }
  });
}

template void nm_select<float>(const float*, int64_t, int64_t, int64_t, const double*, int64_t, int64_t, int64_t,
                               uint8_t*, int);
template void nm_select<double>(const double*, int64_t, int64_t, int64_t, const double*, int64_t, int64_t, int64_t,
                                uint8_t*, int);

}  // namespace pyprune
