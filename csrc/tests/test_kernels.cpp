// Standalone tests of the CPU kernels: no Python, no framework. Build with
//   cmake -S . -B build/cpp -DPYPRUNE_BUILD_TESTS=ON && cmake --build build/cpp && ctest --test-dir build/cpp
// Each kernel is compared with a direct O(n^2) evaluation of its definition on pseudo-random matrices.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cka_damage.h"
#include "cpu/column_stats.h"
#include "cpu/gram_hsic.h"
#include "cpu/nm_select.h"
#include "cpu/permutation_hsic.h"
#include "cpu/rbf_gram.h"
#include "cpu/sensitivity.h"

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


// ---- greedy_removal_order -------------------------------------------------------------------------------

// Interaction matrix M = G o G (G = X^T X, neurons as columns of X: PSD and symmetric). With `integer` X has
// small integer entries, so every sum is exact. `dead` neurons get zero rows and columns; neuron dup[k].second
// becomes a copy of neuron dup[k].first.
std::vector<double> interaction_matrix(int64_t p, std::mt19937& rng, bool integer, const std::vector<int64_t>& dead,
                                       const std::vector<std::pair<int64_t, int64_t>>& dup) {
  std::normal_distribution<double> normal;
  const int64_t n = 6;
  std::vector<double> x(n * p);
  for (auto& v : x) v = integer ? std::round(1.5 * normal(rng)) : normal(rng);
  for (int64_t j : dead)
    for (int64_t a = 0; a < n; ++a) x[a * p + j] = 0.0;
  for (auto [from, to] : dup)
    for (int64_t a = 0; a < n; ++a) x[a * p + to] = x[a * p + from];
  std::vector<double> m(p * p);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < p; ++j) {
      double g = 0;
      for (int64_t a = 0; a < n; ++a) g += x[a * p + i] * x[a * p + j];
      m[i * p + j] = g * g;
    }
  return m;
}

// The definition, evaluated from scratch at every step: CKA(K) = N(K) / (F sqrt(D2(K))).
void brute_greedy(const std::vector<double>& m, int64_t p, const std::vector<uint8_t>& active,
                  std::vector<int64_t>& order, std::vector<double>& cka) {
  std::vector<uint8_t> kept = active;
  double f2 = 0;
  for (int64_t a = 0; a < p; ++a)
    for (int64_t b = 0; b < p; ++b)
      if (active[a] && active[b]) f2 += m[a * p + b];
  const double f = std::pow(f2, 0.5);
  order.clear();
  cka.clear();
  for (int64_t left = std::count(active.begin(), active.end(), 1); left > 0; --left) {
    int64_t best = -1;
    double best_score = 0;
    for (int64_t j = 0; j < p; ++j) {
      if (!kept[j]) continue;
      double num = 0, d2 = 0;
      for (int64_t a = 0; a < p; ++a)
        for (int64_t b = 0; b < p; ++b) {
          const bool b_kept = kept[b] && b != j;
          if (active[a] && b_kept) num += m[a * p + b];
          if (kept[a] && a != j && b_kept) d2 += m[a * p + b];
        }
      const double den = f * std::sqrt(std::max(d2, 0.0));
      const double score = den > 0 ? num / den : 0.0;
      if (best < 0 || score > best_score) {
        best = j;
        best_score = score;
      }
    }
    order.push_back(best);
    cka.push_back(best_score);
    kept[best] = 0;
  }
}

void run_greedy(const std::vector<double>& m, int64_t p, const std::vector<uint8_t>& active, bool pass_active,
                int threads, std::vector<int64_t>& order, std::vector<double>& cka) {
  const int64_t steps = pyprune::count_active(pass_active ? active.data() : nullptr, p);
  order.assign(steps, -7);
  cka.assign(steps, -7.0);
  pyprune::greedy_removal_order(m.data(), p, pass_active ? active.data() : nullptr, threads, order.data(),
                                cka.data());
}

