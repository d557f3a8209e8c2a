// Empirical sensitivity of every weight to a batch (SiPP, Baykal et al. 2019; PFP, Liebenwein et al. 2020): the
// fused relative-contribution reduction. Defined by the plain-torch reference sensitivity_update_reference in
// pyprune/ops/sensitivity.py.
//
// For a layer with weight W (F x J, J = C_in kh kw for a conv, J = in_features for a Linear), a batch of inputs
// with patches A_jp(x) (p = output position, P of them; P = 1 for a Linear), and the denominators
// z+_fp(x) = sum_j max(W_fj, 0) A_jp(x), z-_fp(x) = sum_j min(W_fj, 0) A_jp(x) (computed by the caller with a
// GEMM), the relative contribution of weight (f, j) at patch p of example x is
//   g = W_fj A_jp(x) / z^{sign W_fj}_fp(x)   (0 where W_fj = 0 or |z| <= kSensitivityEpsilon)
// and one call folds the batch into the running maxima:
//   s_mean[f, j] = max(s_mean[f, j], max_x mean_p g),   s_max[f, j] = max(s_max[f, j], max_x max_p g).
// Inputs must be finite and non-negative (the caller splits a signed batch by the batch-doubling rule).
// Results are at most 1, and a result within 4 ulps of 1 is 1: the exact value when a weight carries its whole
// denominator, which multiplying by 1/z (instead of dividing) misses by an ulp or two.
// Arithmetic is in T: for float32 the sum over positions is two-level (per chunk of about 64 positions, then the
// chunk sums), which keeps s_mean within about 5e-7 relative of a float64 sum of the same float32 values
// (measured by benchmarks/bench_sensitivity.py) in under half the time of the float64 path.
//
// The patches are never materialised: for a conv, each (c, kh, kw) column is read straight from the input rows
// (implicit im2col, one chunk of output positions at a time). Extra memory: about 1 MiB per thread (conv), at most
// the size of the inputs plus that of z (Linear), and F x J per range of examples when the examples are split across
// threads (when there are few filter/column tiles).
#pragma once

#include <cstdint>
#include <limits>

namespace pyprune {

// float32 machine epsilon: denominators with |z| <= this count as infinite (contribution 0), in every dtype.
constexpr double kSensitivityEpsilon = std::numeric_limits<float>::epsilon();

// How the layer reads its input: a Conv2d's window, or a Linear when kernel_h == kernel_w == 0.
struct Window {
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;

  bool linear() const { return kernel_h == 0 && kernel_w == 0; }
};

// Output positions along one axis, floor((size + 2 pad - dilation (kernel - 1) - 1) / stride) + 1, or 0 when
// the window does not fit.
int64_t window_positions(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation);

// One batch folded into s_mean and s_max (both F x J, updated in place).
//   weight:  F x J (filters x columns), row-major.
//   inputs:  conv: batch x (J / (kh kw)) x height x width; Linear: batch x J (height and width are ignored).
//   z:       batch x 2 x F x P: [x][0] holds z+ and [x][1] holds z- of example x, P = output positions
//            (window_positions of height and of width multiplied; 1 for a Linear).
// All arrays dense and row-major. Work is split over blocks of filters and columns, and over blocks of
// examples when there are too few of those for num_threads; maxima are exact, so the result does not depend on
// num_threads. Throws std::invalid_argument for an inconsistent window (J not a multiple of kh kw, a window
// that does not fit, a non-positive kernel/stride/dilation or a negative padding).
// relative_threshold: compute as if each example's inputs and z were first divided by its scale
// 2^floor(log2 max |z(x)|) over its 2 F P denominators (1 where they are all 0), which makes the threshold
// |z| <= kSensitivityEpsilon * scale and leaves every other result bit for bit as it was (the scale is a power of
// two); that is pyprune.ops.sensitivity.sensitivity_update's rule, applied here without copying inputs or z.
template <typename T>
void sensitivity_update(const T* weight, int64_t filters, int64_t columns, const T* inputs, int64_t batch,
                        int64_t height, int64_t width, const Window& window, const T* z, T* s_mean, T* s_max,
                        int num_threads, bool relative_threshold = false);

}  // namespace pyprune
