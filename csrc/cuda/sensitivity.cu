// Empirical sensitivity (SiPP/PFP): the CUDA twin of csrc/cpu/sensitivity.cpp (definition: the reference
// pyprune.ops.sensitivity.sensitivity_update_reference). CuPy compiles it at run time through NVRTC
// (pyprune/ops/cuda.py), with the launch constants of pp_common.cuh. T is float or double.
//
// pyprune::sensitivity_rows<T>: the rows of the computation are the pairs (example x, output position p), x-major,
// b * P of them (P = 1 for a Linear). Grid (x: tiles of 32 columns, y: tiles of 16 filters, z: ranges of whole
// examples), 256 threads. Thread (tx = tid % 32, ty = tid / 32) owns the pairs (f0 + ty, j0 + tx) and
// (f0 + ty + 8, j0 + tx). The block decodes its columns' taps once and each chunk's rows once (the only integer
// divisions), then goes once through its rows in chunks of 64, staging per chunk in shared memory
//   the column values A_jp(x) of its 32 columns (implicit im2col for a conv: the tap (c, u, v) of the window of
//   position p, 0 on the padding; consecutive threads read consecutive positions, i.e. consecutive pixels of an
//   input row for stride 1), and
//   the reciprocal denominators 1/z+ and -1/z- of its 16 filters (0 where |z| <= float32 eps),
// and each thread accumulates, for its two pairs, t = A * (1/z+ or -1/z-, by the sign of W_fj): the running sum
// over the current example's positions, its max over examples, and the max of t. The sum is two-level, as in the
// C++ kernel: a chunk's terms are summed apart and then added to the example's running sum, so float32 sums over
// P positions round like ~(64 + P / 64) additions instead of P (float32 accumulation for float32 inputs). At the end the two maxima are
// folded into raw_mean and raw_max (F x J, zeroed by the caller) with an integer atomicMax on the bit pattern,
// which orders non-negative floats correctly (every t is >= 0, -0 included, so the zero start is exact).
// The host then takes s_mean = max(s_mean, |W| raw_mean / P) and s_max = max(s_max, |W| raw_max); maxima are
// exact, so the result does not depend on the grid.
//
// Entry points (NVRTC name expressions): pyprune::sensitivity_rows<float>, pyprune::sensitivity_rows<double>.

#include "pp_common.cuh"

#define PP_SENS_ROWS 64                               // rows staged per chunk
#define PP_SENS_FILTER_STEP (PP_THREADS / PP_SENS_COLUMNS)  // a thread's two filters are this far apart
#define PP_SENS_EPS 0x1p-23  // float32 machine epsilon (FLT_EPSILON = 2^-23), as in csrc/cpu/sensitivity.h

static_assert(PP_SENS_FILTERS == 2 * PP_SENS_FILTER_STEP, "each thread owns two filters of its column");
static_assert(PP_THREADS >= PP_SENS_ROWS && PP_THREADS >= PP_SENS_COLUMNS, "one thread per row and column decode");

namespace pyprune {
namespace {

__device__ __forceinline__ void pp_atomic_max(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}

__device__ __forceinline__ void pp_atomic_max(double* address, double value) {
  atomicMax(reinterpret_cast<long long*>(address), __double_as_longlong(value));
}

template <typename T>
__device__ __forceinline__ T pp_reciprocal(T z, T factor) {
  return fabs(z) <= static_cast<T>(PP_SENS_EPS) ? T(0) : factor / z;
}

}  // namespace

// inputs: conv (batch, channels, height, width), Linear (batch, columns) with kernel_h == 0. z: (batch, 2, F, P).
// Examples [x_begin, x_end) of grid slice z are [batch * z / gridDim.z, batch * (z + 1) / gridDim.z).
template <typename T>
__global__ void __launch_bounds__(PP_THREADS)
    sensitivity_rows(const T* __restrict__ weight, const T* __restrict__ inputs, const T* __restrict__ z,
                     pp_i64 filters, pp_i64 columns, pp_i64 batch, pp_i64 channels, pp_i64 height, pp_i64 width,
                     int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h,
                     int dilation_w, pp_i64 out_w, pp_i64 patches, T* __restrict__ raw_mean,
                     T* __restrict__ raw_max) {
  __shared__ T s_a[PP_SENS_ROWS][PP_SENS_COLUMNS + 1];
  __shared__ T s_pos[PP_SENS_ROWS][PP_SENS_FILTERS];
  __shared__ T s_neg[PP_SENS_ROWS][PP_SENS_FILTERS];
  // Decoded once: each column's channel and tap offsets, each row's example, position and window origin.
  __shared__ pp_i64 s_col_channel[PP_SENS_COLUMNS];
  __shared__ pp_i64 s_col_dh[PP_SENS_COLUMNS], s_col_dw[PP_SENS_COLUMNS];
  __shared__ pp_i64 s_row_x[PP_SENS_ROWS], s_row_p[PP_SENS_ROWS], s_row_h[PP_SENS_ROWS], s_row_w[PP_SENS_ROWS];
  const int tid = threadIdx.x, tx = tid % PP_SENS_COLUMNS, ty = tid / PP_SENS_COLUMNS;
  const pp_i64 j0 = static_cast<pp_i64>(blockIdx.x) * PP_SENS_COLUMNS;
  const pp_i64 f0 = static_cast<pp_i64>(blockIdx.y) * PP_SENS_FILTERS;
  const pp_i64 x_begin = batch * blockIdx.z / gridDim.z, x_end = batch * (blockIdx.z + 1) / gridDim.z;
  const bool linear = kernel_h == 0;
  const pp_i64 plane = height * width;

  if (tid < PP_SENS_COLUMNS && !linear) {
    const pp_i64 col = j0 + tid, taps = static_cast<pp_i64>(kernel_h) * kernel_w;
    const pp_i64 channel = col / taps, tap = col - channel * taps, u = tap / kernel_w, v = tap - u * kernel_w;
    s_col_channel[tid] = channel;
    s_col_dh[tid] = u * dilation_h - pad_h;
    s_col_dw[tid] = v * dilation_w - pad_w;
  }

  // This thread's two pairs: which reciprocal row each reads (by the weight's sign), and its accumulators.
  const pp_i64 j = j0 + tx;
  bool positive[2];
  T sum[2], part[2], mean_max[2], max[2];  // part: the current chunk's terms of the current example
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const pp_i64 f = f0 + ty + PP_SENS_FILTER_STEP * k;
    positive[k] = f < filters && j < columns && weight[f * columns + j] > T(0);
    sum[k] = T(0);
    part[k] = T(0);
    mean_max[k] = T(0);
    max[k] = T(0);
  }

