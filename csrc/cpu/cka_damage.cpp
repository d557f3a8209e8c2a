#include "cpu/cka_damage.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/parallel.h"

namespace pyprune {
namespace {

// AVX-512, AVX2 and baseline versions of the hot loops, picked at load time (as in gram_hsic.cpp).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYPRUNE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYPRUNE_CLONES
#endif

// ------------------------------------------------------------------------------------------------------------
// Greedy removal order

// Below this p one step's O(p) scan takes a few microseconds, about what handing it to other threads costs.
constexpr int64_t kGreedyParallelMin = 2048;
constexpr int64_t kGreedyMinSlice = 1024;  // neurons per worker, at least
constexpr int64_t kColumnBlock = 256;      // columns per block of the column sums
constexpr int kSpinsBeforeYield = 4096;

struct Best {
  double score = 0.0;
  double remaining = 0.0;  // D2 once `index` is removed: the next step's denominator_sq
  int64_t index = -1;      // -1: none yet
};

// Whether score s of neuron i beats `best` under torch.argmax's rules: the first maximum wins and NaN counts as
// the maximum. Scanning in index order with this rule leaves the lowest index among equal scores.
inline bool beats(double s, int64_t i, const Best& best) {
  if (best.index < 0) return true;
  const bool s_nan = std::isnan(s), b_nan = std::isnan(best.score);
  if (s_nan || b_nan) return s_nan && (!b_nan || i < best.index);
  return s > best.score || (s == best.score && i < best.index);
}

struct GreedyState {
  const double* column;  // sum over active a of M[a, j] (0 for inactive j)
  const double* diag;    // M[j, j] (0 for inactive j)
  double* kept_column;   // sum over kept a of M[a, j] (meaningful for kept j only)
  double* score;
  double* remaining;
  uint8_t* kept;
};

// One step over neurons [lo, hi): subtracts the row of the neuron removed by the previous step (if any) from
// kept_column, then scores every neuron with the reference's operations, in the reference's order:
//   remaining = denominator_sq - 2 kept_column + diag;  den = norm * sqrt(clamp_min(remaining, 0))
//   score = den > 0 ? (numerator - column) / den : 0
// Branch-free (kept or not, every neuron is scored), so that it vectorises.
PYPRUNE_CLONES
void score_slice(const GreedyState& s, int64_t lo, int64_t hi, const double* removed_row, double numerator,
                 double denominator_sq, double norm) {
  double* __restrict__ kept_column = s.kept_column;
  double* __restrict__ score = s.score;
  double* __restrict__ remaining = s.remaining;
  const double* __restrict__ column = s.column;
  const double* __restrict__ diag = s.diag;
  if (removed_row != nullptr) {
    for (int64_t i = lo; i < hi; ++i) kept_column[i] -= removed_row[i];
  }
  for (int64_t i = lo; i < hi; ++i) {
    const double rem = (denominator_sq - 2.0 * kept_column[i]) + diag[i];
    const double clamped = rem < 0.0 ? 0.0 : rem;  // clamp_min(0): NaN stays NaN
    const double den = norm * std::sqrt(clamped);
    const bool positive = den > 0.0;
    const double quotient = (numerator - column[i]) / (positive ? den : 1.0);
    remaining[i] = rem;
    score[i] = positive ? quotient : 0.0;
  }
}

// The best kept neuron of [lo, hi) (index -1 if none is kept there).
Best best_in_slice(const GreedyState& s, int64_t lo, int64_t hi) {
  Best best;
  for (int64_t i = lo; i < hi; ++i)
    if (s.kept[i] != 0 && beats(s.score[i], i, best)) best = Best{s.score[i], s.remaining[i], i};
  return best;
}

// Reusable barrier for a fixed set of threads that spin (then yield) while they wait: the greedy loop
// synchronises once per step, far too often for a mutex and condition variable.
class SpinBarrier {
 public:
  explicit SpinBarrier(int count) : count_(count) {}

  void wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins)
      if (spins >= kSpinsBeforeYield) std::this_thread::yield();
  }

