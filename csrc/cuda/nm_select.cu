// Per-row lowest-k and N:M selection fused with Wanda scoring, for NVRTC (no host code).
// Definition: nm_select_reference in pyprune/ops/reference.py; CPU twin: csrc/cpu/nm_select.cpp.
//
// Scores s_ij = |W_ij| * x_j are computed in double (one rounding, as on the CPU) and ordered by (s_ij, j).
// Scores are >= 0, so their IEEE bit patterns order like the values as unsigned 64-bit integers: the row
// kernel finds the k-th smallest bit pattern with an 8-bit radix select in shared memory (eight passes), removes
// everything below it, and among the scores equal to it the lowest columns (a block-wide prefix count in column
// order). Float32 subnormal weights count as 0 here (-ftz=true), unlike on the CPU.

// PP_THREADS: the block size pyprune/ops/cuda.py launches with (LAUNCH_CONSTANTS).
#include "pp_common.cuh"

template <typename T>
__device__ __forceinline__ unsigned long long score_bits(const T* w, const double* x, long long j) {
  const double a = fabs(static_cast<double>(w[j]));
  return static_cast<unsigned long long>(__double_as_longlong(__dmul_rn(a, x[j])));
}

// One block per row (grid-stride over rows); k > 0 lowest scores of each row are marked in `removed`.
template <typename T>
__device__ void rows_impl(const T* __restrict__ weight, const double* __restrict__ x, long long rows, long long cols,
                          long long k, unsigned char* __restrict__ removed) {
  __shared__ unsigned int histogram[256];
  __shared__ unsigned long long prefix_s;
  __shared__ long long need_s;
  __shared__ long long chunk_counts[PP_THREADS];
  const int t = threadIdx.x;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* w = weight + row * cols;
    unsigned char* out = removed + row * cols;
    unsigned long long prefix = 0, mask = 0;
    long long need = k;  // how many of the elements matching `prefix` under `mask` still go
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int b = t; b < 256; b += PP_THREADS) histogram[b] = 0;
      __syncthreads();
      for (long long j = t; j < cols; j += PP_THREADS) {
        const unsigned long long s = score_bits(w, x, j);
        if ((s & mask) == prefix) atomicAdd(&histogram[(s >> shift) & 255ull], 1u);
      }
      __syncthreads();
      if (t == 0) {
        long long below = 0;
        int bin = 0;
        while (below + histogram[bin] < need) below += histogram[bin++];
        prefix_s = prefix | (static_cast<unsigned long long>(bin) << shift);
        need_s = need - below;
      }
      __syncthreads();
      prefix = prefix_s;
      need = need_s;
      mask |= 255ull << shift;
      __syncthreads();
    }
    // prefix is now the k-th smallest score; `need` of the scores equal to it go, lowest columns first.
    const long long chunk = (cols + PP_THREADS - 1) / PP_THREADS;
    const long long begin = t * chunk, end = begin + chunk < cols ? begin + chunk : cols;
    long long equal = 0;
    for (long long j = begin; j < end; ++j) equal += score_bits(w, x, j) == prefix;
    chunk_counts[t] = equal;
    __syncthreads();
    if (t == 0) {
      long long running = 0;
      for (int i = 0; i < PP_THREADS; ++i) {
        const long long c = chunk_counts[i];
        chunk_counts[i] = running;
        running += c;
      }
    }
    __syncthreads();
    long long before = chunk_counts[t];
    for (long long j = begin; j < end; ++j) {
      const unsigned long long s = score_bits(w, x, j);
      unsigned char drop = s < prefix;
      if (s == prefix) drop = before++ < need;
      out[j] = drop;
    }
    __syncthreads();
  }
}

// One thread per group of m consecutive columns (grid-stride); its m - n lowest are marked.
template <typename T>
__device__ void groups_impl(const T* __restrict__ weight, const double* __restrict__ x, long long rows,
                            long long cols, long long n, long long m, unsigned char* __restrict__ removed) {
  const long long groups = rows * (cols / m);
  for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups;
       g += (long long)gridDim.x * blockDim.x) {
    const long long row = g / (cols / m), start = (g % (cols / m)) * m;
    const T* w = weight + row * cols;
    for (long long j = start; j < start + m; ++j) {
      const unsigned long long s = score_bits(w, x, j);
      long long below = 0;
      for (long long c = start; c < start + m; ++c) {
        const unsigned long long other = score_bits(w, x, c);
        below += other < s || (other == s && c < j);
      }
      removed[row * cols + j] = below < m - n;
    }
  }
}

extern "C" __global__ void __launch_bounds__(PP_THREADS)
    nm_select_rows_f32(const float* weight, const double* x, long long rows, long long cols, long long k,
                       unsigned char* removed) {
  rows_impl<float>(weight, x, rows, cols, k, removed);
}

extern "C" __global__ void __launch_bounds__(PP_THREADS)
    nm_select_rows_f64(const double* weight, const double* x, long long rows, long long cols, long long k,
                       unsigned char* removed) {
  rows_impl<double>(weight, x, rows, cols, k, removed);
}

extern "C" __global__ void __launch_bounds__(PP_THREADS)
    nm_select_groups_f32(const float* weight, const double* x, long long rows, long long cols, long long n,
                         long long m, unsigned char* removed) {
  groups_impl<float>(weight, x, rows, cols, n, m, removed);
}

extern "C" __global__ void __launch_bounds__(PP_THREADS)
    nm_select_groups_f64(const double* weight, const double* x, long long rows, long long cols, long long n,
                         long long m, unsigned char* removed) {
  groups_impl<double>(weight, x, rows, cols, n, m, removed);
}
