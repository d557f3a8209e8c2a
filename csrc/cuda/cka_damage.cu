// CKA-damage kernels: the CUDA twin of csrc/cpu/cka_damage.cpp (definitions: the references in
// pyprune/ops/reference.py). CuPy compiles it at run time through NVRTC
// (pyprune/ops/cuda.py), with the launch constants of pp_common.cuh. float64 throughout; double atomicAdd needs sm_60+.
//
// Greedy removal order (host: pyprune.ops.cuda.greedy_removal_order_cuda), two launches on one stream:
//   1. pyprune::cka_column_sums: one thread per neuron i writes column[i] = sum over active a of M[a, i] (rows in
//      index order, as the C++ kernel does, so identical columns get identical sums) and diag[i] = M[i, i],
//      both 0 for an inactive i. Neighbouring threads read neighbouring columns of a row (coalesced).
//   2. pyprune::cka_greedy_order: ONE block of 1024 threads runs the whole loop. Thread tid owns the neurons
//      i = tid, tid + 1024, ...: their kept flag and kept_column live in global memory (L1/L2-resident) and
//      only that thread reads or writes them, so no barrier is needed between one step's update and the next
//      step's scan. Per step every thread scores its kept neurons with the reference's operations in the
//      reference's order, keeps its best (strict '>' in index order), and the block reduces the (score, index,
//      remaining) triples with warp shuffles and then through shared memory; ties go to the lowest index and
//      NaN counts as the maximum (torch.argmax). Two __syncthreads per step. Thread 0 sums the column sums
//      sequentially first, so the scalars match the C++ kernel's exactly (norm uses sqrt where the C++ kernel
//      and the reference use pow(total, 0.5), which may differ in the last bit).
//   Cost: O(p^2 / #threads-per-column) for the sums, then per step O(p / 1024) per thread plus two barriers;
//   fine for p up to tens of thousands.
//
// RBF candidate scan (host: pyprune.ops.cuda.rbf_candidate_scan_cuda), one launch, then torch on the row sums:
//   pyprune::cka_rbf_scan: grid (x: tiles of the lower triangle of the n x n pairs, 64 x 64, numbered row by
//   row; y: candidates, both strided), 256 threads. Thread (tx = tid % 64, ty = tid / 64) handles column
//   b = c0 + tx of rows a = r0 + ty + 4k, k = 0..15. The candidate's own squared distances of the tile's pairs
//   are accumulated over the T features in chunks of up to 16 that are staged in shared memory (the 64 row
//   samples and the 64 column samples), then
//     d = max(D[a, b] - own, 0) (own = 0 on the diagonal), k = exp(-d * inv_two_sigma_sq[c]),
//   pairs b < a weighing twice in cross and self_sq. Row sums: k goes to row a (warp shuffles, then shared
//   memory) and, for b < a, to row b (per-column partials in shared memory); each tile adds them to
//   rows[c, :] (an m x n float64 buffer) with 64 + 64 double atomicAdds, and its cross and self_sq partials
//   with one atomicAdd each. Only the lower triangles of D and target are read. The host then takes
//   total = rows.sum(1) and row_sq = rows.square().sum(1). Outputs must be zeroed by the caller; the atomics
//   make the last bits depend on scheduling.
//
// Entry points (NVRTC name expressions): pyprune::cka_column_sums, pyprune::cka_greedy_order,
// pyprune::cka_rbf_scan.

#include "pp_common.cuh"

#define PP_GREEDY_WARPS (PP_GREEDY_THREADS / 32)
#define PP_SCAN_CHUNK 16  // features staged per pass

namespace pyprune {
namespace {

// Whether (s, i) beats (best, best_i) under torch.argmax's rules: the first maximum, NaN as the maximum.
// Index -1 stands for "no candidate".
__device__ __forceinline__ bool pp_beats(double s, pp_i64 i, double best, pp_i64 best_i) {
  if (i < 0) return false;
  if (best_i < 0) return true;
  const bool s_nan = isnan(s), b_nan = isnan(best);
  if (s_nan || b_nan) return s_nan && (!b_nan || i < best_i);
  return s > best || (s == best && i < best_i);
}

__device__ __forceinline__ void pp_best_of_warp(double& score, double& remaining, pp_i64& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const double other_score = __shfl_down_sync(0xffffffffu, score, offset);
    const double other_remaining = __shfl_down_sync(0xffffffffu, remaining, offset);
    const pp_i64 other_index = __shfl_down_sync(0xffffffffu, index, offset);
    if (pp_beats(other_score, other_index, score, index)) {
      score = other_score;
      remaining = other_remaining;
      index = other_index;
    }
  }
}

}  // namespace