 private:
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// ------------------------------------------------------------------------------------------------------------
// RBF candidate scan

constexpr int64_t kMinRowsPerBlock = 32;  // when candidates are split into row blocks

struct PairSums {
  double cross = 0.0;
  double self_sq = 0.0;
};

// Per-worker buffers: the current candidate's values transposed to (t, n) so that the own distances of one row
// against all earlier rows vectorise over the samples, the own distances of one row, and the row sums.
struct ScanWork {
  std::vector<double> vt, own, rows;
  int64_t loaded = -1;  // candidate whose values are in vt
};

void load_candidate(ScanWork& work, const double* v, int64_t n, int64_t t, int64_t c) {
  if (work.loaded == c) return;
  work.vt.resize(static_cast<size_t>(n * t));
  for (int64_t a = 0; a < n; ++a)
    for (int64_t k = 0; k < t; ++k) work.vt[k * n + a] = v[a * t + k];
  work.own.resize(static_cast<size_t>(n));
  work.loaded = c;
}

// Rows [r0, r1) of one candidate: pairs (a, b) with b < a count twice, the diagonal (own distance 0) once.
// k_ab is added to rows[a] and rows[b], so rows holds the full symmetric row sums once every row is done.
PYPRUNE_CLONES
void scan_rows(const double* dist, const double* target, const double* vt, int64_t n, int64_t t, double inv,
               int64_t r0, int64_t r1, double* __restrict__ own, double* __restrict__ rows, PairSums& sums) {
  for (int64_t a = r0; a < r1; ++a) {
    const double* __restrict__ d_row = dist + a * n;
    const double* __restrict__ t_row = target + a * n;
    std::fill(own, own + a, 0.0);
    for (int64_t k = 0; k < t; ++k) {
      const double* __restrict__ x = vt + k * n;
      const double xa = x[a];
#pragma omp simd
      for (int64_t b = 0; b < a; ++b) {
        const double diff = xa - x[b];
        own[b] += diff * diff;
      }
    }
    double row_acc = 0.0, cross_acc = 0.0, self_acc = 0.0;
    for (int64_t b = 0; b < a; ++b) {
      const double diff = d_row[b] - own[b];
      const double d = diff < 0.0 ? 0.0 : diff;  // clamp_min(0): NaN stays NaN
      const double kv = std::exp(-d * inv);
      row_acc += kv;
      rows[b] += kv;
      cross_acc += t_row[b] * kv;
      self_acc += kv * kv;
    }
    const double d_aa = d_row[a] < 0.0 ? 0.0 : d_row[a];
    const double k_aa = std::exp(-d_aa * inv);
    rows[a] += row_acc + k_aa;
    sums.cross += 2.0 * cross_acc + t_row[a] * k_aa;
    sums.self_sq += 2.0 * self_acc + k_aa * k_aa;
  }
}

void finish_candidate(const double* rows, int64_t n, const PairSums& sums, int64_t c, double* cross,
                      double* self_sq, double* row_sq, double* total) {
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t a = 0; a < n; ++a) {
    sum += rows[a];
    sum_sq += rows[a] * rows[a];
  }
  cross[c] = sums.cross;
  self_sq[c] = sums.self_sq;
  row_sq[c] = sum_sq;
  total[c] = sum;
}

}  // namespace

int64_t count_active(const uint8_t* active, int64_t p) {
  if (active == nullptr) return p;
  int64_t count = 0;
  for (int64_t i = 0; i < p; ++i) count += active[i] != 0;
  return count;
}

void greedy_removal_order(const double* interaction, int64_t p, const uint8_t* active, int num_threads,
                          int64_t* order, double* cka_after) {
  const int64_t steps = count_active(active, p);
  if (steps == 0) return;
  std::vector<uint8_t> kept(p);
  std::vector<double> column(p, 0.0), diag(p, 0.0), kept_column, score(p), remaining(p);
  for (int64_t i = 0; i < p; ++i) {
    kept[i] = active == nullptr || active[i] != 0;
    if (kept[i]) diag[i] = interaction[i * p + i];
  }

  // Column sums over the active rows, taken row by row: every column is summed in the same order, so identical
  // columns get identical sums (and ties between duplicated neurons stay exact ties).
  const bool parallel = p >= kGreedyParallelMin && num_threads > 1;
  const int64_t num_column_blocks = (p + kColumnBlock - 1) / kColumnBlock;
  parallel_blocks(num_column_blocks, parallel ? num_threads : 1, [&](int, int64_t block) {
    const int64_t c0 = block * kColumnBlock, c1 = std::min(p, c0 + kColumnBlock);
    double* __restrict__ out = column.data();
    for (int64_t a = 0; a < p; ++a) {
      if (!kept[a]) continue;
      const double* __restrict__ row = interaction + a * p;
      for (int64_t c = c0; c < c1; ++c) out[c] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c)
      if (!kept[c]) out[c] = 0.0;
  });
  double total = 0.0;
  for (int64_t i = 0; i < p; ++i) total += column[i];
  const double norm = std::pow(total, 0.5);  // the reference's Python `total ** 0.5` (libm pow)
  kept_column = column;
  const GreedyState state{column.data(), diag.data(), kept_column.data(), score.data(), remaining.data(),
                          kept.data()};

  const int workers = parallel ? worker_count(p / kGreedyMinSlice, num_threads) : 1;
  if (workers == 1) {
    double numerator = total, denominator_sq = total;
    const double* removed_row = nullptr;
    for (int64_t step = 0; step < steps; ++step) {
      score_slice(state, 0, p, removed_row, numerator, denominator_sq, norm);
      const Best best = best_in_slice(state, 0, p);
      order[step] = best.index;
      cka_after[step] = best.score;
      numerator -= column[best.index];
      denominator_sq = best.remaining;
      kept[best.index] = 0;
      removed_row = interaction + best.index * p;
    }
    return;
  }

  // Persistent workers, one slice of neurons each. Per step every worker scores its slice and posts its best;
  // after the barrier each one merges the posts (in slice order, so ties still go to the lowest index) and
  // applies the removal to its own slice and to its copy of the scalars. The posts alternate between two
  // arrays: a worker cannot post step s + 2 before everyone has passed step s + 1's barrier, by which time
  // everyone has read step s's posts.
  SpinBarrier barrier(workers);
  std::vector<Best> posts(2 * static_cast<size_t>(workers));
  // parallel_blocks hands the `workers` blocks to `workers` threads; none can finish before all have started
  // (the barrier), so every thread runs exactly one block.
  parallel_blocks(workers, workers, [&](int, int64_t w) {
    const int64_t lo = p * w / workers, hi = p * (w + 1) / workers;
    double numerator = total, denominator_sq = total;
    const double* removed_row = nullptr;
    for (int64_t step = 0; step < steps; ++step) {
      score_slice(state, lo, hi, removed_row, numerator, denominator_sq, norm);
      Best* post = posts.data() + (step & 1) * workers;
      post[w] = best_in_slice(state, lo, hi);
      barrier.wait();
      Best best;
      for (int v = 0; v < workers; ++v)
        if (post[v].index >= 0 && beats(post[v].score, post[v].index, best)) best = post[v];
      if (w == 0) {
        order[step] = best.index;
        cka_after[step] = best.score;
      }
      numerator -= column[best.index];
      denominator_sq = best.remaining;
      if (best.index >= lo && best.index < hi) kept[best.index] = 0;
      removed_row = interaction + best.index * p;
    }
  });
}