// exact: integer inputs, where every sum is exact and the kernel's scores equal the definition's bit for bit.
void test_greedy_case(int64_t p, unsigned seed, bool integer, double inactive_fraction,
                      const std::vector<int64_t>& dead, const std::vector<std::pair<int64_t, int64_t>>& dup,
                      const char* what) {
  std::mt19937 rng(seed);
  const std::vector<double> m = interaction_matrix(p, rng, integer, dead, dup);
  std::vector<uint8_t> active(p, 1);
  std::uniform_real_distribution<double> uniform;
  for (auto& a : active) a = uniform(rng) >= inactive_fraction;
  std::vector<int64_t> want_order, order;
  std::vector<double> want_cka, cka;
  brute_greedy(m, p, active, want_order, want_cka);
  for (int threads : {1, 3}) {
    run_greedy(m, p, active, inactive_fraction > 0, threads, order, cka);
    if (order != want_order) {
      std::printf("FAIL greedy order (%s, p=%lld, threads=%d)\n", what, static_cast<long long>(p), threads);
      ++failures;
      continue;
    }
    for (size_t k = 0; k < cka.size(); ++k) {
      if (integer) {
        if (cka[k] != want_cka[k]) {
          std::printf("FAIL greedy cka exact (%s) step %zu: %.17g vs %.17g\n", what, k, cka[k], want_cka[k]);
          ++failures;
        }
      } else if (k + 1 < cka.size()) {
        expect_close(cka[k], want_cka[k], 1e-10, "greedy cka", 1.0);
      } else if (std::fabs(cka[k]) > 1e-6) {
        // After the last removal the incremental numerator and D2 are rounding residues of sums of size F^2
        // (0 in exact arithmetic), so the reference's formula yields noise of order sqrt(eps) there.
        std::printf("FAIL greedy last cka (%s): %.17g\n", what, cka[k]);
        ++failures;
      }
    }
  }
}

// Larger p takes the multi-threaded path; its result must equal the single-threaded one bit for bit.
void test_greedy_threads(int64_t p, bool integer) {
  std::mt19937 rng(static_cast<unsigned>(p));
  std::vector<int64_t> dead, pass;
  for (int64_t j = 5; j < p; j += 97) dead.push_back(j);
  std::vector<std::pair<int64_t, int64_t>> dup = {{1, p - 1}, {p / 2, p / 2 + 1}, {3, 1030}};
  const std::vector<double> m = interaction_matrix(p, rng, integer, dead, dup);
  std::vector<uint8_t> active(p, 1);
  for (int64_t j = 0; j < p; j += 13) active[j] = 0;
  std::vector<int64_t> order1, order;
  std::vector<double> cka1, cka;
  run_greedy(m, p, active, true, 1, order1, cka1);
  std::vector<uint8_t> seen(p, 0);
  for (int64_t j : order1) {
    if (j < 0 || j >= p || !active[j] || seen[j]) {
      std::printf("FAIL greedy order is not a permutation of the active neurons\n");
      ++failures;
      break;
    }
    seen[j] = 1;
  }
  if (cka1.back() != 0.0) {
    std::printf("FAIL greedy: CKA after the last removal is %.17g, not 0\n", cka1.back());
    ++failures;
  }
  for (int threads : {2, 3, 4}) {
    run_greedy(m, p, active, true, threads, order, cka);
    if (order != order1 || cka != cka1) {
      std::printf("FAIL greedy threads=%d differs from threads=1 (p=%lld)\n", threads, static_cast<long long>(p));
      ++failures;
    }
  }
}

