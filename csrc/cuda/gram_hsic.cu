// Fused HSIC statistics of many symmetric Gram matrices: the CUDA twin of csrc/cpu/gram_hsic.cpp.
//
// CuPy compiles it at run time through NVRTC (pyprune/ops/cuda.py), with the launch constants of pp_common.cuh.
//
// For A_1..A_La and B_1..B_Lb (n x n, only the lower triangle c <= r is read) it accumulates, in double:
//   cross[i, j] = <A_i, B_j>_F = sum_{c<r} 2 A_i[r,c] B_j[r,c] + sum_r A_i[r,r] B_j[r,r]
//                  (symmetric mode: only i <= j is written; the caller mirrors it, so that the result is
//                  exactly symmetric whatever order the atomics ran in)
//   self_a[i], self_b[j]        (cross mode only; in symmetric mode they are the diagonal of cross)
//   rows_a[i, r] = sum_c A_i[r, c] of the full symmetric matrix = lower part of row r + the strictly-lower
//                  entries of column r (and the same for B in cross mode)
// diag(A_i) is a strided copy and is taken by the caller with torch.
//
// Algorithm. The output is a small La x Lb matrix of dot products over K = n(n+1)/2 weighted entries: a
// tall-skinny GEMM with a huge reduction dimension, done as a split-K with register tiling.
//   * The lower triangle is cut into 64 x 64 tiles (tc <= tr), numbered row by row; tile t is decoded in
//     the kernel.
//   * The (La x Lb) output is cut into BM x BN groups (BM, BN in {1, 2, 4, 8}, template parameters chosen by
//     the caller from La, Lb). Symmetric mode (B = A) uses BM == BN and only the group pairs gi <= gj (a block
//     with gi == gj also forms the products i > j of its group and drops them).
//   * grid = (number of group pairs, Y <= 65535), block = 256 threads. blockIdx.x is the group pair (read
//     from `meta`), blockIdx.y strides over the tiles (tile = blockIdx.y, blockIdx.y + Y, ...). x varies
//     fastest, so the blocks that run at the same time read the same tile of every matrix and all but the
//     first read of a tile hit L2.
//   * block = 256 threads: thread (tx = tid % 64, ty = tid / 64) handles column c0 + tx of rows
//     r0 + ty + 4k, k = 0..15, so 64 neighbouring threads read 64 consecutive elements of a row (coalesced).
//     For every element it loads its BM values of A (times the weight 2 below / 1 on the diagonal) and its BN
//     values of B, and does BM * BN double FMAs into registers. Products of floats are exact in double.
//   * When the block is done with all its tiles, each accumulator is reduced over the warp (shuffles) and
//     over the 8 warps (shared memory) and added to the output with one double atomicAdd (sm_60+).
//   * Row sums and self terms: for every group of matrices exactly one "designated" block per tile also
//     computes them, right after its cross products (the tile is still in L1/L2): A's group gi in the block
//     with gj == gi (symmetric mode) or gj == 0 (cross mode), B's group gj in the block with gi == 0, one
//     matrix after the other (a loop that is not unrolled, to keep the code small). Row parts are reduced
//     with warp shuffles, column parts in shared memory, then 64 + 64 double atomicAdds per tile and matrix
//     (64 on diagonal tiles, where row and column indices coincide) and one for the self term.
// Outputs must be zeroed by the caller. The summation order depends on scheduling, so the last bits of the
// results may differ between runs. CuPy compiles with -ftz=true, which flushes float32 subnormal inputs
// (|x| < 1.2e-38) to zero when they are widened to double; everything else is exact widening.
//
// Arguments: meta is a device int64 array laid out as
//   [ptr_a[0..La), ld_a[0..La), ptr_b[0..Lb), ld_b[0..Lb), (i0, j0) for each group pair]
// (pointers to element (0, 0); rows are ld elements apart, columns contiguous). In symmetric mode the caller
// passes the A entries again as the B entries and Lb == La.
//
// Entry point: the kernel template pyprune::gram_hsic<T, BM, BN> with T in {float, double} and BM, BN in
// {1, 2, 4, 8}, instantiated through NVRTC name expressions such as "pyprune::gram_hsic<float, 4, 4>"
// (pyprune/ops/cuda.py compiles only the instantiations it launches).

#include "pp_common.cuh"

namespace pyprune {
namespace {

// Adds one tile's contributions to the row sums (symmetric completion) of one matrix and, unless self_out
// is null, to its self inner product <G, G>_F. Called by all threads of the block (it synchronises).
template <typename T>
__device__ __forceinline__ void pp_tile_rows(const T* __restrict__ g, pp_i64 ld, pp_i64 n, pp_i64 r0, pp_i64 c0,
                                             double* __restrict__ rows, double* __restrict__ self_out,
                                             double* s_row, double* s_col, double* s_self) {
  const int tx = threadIdx.x % PP_TILE, ty = threadIdx.x / PP_TILE;
  const int lane = threadIdx.x % 32, half = tx / 32;
  const pp_i64 c = c0 + tx;
  double col = 0.0, self_acc = 0.0;
#pragma unroll 4
  for (int k = 0; k < PP_ROWS_PER_THREAD; ++k) {
    const int dr = ty + k * PP_ROW_STEP;
    const pp_i64 r = r0 + dr;
    const double v = (r < n && c <= r) ? static_cast<double>(g[r * ld + c]) : 0.0;
    const double strict = c < r ? v : 0.0;
    col += strict;
    self_acc += (strict + v) * v;  // 2 v^2 below the diagonal, v^2 on it
    const double row_part = pp_warp_sum(v);
    if (lane == 0) s_row[half * PP_TILE + dr] = row_part;
  }
  s_col[ty * PP_TILE + tx] = col;
  if (self_out != nullptr) {
    const double self_part = pp_warp_sum(self_acc);
    if (lane == 0) s_self[threadIdx.x / 32] = self_part;
  }
  __syncthreads();
  pp_add_tile_row_sums(s_row, s_col, rows, r0, c0, n);
  if (self_out != nullptr && threadIdx.x == 0) {
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < PP_WARPS; ++w) total += s_self[w];
    atomicAdd(self_out, total);
  }
  __syncthreads();
}

}  // namespace