void rbf_candidate_scan(const double* distances_kept, const double* values, int64_t p, int64_t n, int64_t t,
                        const int64_t* candidates, int64_t m, const double* inv_two_sigma_sq,
                        const double* target, int num_threads, double* cross, double* self_sq, double* row_sq,
                        double* total) {
  for (int64_t c = 0; c < m; ++c)
    if (candidates[c] < 0 || candidates[c] >= p)
      throw std::invalid_argument("candidates[" + std::to_string(c) + "]: " + std::to_string(candidates[c]) +
                                  " is out of range [0, " + std::to_string(p) + ")");
  if (m == 0) return;
  const int threads = std::max(1, num_threads);
  auto candidate_values = [&](int64_t c) { return values + candidates[c] * n * t; };

  // Enough candidates: one block per candidate, row sums in a per-worker buffer.
  if (threads == 1 || m >= 2 * static_cast<int64_t>(threads) || n < 2 * kMinRowsPerBlock) {
    const int workers = worker_count(m, threads);
    std::vector<ScanWork> work(workers);
    parallel_blocks(m, workers, [&](int w, int64_t c) {
      ScanWork& wk = work[w];
      load_candidate(wk, candidate_values(c), n, t, c);
      wk.rows.assign(static_cast<size_t>(n), 0.0);
      PairSums sums;
      scan_rows(distances_kept, target, wk.vt.data(), n, t, inv_two_sigma_sq[c], 0, n, wk.own.data(),
                wk.rows.data(), sums);
      finish_candidate(wk.rows.data(), n, sums, c, cross, self_sq, row_sq, total);
    });
    return;
  }

  // Few candidates: each is also cut into row blocks of about equal numbers of pairs (rows [0, r) hold ~r^2/2),
  // with partial sums per block, merged in block order (so the result does not depend on scheduling).
  const int64_t per = std::max<int64_t>(
      1, std::min<int64_t>(n / kMinRowsPerBlock, (4 * static_cast<int64_t>(threads) + m - 1) / m));
  std::vector<int64_t> bounds(per + 1);
  for (int64_t k = 0; k <= per; ++k)
    bounds[k] = std::min<int64_t>(n, std::llround(n * std::sqrt(static_cast<double>(k) / per)));
  const int64_t num_blocks = m * per;
  std::vector<double> part_rows(static_cast<size_t>(num_blocks * n), 0.0);
  std::vector<PairSums> part_sums(num_blocks);
  const int workers = worker_count(num_blocks, threads);
  std::vector<ScanWork> work(workers);
  parallel_blocks(num_blocks, workers, [&](int w, int64_t block) {
    const int64_t c = block / per, k = block % per;
    ScanWork& wk = work[w];
    load_candidate(wk, candidate_values(c), n, t, c);
    scan_rows(distances_kept, target, wk.vt.data(), n, t, inv_two_sigma_sq[c], bounds[k], bounds[k + 1],
              wk.own.data(), part_rows.data() + block * n, part_sums[block]);
  });
  std::vector<double> rows(n);
  for (int64_t c = 0; c < m; ++c) {
    PairSums sums;
    std::fill(rows.begin(), rows.end(), 0.0);
    for (int64_t k = 0; k < per; ++k) {
      const double* part = part_rows.data() + (c * per + k) * n;
      for (int64_t a = 0; a < n; ++a) rows[a] += part[a];
      sums.cross += part_sums[c * per + k].cross;
      sums.self_sq += part_sums[c * per + k].self_sq;
    }
    finish_candidate(rows.data(), n, sums, c, cross, self_sq, row_sq, total);
  }
}

}  // namespace pyprune
