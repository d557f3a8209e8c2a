// RBF kernel matrix from a linear Gram matrix: the CUDA twin of csrc/cpu/rbf_gram.cpp.
//
// CuPy compiles it at run time through NVRTC (pyprune/ops/cuda.py), with the launch constants of pp_common.cuh.
// The host side runs
//   1. pyprune::rbf_sq_distances<T>: in place on the lower triangle of G (n x n, rows ld elements apart),
//        D_rc = max(0, G_rr + G_cc - 2 G_rc) for c < r (computed in double, stored as T), D_rr = 0.
//      The squared norms G_rr are read from `sq_norms`, a float64 copy of the diagonal taken beforehand, so no
//      thread reads a diagonal entry that another thread has already zeroed. Every strictly-lower D_rc is also
//      written to packed[r (r - 1) / 2 + c] (length n (n - 1) / 2), which the host hands to torch.kthvalue.
//   2. on the host, with torch on the device: m = the median of all n^2 entries of D, zero diagonal included,
//      numpy convention (mean of the two middle values for an even count); the error for m == 0 with some
//      nonzero distance.
//   3. pyprune::rbf_exp<T>: K_rc = exp(scale * D_rc) for c < r, K_rr = 1, with scale = -1 / (2 t^2 m)
//      (0 when every distance is 0, which gives the all-ones kernel).
// The upper triangle is never touched. Under CuPy's -ftz=true, float32 results below 1.2e-38 (kernel values
// of very distant pairs) are flushed to 0 instead of being stored as subnormals.
//
// Launch geometry (both kernels): 1-D grid of up to 65535 blocks of 256 threads; block b handles rows
// b, b + gridDim.x, ... and its threads stride over the columns c < r of a row (coalesced), thread 0 also
// writing the diagonal entry.
//
// Entry points (NVRTC name expressions): pyprune::rbf_sq_distances<float|double> and
// pyprune::rbf_exp<float|double>.

#include "pp_common.cuh"

namespace pyprune {

template <typename T>
__global__ void __launch_bounds__(PP_THREADS)
    rbf_sq_distances(T* __restrict__ gram, pp_i64 n, pp_i64 ld, const double* __restrict__ sq_norms,
                     T* __restrict__ packed) {
  for (pp_i64 r = blockIdx.x; r < n; r += gridDim.x) {
    T* row = gram + r * ld;
    T* out = packed + r * (r - 1) / 2;
    const double norm_r = sq_norms[r];
    for (pp_i64 c = threadIdx.x; c < r; c += blockDim.x) {
      const double d = norm_r + sq_norms[c] - 2.0 * static_cast<double>(row[c]);
      const T value = static_cast<T>(d > 0.0 ? d : 0.0);
      row[c] = value;
      out[c] = value;
    }
    if (threadIdx.x == 0) row[r] = T(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(PP_THREADS) rbf_exp(T* __restrict__ gram, pp_i64 n, pp_i64 ld, double scale) {
  for (pp_i64 r = blockIdx.x; r < n; r += gridDim.x) {
    T* row = gram + r * ld;
    for (pp_i64 c = threadIdx.x; c < r; c += blockDim.x)
      row[c] = static_cast<T>(exp(scale * static_cast<double>(row[c])));
    if (threadIdx.x == 0) row[r] = T(1);
  }
}

}  // namespace pyprune