void test_greedy() {
  for (int64_t p : {1, 2, 3, 7, 16, 33}) {
    test_greedy_case(p, 10 + p, false, 0.0, {}, {}, "random");
    test_greedy_case(p, 20 + p, true, 0.0, {}, {}, "integer");
    test_greedy_case(p, 30 + p, false, 0.3, {}, {}, "inactive");
  }
  test_greedy_case(12, 1, true, 0.0, {2, 5, 6, 11}, {}, "dead neurons tie");
  test_greedy_case(12, 2, true, 0.0, {}, {{1, 4}, {4, 9}, {0, 10}}, "duplicated neurons tie");
  test_greedy_case(15, 3, true, 0.25, {0, 7, 8}, {{1, 14}, {2, 3}}, "dead + duplicated + inactive");
  test_greedy_case(9, 4, false, 0.0, {0, 1, 2, 3, 4, 5, 6, 7, 8}, {}, "all dead");
  test_greedy_case(6, 5, false, 1.0, {}, {}, "none active");
  // All dead: every score is 0 (D2 stays 0), so the order is the index order.
  {
    std::vector<double> zeros(25, 0.0);
    std::vector<uint8_t> active(5, 1);
    std::vector<int64_t> order;
    std::vector<double> cka;
    run_greedy(zeros, 5, active, false, 1, order, cka);
    if (order != std::vector<int64_t>{0, 1, 2, 3, 4} || cka != std::vector<double>(5, 0.0)) {
      std::printf("FAIL greedy on M = 0\n");
      ++failures;
    }
  }
  test_greedy_threads(2100, true);
  test_greedy_threads(4099, false);
}

// ---- rbf_candidate_scan ---------------------------------------------------------------------------------

void test_rbf_scan(int64_t n, int64_t p, int64_t t, int64_t m, int threads) {
  std::mt19937 rng(static_cast<unsigned>(1000 * n + 100 * p + 10 * t + m));
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int64_t> pick(0, p - 1);
  std::vector<double> v(p * n * t);
  for (auto& x : v) x = normal(rng);
  if (n > 3)  // two identical samples: d = 0 off the diagonal
    for (int64_t j = 0; j < p; ++j)
      for (int64_t k = 0; k < t; ++k) v[(j * n + 3) * t + k] = v[(j * n + 1) * t + k];
  auto own = [&](int64_t j, int64_t a, int64_t b) {
    double s = 0;
    for (int64_t k = 0; k < t; ++k) {
      const double diff = v[(j * n + a) * t + k] - v[(j * n + b) * t + k];
      s += diff * diff;
    }
    return s;
  };
  // D = distances of all p neurons (symmetric, zero diagonal), target = a random symmetric matrix. The kernel
  // gets copies whose upper triangles are NaN: it must read only the lower triangles.
  std::vector<double> dist(n * n), target(n * n), dist_nan(n * n), target_nan(n * n);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b <= a; ++b) {
      double d = 0;
      for (int64_t j = 0; j < p; ++j) d += own(j, a, b);
      dist[a * n + b] = dist[b * n + a] = d;
      target[a * n + b] = target[b * n + a] = normal(rng);
    }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      dist_nan[a * n + b] = b <= a ? dist[a * n + b] : nan;
      target_nan[a * n + b] = b <= a ? target[a * n + b] : nan;
    }
  std::vector<int64_t> candidates(m);
  std::vector<double> inv(m);
  for (int64_t c = 0; c < m; ++c) {
    candidates[c] = c < p ? c * 7 % p : pick(rng);  // repeats once m > p
    inv[c] = 0.5 / (static_cast<double>(p * t) + 0.1 * c);
  }
  std::vector<double> cross(m, nan), self_sq(m, nan), row_sq(m, nan), total(m, nan);
  pyprune::rbf_candidate_scan(dist_nan.data(), v.data(), p, n, t, candidates.data(), m, inv.data(),
                              target_nan.data(), threads, cross.data(), self_sq.data(), row_sq.data(), total.data());
  for (int64_t c = 0; c < m; ++c) {
    const int64_t j = candidates[c];
    double want_cross = 0, bound_cross = 0, want_self = 0, want_row_sq = 0, want_total = 0;
    for (int64_t a = 0; a < n; ++a) {
      double row = 0;
      for (int64_t b = 0; b < n; ++b) {
        const double k = std::exp(-std::max(dist[a * n + b] - own(j, a, b), 0.0) * inv[c]);
        row += k;
        want_cross += target[a * n + b] * k;
        bound_cross += std::fabs(target[a * n + b]) * k;
        want_self += k * k;
      }
      want_row_sq += row * row;
      want_total += row;
    }
    expect_close(cross[c], want_cross, 1e-12, "rbf scan cross", bound_cross);
    expect_close(self_sq[c], want_self, 1e-12, "rbf scan self_sq");
    expect_close(row_sq[c], want_row_sq, 1e-12, "rbf scan row_sq");
    expect_close(total[c], want_total, 1e-12, "rbf scan total");
  }
}

