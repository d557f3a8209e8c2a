// Inner products of a symmetric matrix with many row-and-column permutations of another: the CUDA twin of
// csrc/cpu/permutation_hsic.cpp. CuPy compiles it at run time through NVRTC (pyprune/ops/cuda.py), with the launch
// constants of pp_common.cuh.
//
//   out[s] = <A, P_s B P_s^T>_F = sum_{c<r} 2 A[r,c] B[p_s(r), p_s(c)] + sum_r A[r,r] B[p_s(r), p_s(r)]
//
// Only the lower triangle of A is read; B is read at arbitrary (row, column), so it is stored in full.
//
// grid = (S, Y), block = PP_THREADS. blockIdx.x is the permutation s, blockIdx.y a chunk of rows_per_block rows
// of A. x varies fastest, so the blocks that run at the same time read the same rows of A (from L2) for
// different permutations. Threads stride over the columns c <= r of each row: consecutive threads read
// consecutive A[r, c] and p_s(c) (coalesced) and gather B[p_s(r), p_s(c)] from one row of B. Each thread sums in
// double, the block reduces over warps (shuffles) and shared memory, and adds its sum to out[s] with one
// double atomicAdd (sm_60+); out is zeroed by the caller.
#include "pp_common.cuh"

namespace pyprune {

template <typename T>
__global__ void __launch_bounds__(PP_THREADS)
    permutation_hsic(const T* __restrict__ a, pp_i64 lda, const T* __restrict__ b, pp_i64 ldb, pp_i64 n,
                     const pp_i64* __restrict__ perms, pp_i64 rows_per_block, double* __restrict__ out) {
  const pp_i64 s = blockIdx.x;
  const pp_i64* p = perms + s * n;
  const pp_i64 r0 = static_cast<pp_i64>(blockIdx.y) * rows_per_block;
  const pp_i64 r1 = r0 + rows_per_block < n ? r0 + rows_per_block : n;
  double sum = 0.0;
  for (pp_i64 r = r0; r < r1; ++r) {
    const T* a_row = a + r * lda;
    const T* b_row = b + p[r] * ldb;
    for (pp_i64 c = threadIdx.x; c <= r; c += PP_THREADS) {
      const double weight = c == r ? 1.0 : 2.0;
      sum += weight * static_cast<double>(a_row[c]) * static_cast<double>(b_row[p[c]]);
    }
  }
  __shared__ double warp_sums[PP_WARPS];
  sum = pp_warp_sum(sum);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    double total = threadIdx.x < PP_WARPS ? warp_sums[threadIdx.x] : 0.0;
    total = pp_warp_sum(total);
    if (threadIdx.x == 0) atomicAdd(out + s, total);
  }
}

}  // namespace pyprune