  const pp_i64 row_begin = x_begin * patches, row_end = x_end * patches;
  pp_i64 position = 0;  // of the next row within its example
  for (pp_i64 q0 = row_begin; q0 < row_end; q0 += PP_SENS_ROWS) {
    const int rows = static_cast<int>(row_end - q0 < PP_SENS_ROWS ? row_end - q0 : PP_SENS_ROWS);
    if (tid < rows) {
      const pp_i64 q = q0 + tid, x = q / patches, p = q - x * patches, oh = p / out_w;
      s_row_x[tid] = x;
      s_row_p[tid] = p;
      s_row_h[tid] = oh * stride_h;
      s_row_w[tid] = (p - oh * out_w) * stride_w;
    }
    __syncthreads();
    // Reciprocal denominators: consecutive threads take consecutive rows (positions, contiguous in z).
    for (int idx = tid; idx < PP_SENS_ROWS * PP_SENS_FILTERS; idx += PP_THREADS) {
      const int r = idx % PP_SENS_ROWS, fi = idx / PP_SENS_ROWS;
      const pp_i64 f = f0 + fi;
      T pos = T(0), neg = T(0);
      if (r < rows && f < filters) {
        const pp_i64 base = (2 * s_row_x[r] * filters + f) * patches + s_row_p[r];
        pos = pp_reciprocal(z[base], T(1));
        neg = pp_reciprocal(z[base + filters * patches], T(-1));
      }
      s_pos[r][fi] = pos;
      s_neg[r][fi] = neg;
    }
    // Column values: Linear, consecutive threads take consecutive columns of one example; conv, consecutive
    // positions of one column (consecutive pixels of an input row for stride 1).
    for (int idx = tid; idx < PP_SENS_ROWS * PP_SENS_COLUMNS; idx += PP_THREADS) {
      const int r = linear ? idx / PP_SENS_COLUMNS : idx % PP_SENS_ROWS;
      const int c = linear ? idx % PP_SENS_COLUMNS : idx / PP_SENS_ROWS;
      const pp_i64 col = j0 + c;
      T value = T(0);
      if (r < rows && col < columns) {
        if (linear) {
          value = inputs[s_row_x[r] * columns + col];
        } else {
          const pp_i64 ih = s_row_h[r] + s_col_dh[c], iw = s_row_w[r] + s_col_dw[c];
          if (ih >= 0 && ih < height && iw >= 0 && iw < width)
            value = inputs[(s_row_x[r] * channels + s_col_channel[c]) * plane + ih * width + iw];
        }
      }
      s_a[r][c] = value;
    }
    __syncthreads();
    for (int r = 0; r < rows; ++r) {
      if (position == patches) {  // the previous example is complete
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const T total = sum[k] + part[k];
          mean_max[k] = total > mean_max[k] ? total : mean_max[k];
          sum[k] = T(0);
          part[k] = T(0);
        }
        position = 0;
      }
      const T a = s_a[r][tx];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int fi = ty + PP_SENS_FILTER_STEP * k;
        const T t = a * (positive[k] ? s_pos[r][fi] : s_neg[r][fi]);
        part[k] += t;
        max[k] = t > max[k] ? t : max[k];
      }
      ++position;
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {  // the chunk's terms join the example's running sum
      sum[k] += part[k];
      part[k] = T(0);
    }
    __syncthreads();
  }
  if (j >= columns) return;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const pp_i64 f = f0 + ty + PP_SENS_FILTER_STEP * k;
    if (f >= filters) continue;
    const T last = sum[k] + part[k];  // the last example
    const T mean = last > mean_max[k] ? last : mean_max[k];
    pp_atomic_max(raw_mean + f * columns + j, mean);
    pp_atomic_max(raw_max + f * columns + j, max[k]);
  }
}

}  // namespace pyprune