void test_rbf_scan_rejects_bad_candidates() {
  std::vector<double> dist(4, 0.0), target(4, 0.0), v(2 * 2 * 1, 0.0), out(1);
  for (int64_t bad : {-1, 2}) {
    const int64_t candidates[2] = {0, bad};
    const double inv[2] = {1.0, 1.0};
    double cross[2], self_sq[2], row_sq[2], total[2];
    try {
      pyprune::rbf_candidate_scan(dist.data(), v.data(), 2, 2, 1, candidates, 2, inv, target.data(), 1, cross,
                                  self_sq, row_sq, total);
      std::printf("FAIL rbf scan accepted candidate %lld\n", static_cast<long long>(bad));
      ++failures;
    } catch (const std::invalid_argument& e) {
      const std::string want = "candidates[1]: " + std::to_string(bad) + " is out of range [0, 2)";
      if (e.what() != want) {
        std::printf("FAIL rbf scan message: %s\n", e.what());
        ++failures;
      }
    }
  }
}

// ---- sensitivity_update ---------------------------------------------------------------------------------

struct SensitivityCase {
  int64_t filters, channels, height, width;  // Linear: height = width = 0, J = channels
  pyprune::Window window;
};

// z = (z+, z-) of every example and position, in double, then rounded to T (what the kernel is given).
template <typename T>
std::vector<T> denominators(const SensitivityCase& c, const std::vector<T>& w, int64_t batch, int64_t out_h, int64_t out_w,
                            const std::function<double(int64_t, int64_t, int64_t)>& patch) {
  const int64_t J = static_cast<int64_t>(w.size()) / c.filters, P = out_h * out_w;
  std::vector<T> z(batch * 2 * c.filters * P);
  for (int64_t x = 0; x < batch; ++x)
    for (int64_t f = 0; f < c.filters; ++f)
      for (int64_t p = 0; p < P; ++p) {
        double pos = 0, neg = 0;
        for (int64_t j = 0; j < J; ++j) {
          const double prod = static_cast<double>(w[f * J + j]) * patch(x, j, p);
          (w[f * J + j] > 0 ? pos : neg) += prod;
        }
        z[((2 * x) * c.filters + f) * P + p] = static_cast<T>(pos);
        z[((2 * x + 1) * c.filters + f) * P + p] = static_cast<T>(neg);
      }
  return z;
}