template <typename T, int BM, int BN>
__global__ void __launch_bounds__(PP_THREADS)
    gram_hsic(const pp_i64* __restrict__ meta, int num_a, int num_b, int same, pp_i64 n, pp_i64 num_tiles,
              double* __restrict__ cross, double* __restrict__ self_a, double* __restrict__ self_b,
              double* __restrict__ rows_a, double* __restrict__ rows_b) {
  __shared__ double s_row[2 * PP_TILE];
  __shared__ double s_col[PP_ROW_STEP * PP_TILE];
  __shared__ double s_self[PP_WARPS];
  __shared__ double s_red[PP_WARPS][BM * BN];

  const pp_i64* ptr_a = meta;
  const pp_i64* ld_a = meta + num_a;
  const pp_i64* ptr_b = meta + 2 * num_a;
  const pp_i64* ld_b = meta + 2 * num_a + num_b;
  const pp_i64* pairs = meta + 2 * num_a + 2 * num_b;
  const int i0 = static_cast<int>(pairs[2 * blockIdx.x]);
  const int j0 = static_cast<int>(pairs[2 * blockIdx.x + 1]);
  const int count_a = num_a - i0 < BM ? num_a - i0 : BM;  // matrices of this group that exist
  const int count_b = num_b - j0 < BN ? num_b - j0 : BN;
  const bool rows_a_here = same ? (i0 == j0) : (j0 == 0);
  const bool rows_b_here = !same && i0 == 0;

  const T* pa[BM];
  const T* pb[BN];
  pp_i64 la[BM], lb[BN];
#pragma unroll
  for (int m = 0; m < BM; ++m) {
    const int idx = m < count_a ? i0 + m : i0;  // missing matrices alias a real one and are masked to 0
    pa[m] = reinterpret_cast<const T*>(ptr_a[idx]);
    la[m] = ld_a[idx];
  }
#pragma unroll
  for (int m = 0; m < BN; ++m) {
    const int idx = m < count_b ? j0 + m : j0;
    pb[m] = reinterpret_cast<const T*>(ptr_b[idx]);
    lb[m] = ld_b[idx];
  }

  double acc[BM][BN];
#pragma unroll
  for (int i = 0; i < BM; ++i)
#pragma unroll
    for (int j = 0; j < BN; ++j) acc[i][j] = 0.0;

  const int tx = threadIdx.x % PP_TILE, ty = threadIdx.x / PP_TILE;
  for (pp_i64 tile = blockIdx.y; tile < num_tiles; tile += gridDim.y) {
    pp_i64 tr, tc;
    pp_tile_coords(tile, tr, tc);
    const pp_i64 r0 = tr * PP_TILE, c0 = tc * PP_TILE;
    const pp_i64 c = c0 + tx;
#pragma unroll 2
    for (int k = 0; k < PP_ROWS_PER_THREAD; ++k) {
      const pp_i64 r = r0 + ty + k * PP_ROW_STEP;
      if (r < n && c <= r) {
        const double w = c < r ? 2.0 : 1.0;
        double a[BM], b[BN];
#pragma unroll
        for (int m = 0; m < BM; ++m) a[m] = m < count_a ? w * static_cast<double>(pa[m][r * la[m] + c]) : 0.0;
#pragma unroll
        for (int m = 0; m < BN; ++m) b[m] = m < count_b ? static_cast<double>(pb[m][r * lb[m] + c]) : 0.0;
#pragma unroll
        for (int i = 0; i < BM; ++i)
#pragma unroll
          for (int j = 0; j < BN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
    }
    // Not unrolled (one copy of the code): the matrices' addresses come from meta again.
    if (rows_a_here) {
#pragma unroll 1
      for (int i = i0; i < i0 + count_a; ++i)
        pp_tile_rows<T>(reinterpret_cast<const T*>(ptr_a[i]), ld_a[i], n, r0, c0, rows_a + i * n,
                        same ? nullptr : self_a + i, s_row, s_col, s_self);
    }
    if (rows_b_here) {
#pragma unroll 1
      for (int j = j0; j < j0 + count_b; ++j)
        pp_tile_rows<T>(reinterpret_cast<const T*>(ptr_b[j]), ld_b[j], n, r0, c0, rows_b + j * n, self_b + j,
                        s_row, s_col, s_self);
    }
  }

  // Block reduction: warp shuffles, then the 8 warp partials through shared memory, then atomics.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < BM; ++i) {
#pragma unroll
    for (int j = 0; j < BN; ++j) {
      const double v = pp_warp_sum(acc[i][j]);
      if (lane == 0) s_red[warp][i * BN + j] = v;
    }
  }
  __syncthreads();
  for (int p = threadIdx.x; p < BM * BN; p += PP_THREADS) {
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < PP_WARPS; ++w) total += s_red[w][p];
    const int i = i0 + p / BN, j = j0 + p % BN;
    if (i >= num_a || j >= num_b) continue;
    if (!same || i <= j) atomicAdd(cross + static_cast<pp_i64>(i) * num_b + j, total);
  }
}

}  // namespace pyprune
