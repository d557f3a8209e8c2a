// Standalone tests of the CPU kernels: no Python, no framework. Build with
//   cmake -S . -B build/cpp -DPYPRUNE_BUILD_TESTS=ON && cmake --build build/cpp && ctest --test-dir build/cpp
// Each kernel is compared with a direct O(n^2) evaluation of its definition on pseudo-random matrices.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "cpu/gram_hsic.h"
#include "cpu/rbf_gram.h"

namespace {

int failures = 0;

// Relative tolerance against `scale`, the magnitude of the summands (sums may cancel to near zero).
void expect_close(double got, double want, double rel, const char* what, double scale = 0.0) {
  if (std::fabs(got - want) > rel * (std::fabs(want) + scale + 1e-12)) {
    std::printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    ++failures;
  }
}

// Symmetric n x n Gram of random points, stored with leading dimension ld; the upper triangle is garbage.
// With `integer` the points lie on a small integer grid, so many distances tie.
std::vector<double> random_gram(int64_t n, int64_t ld, std::mt19937& rng, bool integer = false) {
  std::normal_distribution<double> normal;
  const int64_t p = 3;
  std::vector<double> x(n * p), g(n * ld, 1e30);
  for (auto& v : x) v = integer ? std::round(2.0 * normal(rng)) : normal(rng);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c <= r; ++c) {
      double s = 0;
      for (int64_t k = 0; k < p; ++k) s += x[r * p + k] * x[c * p + k];
      g[r * ld + c] = s;
    }
  return g;
}

double sym(const std::vector<double>& g, int64_t ld, int64_t r, int64_t c) {
  return r >= c ? g[r * ld + c] : g[c * ld + r];
}

void test_gram_hsic_terms(int64_t n, int threads) {
  std::mt19937 rng(static_cast<unsigned>(n * 31 + threads));
  const int64_t ld = n + 3, la = 3, lb = 2;
  std::vector<std::vector<double>> a, b;
  for (int i = 0; i < la; ++i) a.push_back(random_gram(n, ld, rng));
  for (int j = 0; j < lb; ++j) b.push_back(random_gram(n, ld, rng));
  std::vector<const double*> pa, pb;
  for (auto& m : a) pa.push_back(m.data());
  for (auto& m : b) pb.push_back(m.data());
  std::vector<int64_t> lda(la, ld), ldb(lb, ld);
  std::vector<double> cross(la * lb), self_a(la), self_b(lb), rows_a(la * n), diag_a(la * n), rows_b(lb * n),
      diag_b(lb * n);
  pyprune::gram_hsic_terms<double>(pa.data(), lda.data(), la, pb.data(), ldb.data(), lb, n, threads, cross.data(),
                                   self_a.data(), self_b.data(), rows_a.data(), diag_a.data(), rows_b.data(),
                                   diag_b.data());
  for (int i = 0; i < la; ++i) {
    for (int j = 0; j < lb; ++j) {
      double want = 0;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < n; ++c) want += sym(a[i], ld, r, c) * sym(b[j], ld, r, c);
      expect_close(cross[i * lb + j], want, 1e-12, "cross");
    }
    for (int64_t r = 0; r < n; ++r) {
      double want = 0;
      for (int64_t c = 0; c < n; ++c) want += sym(a[i], ld, r, c);
      expect_close(rows_a[i * n + r], want, 1e-12, "row_sums_a", 10.0 * n);
      expect_close(diag_a[i * n + r], a[i][r * ld + r], 0, "diag_a");
    }
  }
  // Self-comparison mode must agree with the cross mode on A against A.
  std::vector<double> square(la * la);
  pyprune::gram_hsic_terms<double>(pa.data(), lda.data(), la, nullptr, nullptr, 0, n, threads, square.data(),
                                   self_a.data(), nullptr, rows_a.data(), diag_a.data(), nullptr, nullptr);
  for (int i = 0; i < la; ++i)
    for (int j = 0; j < la; ++j) {
      double want = 0;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < n; ++c) want += sym(a[i], ld, r, c) * sym(a[j], ld, r, c);
      expect_close(square[i * la + j], want, 1e-12, "square");
    }
}

void test_rbf(int64_t n, int threads, bool integer = false) {
  std::mt19937 rng(static_cast<unsigned>(n));
  const int64_t ld = n;
  std::vector<double> g = random_gram(n, ld, rng, integer), original = g;
  const double median = pyprune::rbf_from_linear_gram(g.data(), n, ld, 0.5, threads);
  std::vector<double> dist;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c)
      dist.push_back(std::max(0.0, sym(original, ld, r, r) + sym(original, ld, c, c) - 2 * sym(original, ld, r, c)));
  for (int64_t r = 0; r < n; ++r) dist[r * n + r] = 0;
  std::vector<double> sorted = dist;
  std::sort(sorted.begin(), sorted.end());
  const size_t m = sorted.size();
  const double want_median = m % 2 ? sorted[m / 2] : 0.5 * (sorted[m / 2 - 1] + sorted[m / 2]);
  expect_close(median, want_median, 1e-12, "median");
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c <= r; ++c)
      expect_close(g[r * ld + c], std::exp(-dist[r * n + c] / (2 * 0.25 * want_median)), 1e-12, "rbf");

  std::vector<double> constant(n * n, 4.0);
  pyprune::rbf_from_linear_gram(constant.data(), n, n, 0.5, threads);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c <= r; ++c) expect_close(constant[r * n + c], 1.0, 0, "constant rbf");
}

void test_degenerate_median_throws() {
  // Four identical points and one other: most distances are 0, some are not.
  std::vector<double> g(25, 0.0);
  g[4 * 5 + 4] = 1.0;
  try {
    pyprune::rbf_from_linear_gram(g.data(), 5, 5, 0.5, 1);
    std::printf("FAIL degenerate median: no exception\n");
    ++failures;
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

int main() {
  for (int64_t n : {1, 2, 5, 17, 40, 129})
    for (int threads : {1, 2, 3}) test_gram_hsic_terms(n, threads);
  // Small n select over a full copy; n >= ~730 takes the sampled-bracket path of the median.
  for (int64_t n : {2, 3, 9, 50, 800, 801})
    for (int threads : {1, 2}) test_rbf(n, threads);
  for (int64_t n : {51, 900}) test_rbf(n, 2, /*integer=*/true);
  test_degenerate_median_throws();
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