template <typename T>
void test_sensitivity(const SensitivityCase& c, int64_t batch, int threads, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const bool linear = c.window.linear();
  const pyprune::Window& win = c.window;
  const int64_t taps = linear ? 1 : win.kernel_h * win.kernel_w, J = c.channels * taps;
  const int64_t out_h = linear ? 1 : pyprune::window_positions(c.height, win.kernel_h, win.stride_h, win.pad_h, win.dilation_h);
  const int64_t out_w = linear ? 1 : pyprune::window_positions(c.width, win.kernel_w, win.stride_w, win.pad_w, win.dilation_w);
  const int64_t P = out_h * out_w, plane = linear ? 1 : c.height * c.width;
  std::vector<T> w(c.filters * J);
  for (auto& v : w) v = uniform(rng) < 0.15 ? T(0) : static_cast<T>(normal(rng));  // some pruned weights
  for (int64_t j = 0; j < J; ++j) w[j] = 0;  // a dead filter: every contribution 0
  std::vector<T> s_mean(c.filters * J), s_max(c.filters * J);
  for (auto& v : s_mean) v = static_cast<T>(uniform(rng) < 0.2 ? 0.3 * uniform(rng) : 0.0);
  for (auto& v : s_max) v = static_cast<T>(uniform(rng) < 0.2 ? 0.3 * uniform(rng) : 0.0);
  std::vector<double> want_mean(s_mean.begin(), s_mean.end()), want_max(s_max.begin(), s_max.end());

  for (int call = 0; call < 2; ++call) {  // the running max over two batches
    std::vector<T> a(batch * c.channels * plane);
    for (auto& v : a) v = uniform(rng) < 0.3 ? T(0) : static_cast<T>(uniform(rng));  // ReLU-like
    if (batch > 1)  // an all-zero example: every denominator 0, every contribution 0
      std::fill(a.begin() + c.channels * plane, a.begin() + 2 * c.channels * plane, T(0));
    auto patch = [&](int64_t x, int64_t j, int64_t p) -> double {
      if (linear) return a[x * J + j];
      const int64_t ch = j / taps, u = j % taps / win.kernel_w, v = j % win.kernel_w;
      const int64_t ih = p / out_w * win.stride_h - win.pad_h + u * win.dilation_h;
      const int64_t iw = p % out_w * win.stride_w - win.pad_w + v * win.dilation_w;
      if (ih < 0 || ih >= c.height || iw < 0 || iw >= c.width) return 0.0;
      return a[((x * c.channels + ch) * c.height + ih) * c.width + iw];
    };
    const std::vector<T> z = denominators<T>(c, w, batch, out_h, out_w, patch);
    // Brute force: g = W A / z^{sign W} with the epsilon rule on the z the kernel sees.
    for (int64_t f = 0; f < c.filters; ++f)
      for (int64_t j = 0; j < J; ++j) {
        const double wf = w[f * J + j];
        double best_mean = 0, best_max = 0;
        for (int64_t x = 0; x < batch; ++x) {
          double sum = 0, max = 0;
          for (int64_t p = 0; p < P; ++p) {
            const double zz = z[((2 * x + (wf > 0 ? 0 : 1)) * c.filters + f) * P + p];
            const double g = wf == 0 || std::fabs(zz) <= pyprune::kSensitivityEpsilon ? 0.0 : wf * patch(x, j, p) / zz;
            sum += g;
            max = std::max(max, g);
          }
          best_mean = std::max(best_mean, sum / P);
          best_max = std::max(best_max, max);
        }
        want_mean[f * J + j] = std::max(want_mean[f * J + j], best_mean);
        want_max[f * J + j] = std::max(want_max[f * J + j], best_max);
      }
    pyprune::sensitivity_update<T>(w.data(), c.filters, J, a.data(), batch, linear ? 0 : c.height,
                                   linear ? 0 : c.width, win, z.data(), s_mean.data(), s_max.data(), threads);
  }
  const double rel = sizeof(T) == 8 ? 1e-12 : 2e-5;
  const std::string what = std::string(linear ? "linear" : "conv") + (sizeof(T) == 8 ? " f64" : " f32");
  for (size_t i = 0; i < s_mean.size(); ++i) {
    expect_close(s_mean[i], want_mean[i], rel, (what + " s_mean").c_str(), 1e-3);
    expect_close(s_max[i], want_max[i], rel, (what + " s_max").c_str(), 1e-3);
  }
  for (int64_t j = 0; j < J; ++j)  // the dead filter keeps its initial values (raised to at least 0)
    if (s_max[j] != static_cast<T>(want_max[j])) {
      std::printf("FAIL %s: dead filter changed\n", what.c_str());
      ++failures;
    }
}