__global__ void __launch_bounds__(PP_THREADS)
    cka_column_sums(const double* __restrict__ m, pp_i64 p, const unsigned char* __restrict__ active,
                    double* __restrict__ column, double* __restrict__ diag) {
  for (pp_i64 i = blockIdx.x * static_cast<pp_i64>(blockDim.x) + threadIdx.x; i < p;
       i += static_cast<pp_i64>(gridDim.x) * blockDim.x) {
    double sum = 0.0, d = 0.0;
    if (active[i]) {
      for (pp_i64 a = 0; a < p; ++a)
        if (active[a]) sum += m[a * p + i];
      d = m[i * p + i];
    }
    column[i] = sum;
    diag[i] = d;
  }
}

// kept (p bytes, 1 = active) is consumed: every active neuron is cleared as it is removed. kept_column is
// scratch (p doubles). order and cka_after receive `steps` (= the number of active neurons) entries.
__global__ void __launch_bounds__(PP_GREEDY_THREADS)
    cka_greedy_order(const double* __restrict__ m, pp_i64 p, pp_i64 steps, unsigned char* __restrict__ kept,
                     const double* __restrict__ column, const double* __restrict__ diag,
                     double* __restrict__ kept_column, pp_i64* __restrict__ order, double* __restrict__ cka_after) {
  __shared__ double s_score[PP_GREEDY_WARPS];
  __shared__ double s_remaining[PP_GREEDY_WARPS];
  __shared__ pp_i64 s_index[PP_GREEDY_WARPS];
  __shared__ double s_total;
  __shared__ double b_remaining;
  __shared__ pp_i64 b_index;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int num_warps = blockDim.x / 32;

  for (pp_i64 i = tid; i < p; i += blockDim.x) kept_column[i] = column[i];
  if (tid == 0) {
    double total = 0.0;
    for (pp_i64 i = 0; i < p; ++i) total += column[i];
    s_total = total;
  }
  __syncthreads();
  const double total = s_total;
  const double norm = sqrt(total);
  double numerator = total, denominator_sq = total;

  for (pp_i64 step = 0; step < steps; ++step) {
    double best = 0.0, best_remaining = 0.0;
    pp_i64 best_i = -1;
    for (pp_i64 i = tid; i < p; i += blockDim.x) {
      if (!kept[i]) continue;
      const double rem = (denominator_sq - 2.0 * kept_column[i]) + diag[i];
      const double clamped = rem < 0.0 ? 0.0 : rem;  // clamp_min(0): NaN stays NaN
      const double den = norm * sqrt(clamped);
      const bool positive = den > 0.0;
      const double quotient = (numerator - column[i]) / (positive ? den : 1.0);
      const double score = positive ? quotient : 0.0;
      if (pp_beats(score, i, best, best_i)) {
        best = score;
        best_remaining = rem;
        best_i = i;
      }
    }
    pp_best_of_warp(best, best_remaining, best_i);
    if (lane == 0) {
      s_score[warp] = best;
      s_remaining[warp] = best_remaining;
      s_index[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < num_warps ? s_score[lane] : 0.0;
      best_remaining = lane < num_warps ? s_remaining[lane] : 0.0;
      best_i = lane < num_warps ? s_index[lane] : -1;
      pp_best_of_warp(best, best_remaining, best_i);
      if (lane == 0) {
        b_remaining = best_remaining;
        b_index = best_i;
        order[step] = best_i;
        cka_after[step] = best;
      }
    }
    __syncthreads();
    const pp_i64 j = b_index;  // >= 0: a kept neuron is left at every step
    numerator -= column[j];
    denominator_sq = b_remaining;
    const double* __restrict__ row = m + j * p;
    for (pp_i64 i = tid; i < p; i += blockDim.x) {
      if (i == j)
        kept[i] = 0;
      else if (kept[i])
        kept_column[i] -= row[i];
    }
  }
}

// rows: m x n, zeroed; cross, self_sq: m, zeroed.
__global__ void __launch_bounds__(PP_THREADS)
    cka_rbf_scan(const double* __restrict__ dist, const double* __restrict__ values, pp_i64 n, pp_i64 t,
                 const pp_i64* __restrict__ candidates, pp_i64 m, const double* __restrict__ inv_two_sigma_sq,
                 const double* __restrict__ target, pp_i64 num_tiles, double* __restrict__ cross,
                 double* __restrict__ self_sq, double* __restrict__ rows) {
  __shared__ double s_a[PP_TILE][PP_SCAN_CHUNK + 1];  // +1: conflict-free column reads
  __shared__ double s_b[PP_TILE][PP_SCAN_CHUNK + 1];
  __shared__ double s_row[2 * PP_TILE];
  __shared__ double s_col[PP_ROW_STEP * PP_TILE];
  __shared__ double s_cross[PP_WARPS];
  __shared__ double s_self[PP_WARPS];
  const int tid = threadIdx.x;
  const int tx = tid % PP_TILE, ty = tid / PP_TILE;
  const int lane = tid % 32, warp = tid / 32, half = tx / 32;

  for (pp_i64 c = blockIdx.y; c < m; c += gridDim.y) {
    const double* __restrict__ v = values + candidates[c] * n * t;
    const double inv = inv_two_sigma_sq[c];
    for (pp_i64 tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
      pp_i64 tr, tc;
      pp_tile_coords(tile, tr, tc);
      const pp_i64 r0 = tr * PP_TILE, c0 = tc * PP_TILE;

      // Own squared distances of the thread's 16 pairs, feature chunk by feature chunk.
      double own[PP_ROWS_PER_THREAD];
#pragma unroll
      for (int k = 0; k < PP_ROWS_PER_THREAD; ++k) own[k] = 0.0;
      for (pp_i64 t0 = 0; t0 < t; t0 += PP_SCAN_CHUNK) {
        const int len = t - t0 < PP_SCAN_CHUNK ? static_cast<int>(t - t0) : PP_SCAN_CHUNK;
        for (int idx = tid; idx < PP_TILE * len; idx += PP_THREADS) {
          const int s = idx / len, f = idx % len;
          const pp_i64 ra = r0 + s, cb = c0 + s;
          s_a[s][f] = ra < n ? v[ra * t + t0 + f] : 0.0;
          s_b[s][f] = cb < n ? v[cb * t + t0 + f] : 0.0;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < PP_ROWS_PER_THREAD; ++k) {
          const int dr = ty + k * PP_ROW_STEP;
          double acc = own[k];
          for (int f = 0; f < len; ++f) {
            const double diff = s_a[dr][f] - s_b[tx][f];
            acc = fma(diff, diff, acc);
          }
          own[k] = acc;
        }
        __syncthreads();
      }

      const pp_i64 b = c0 + tx;
      double cross_acc = 0.0, self_acc = 0.0, col_acc = 0.0;
#pragma unroll  // fully: own[k] must stay in registers
      for (int k = 0; k < PP_ROWS_PER_THREAD; ++k) {
        const int dr = ty + k * PP_ROW_STEP;
        const pp_i64 a = r0 + dr;
        double kv = 0.0;
        if (a < n && b <= a) {
          const bool strict = b < a;
          const double diff = strict ? dist[a * n + b] - own[k] : dist[a * n + b];
          const double d = diff < 0.0 ? 0.0 : diff;  // clamp_min(0): NaN stays NaN
          kv = exp(-d * inv);
          const double w = strict ? 2.0 : 1.0;
          cross_acc = fma(w * target[a * n + b], kv, cross_acc);
          self_acc = fma(w * kv, kv, self_acc);
          if (strict) col_acc += kv;
        }
        const double row_part = pp_warp_sum(kv);  // the warp covers 32 columns of row a
        if (lane == 0) s_row[half * PP_TILE + dr] = row_part;
      }
      s_col[ty * PP_TILE + tx] = col_acc;
      const double cross_part = pp_warp_sum(cross_acc);
      const double self_part = pp_warp_sum(self_acc);
      if (lane == 0) {
        s_cross[warp] = cross_part;
        s_self[warp] = self_part;
      }
      __syncthreads();
      pp_add_tile_row_sums(s_row, s_col, rows + c * n, r0, c0, n);
      if (tid == 0) {
        double cross_total = 0.0, self_total = 0.0;
#pragma unroll
        for (int w = 0; w < PP_WARPS; ++w) {
          cross_total += s_cross[w];
          self_total += s_self[w];
        }
        atomicAdd(cross + c, cross_total);
        atomicAdd(self_sq + c, self_total);
      }
      __syncthreads();
    }
  }
}

}  // namespace pyprune