// A weight that carries its whole denominator contributes exactly 1 (not 1 - ulp from multiplying by 1/z).
template <typename T>
void test_sensitivity_exact_one() {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> uniform(0.01, 3.0);
  const int64_t F = 7, J = 5, batch = 40;
  std::vector<T> w(F * J, T(0)), a(batch * J), z(batch * 2 * F), s_mean(F * J, T(0)), s_max(F * J, T(0));
  for (int64_t f = 0; f < F; ++f) w[f * J + f % J] = static_cast<T>(f % 2 ? -uniform(rng) : uniform(rng));
  for (auto& v : a) v = static_cast<T>(uniform(rng));
  for (int64_t x = 0; x < batch; ++x)
    for (int64_t f = 0; f < F; ++f) {
      const T c = w[f * J + f % J] * a[x * J + f % J];  // the only term of z, rounded as a GEMM rounds it
      z[(2 * x) * F + f] = c > 0 ? c : T(0);
      z[(2 * x + 1) * F + f] = c < 0 ? c : T(0);
    }
  pyprune::sensitivity_update<T>(w.data(), F, J, a.data(), batch, 0, 0, pyprune::Window{}, z.data(), s_mean.data(),
                                 s_max.data(), 2);
  for (int64_t f = 0; f < F; ++f)
    if (s_max[f * J + f % J] != T(1) || s_mean[f * J + f % J] != T(1)) {
      std::printf("FAIL sensitivity: a lone weight's contribution is %.17g, not 1\n",
                  static_cast<double>(s_max[f * J + f % J]));
      ++failures;
    }
}

void test_sensitivity_all() {
  test_sensitivity_exact_one<float>();
  test_sensitivity_exact_one<double>();
  pyprune::Window linear;
  pyprune::Window plain{3, 3, 1, 1, 1, 1, 1, 1};
  pyprune::Window odd{3, 2, 2, 1, 1, 0, 1, 2};  // non-square, stride (2, 1), padding (1, 0), dilation (1, 2)
  pyprune::Window wide{1, 5, 1, 3, 0, 2, 1, 1};
  const std::vector<std::pair<SensitivityCase, int64_t>> cases = {
      {{5, 7, 0, 0, linear}, 3},
      {{40, 300, 0, 0, linear}, 300},  // several column tiles; more examples than one chunk
      {{3, 2, 5, 6, odd}, 3},
      {{20, 30, 4, 4, plain}, 2},      // two filter tiles, columns 270 > one column tile
      {{4, 3, 19, 21, plain}, 2},      // P = 399 > one chunk of positions
      {{6, 2, 7, 9, wide}, 4},
  };
  for (const auto& [c, batch] : cases)
    for (int threads : {1, 2, 3}) {
      test_sensitivity<double>(c, batch, threads, static_cast<unsigned>(batch * 7 + threads));
      test_sensitivity<float>(c, batch, threads, static_cast<unsigned>(batch * 7 + threads));
    }
  // Inconsistent windows are rejected.
  pyprune::Window bad{3, 3, 1, 1, 0, 0, 1, 1};
  std::vector<double> w(4 * 9, 1.0), a(2 * 9, 1.0), z(2 * 2 * 4, 1.0), s(4 * 9, 0.0), t(4 * 9, 0.0);
  for (const auto& [window, columns, size] :
       {std::tuple{bad, int64_t{8}, int64_t{3}}, std::tuple{bad, int64_t{9}, int64_t{2}},
        std::tuple{pyprune::Window{3, 3, 0, 1, 0, 0, 1, 1}, int64_t{9}, int64_t{3}}}) {
    try {
      pyprune::sensitivity_update<double>(w.data(), 4, columns, a.data(), 1, size, size, window, z.data(), s.data(),
                                          t.data(), 1);
      std::printf("FAIL sensitivity accepted a bad window\n");
      ++failures;
    } catch (const std::invalid_argument&) {
    }
  }
}

// nm_select against its definition by counting: weight (i, j) is removed iff fewer than `drop` entries of its
// comparison group rank below it in the order (score, column). Integer weights make many scores tie.
template <typename T>
void test_nm_select_case(int64_t rows, int64_t cols, int64_t k, int64_t n, int64_t m, bool with_norms, int threads,
                         unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-3, 3);
  const int64_t ld = cols + 3;
  std::vector<T> w(rows * ld, static_cast<T>(1e30));
  std::vector<double> x(cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) w[i * ld + j] = static_cast<T>(small(rng)) * static_cast<T>(0.5);
  for (auto& v : x) v = static_cast<double>(small(rng) + 3);
  std::vector<uint8_t> got(rows * cols, 7);
  pyprune::nm_select<T>(w.data(), rows, cols, ld, with_norms ? x.data() : nullptr, k, n, m, got.data(), threads);
  const int64_t group = m == 0 ? cols : m, drop = m == 0 ? k : m - n;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      auto score = [&](int64_t c) {
        return std::fabs(static_cast<double>(w[i * ld + c])) * (with_norms ? x[c] : 1.0);
      };
      const int64_t start = j - j % group;
      int64_t below = 0;
      for (int64_t c = start; c < start + group; ++c) below += score(c) < score(j) || (score(c) == score(j) && c < j);
      if (got[i * cols + j] != (below < drop ? 1 : 0)) {
        std::printf("FAIL nm_select rows=%lld cols=%lld k=%lld n:m=%lld:%lld at (%lld, %lld)\n", (long long)rows,
                    (long long)cols, (long long)k, (long long)n, (long long)m, (long long)i, (long long)j);
        ++failures;
        return;
      }
    }
}

void test_nm_select_all() {
  unsigned seed = 1;
  for (int threads : {1, 3})
    for (bool norms : {false, true}) {
      for (auto [rows, cols, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 0}, {1, 1, 1}, {5, 7, 3}, {17, 64, 32},
                                   {9, 33, 33}, {20, 100, 0}})
        test_nm_select_case<float>(rows, cols, k, 0, 0, norms, threads, seed++),
            test_nm_select_case<double>(rows, cols, k, 0, 0, norms, threads, seed++);
      for (auto [n, m] : {std::pair<int64_t, int64_t>{2, 4}, {1, 4}, {3, 4}, {4, 8}})
        test_nm_select_case<float>(11, 8 * m, 0, n, m, norms, threads, seed++),
            test_nm_select_case<double>(3, m, 0, n, m, norms, threads, seed++);
    }
  std::vector<double> w(8, 1.0);
  std::vector<uint8_t> out(8);
  try {
    pyprune::nm_select<double>(w.data(), 2, 4, 4, nullptr, 0, 2, 3, out.data(), 1);
    std::printf("FAIL nm_select accepted cols %% m != 0\n");
    ++failures;
  } catch (const std::invalid_argument&) {
  }
}

// <A, P B P^T> for random symmetric A (only its lower triangle valid) and B (full), against the double loop.
template <typename T>
void test_permutation_hsic_case(int64_t n, int64_t num_perms, int threads, unsigned seed) {
  std::mt19937 rng(seed);
  const int64_t lda = n + 2, ldb = n + 1;
  std::vector<double> ga = random_gram(n, lda, rng), gb = random_gram(n, ldb, rng);
  std::vector<T> a(ga.size()), b(gb.size());
  for (size_t k = 0; k < ga.size(); ++k) a[k] = static_cast<T>(ga[k]);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) b[r * ldb + c] = static_cast<T>(sym(gb, ldb, r, c));
  std::vector<int64_t> perms(num_perms * n);
  for (int64_t s = 0; s < num_perms; ++s) {
    for (int64_t i = 0; i < n; ++i) perms[s * n + i] = i;
    std::shuffle(perms.begin() + s * n, perms.begin() + (s + 1) * n, rng);
  }
  std::vector<double> out(num_perms, -1.0);
  pyprune::permutation_hsic<T>(a.data(), lda, b.data(), ldb, n, perms.data(), num_perms, threads, out.data());
  for (int64_t s = 0; s < num_perms; ++s) {
    double want = 0.0, scale = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const double term = static_cast<double>(a[std::max(i, j) * lda + std::min(i, j)]) *
                            static_cast<double>(b[perms[s * n + i] * ldb + perms[s * n + j]]);
        want += term;
        scale += std::fabs(term);
      }
    expect_close(out[s], want, 1e-12, "permutation_hsic", scale);
  }
}

void test_permutation_hsic_all() {
  unsigned seed = 7;
  for (int threads : {1, 2, 3})
    for (int64_t n : {1, 2, 5, 33})
      for (int64_t perms : {1, 3, 8, 19}) {
        test_permutation_hsic_case<double>(n, perms, threads, seed++);
        test_permutation_hsic_case<float>(n, perms, threads, seed++);
      }
}

}  // namespace

// ---- column_stats ---------------------------------------------------------------------------------------------

// Column sums against double additions in the documented order (bit for bit), extremes exact, rows padded to a longer
// stride.
template <typename T>
void test_column_stats(int64_t rows, int64_t cols, int threads) {
  const int64_t ld = cols + 3;
  std::mt19937 gen(static_cast<unsigned>(rows * 1000 + cols));
  std::normal_distribution<double> normal;
  std::vector<T> x(static_cast<size_t>(rows * ld), T(1e30));  // the padding must not be read
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) x[r * ld + c] = static_cast<T>(normal(gen));
  std::vector<double> sums(static_cast<size_t>(cols));
  T low, high;
  pyprune::column_stats<T>(x.data(), rows, cols, ld, sums.data(), &low, &high, threads);
  T want_low = x[0], want_high = x[0];
  for (int64_t c = 0; c < cols; ++c) {
    double want = 0;
    auto v = [&](int64_t r) { return static_cast<double>(x[r * ld + c]); };
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) want += (v(r) + v(r + 1)) + (v(r + 2) + v(r + 3));
    for (; r < rows; ++r) want += v(r);
    for (r = 0; r < rows; ++r) {
      want_low = std::min(want_low, x[r * ld + c]);
      want_high = std::max(want_high, x[r * ld + c]);
    }
    if (sums[c] != want) {
      std::printf("FAIL column_stats: column %lld sum %.17g, want %.17g\n", static_cast<long long>(c), sums[c], want);
      ++failures;
      return;
    }
  }
  if (low != want_low || high != want_high) {
    std::printf("FAIL column_stats: extremes %g %g, want %g %g\n", double(low), double(high), double(want_low),
                double(want_high));
    ++failures;
  }
}

int main() {
  for (int64_t n : {1, 2, 5, 17, 40, 129})
    for (int threads : {1, 2, 3}) test_gram_hsic_terms(n, threads);
  // Small n select over a full copy; n >= ~730 takes the sampled-bracket path of the median.
  for (int64_t n : {2, 3, 9, 50, 800, 801})
    for (int threads : {1, 2}) test_rbf(n, threads);
  for (int64_t n : {51, 900}) test_rbf(n, 2, /*integer=*/true);
  test_degenerate_median_throws();
  test_greedy();
  // n < 64 keeps one block per candidate; few candidates per thread with n >= 64 splits candidates into rows.
  for (int threads : {1, 2, 3})
    for (int64_t n : {1, 2, 9, 70})
      for (int64_t t : {1, 3})
        for (int64_t m : {1, 2, 7}) test_rbf_scan(n, 5, t, m, threads);
  test_rbf_scan(130, 3, 4, 1, 4);
  test_rbf_scan(64, 2, 1, 0, 2);
  test_rbf_scan_rejects_bad_candidates();
  test_sensitivity_all();
  test_nm_select_all();
  test_permutation_hsic_all();
  for (int threads : {1, 3})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {7, 513}, {40, 1100}, {300, 3}}) {
      test_column_stats<float>(rows, cols, threads);
      test_column_stats<double>(rows, cols, threads);
    }
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
