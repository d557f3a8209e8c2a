#include "cpu/sensitivity.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"

// How the kernel runs. With R_fp = 1/z+_fp for a positive weight and -1/z-_fp for a negative one (both >= 0, 0
// where |z| <= eps), g = |W_fj| A_jp R_fp, and |W_fj| >= 0 factors out of the sum and of the max over positions
// (exactly, for the max), so it is applied once per (filter, column) pair at the end. Vectors are 64 bytes (V = 16
// float32 or 8 float64 lanes); the micro-kernels are compiled for AVX-512, AVX2 and SSE2 and picked at load time.
//
// Conv: one lane per example. A task is a tile of 16 filters x up to 256 columns and a range of blocks of V
// examples. Per block it interleaves the input channels it reads (X[c][h][w][lane]), then goes through the output
// positions in chunks of about 64: it interleaves the chunk's reciprocal denominators of its filters
// (R[row][p][lane], from z, about 130 KiB), and for each group of 4 filters and each column runs one micro-kernel
// over the chunk. The micro-kernel reads the column's input pixels straight from X (implicit im2col: for a fixed
// tap (c, u, v), consecutive output positions of a row read consecutive pixels of an input row) and the group's 4
// R rows, with the 4 pairs' sums (one lane per example: plain vector adds) and maxima in registers; lanes are
// reduced only when the tile is done. Extra memory: about 1 MiB of buffers per thread.
//
// Linear: P = 1. With at least 4 blocks of examples, one lane per example again: the inputs and reciprocals of
// the whole batch are interleaved first (X[j][block][lane], R[row][block][lane]: the size of the inputs and of z),
// a task is a tile of 16 filters x up to 256 columns x a range of blocks. For each group of 4 filters the tile's
// columns are sorted by the signs of their 4 weights, so that one R row per filter serves 4 columns of a sign
// pattern: each micro-kernel call reduces 4 filters x 4 columns over the task's blocks (a multiply and a max per
// vector, 8 vector loads per 16 products where one column at a time took 20), and the 16 accumulators' lanes are
// reduced together (an in-register transpose). With a
// smaller batch, one lane per filter: the reciprocals are taken in z's order, a task is V filters x up to 256
// columns x a range of examples, and each call takes 4 columns over the task's examples (per example: one broadcast
// input per column, the two reciprocal vectors, a blend by the weights' signs, a multiply and a max).
namespace pyprune {
namespace {

constexpr int64_t kBlockBytes = 64;
constexpr int64_t kTileFilters = 16;
constexpr int64_t kTileColumns = 256;
constexpr int64_t kChunkPositions = 64;
constexpr int kGroup = 4;  // filters sharing each load of a column's values

template <typename T>
constexpr int64_t lanes() {
  return kBlockBytes / static_cast<int64_t>(sizeof(T));
}

// std::vector storage aligned to a cache line (so that no block of lanes straddles two lines) whose resize leaves
// new elements uninitialised: every buffer is written before it is read.
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kBlockBytes})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{kBlockBytes}); }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U>
  bool operator==(const LineAligned<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const LineAligned<U>&) const {
    return false;
  }
};

template <typename T>
using Buffer = std::vector<T, LineAligned<T>>;

inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

struct Layout {
  int64_t filters = 0, columns = 0, batch = 0, blocks = 0;
  int64_t channels = 0, height = 1, width = 1;  // conv input planes
  int64_t taps = 1, out_h = 1, out_w = 1, patches = 1;
  Window window;
};

// ------------------------------------------------------------------------------------------------------------
// Micro-kernels

// A conv micro-kernel call: 4 filters x 1 column over output rows [oh0, oh1), whose positions start at p0 in the
// R rows; only the output columns [lo, hi) whose tap falls inside the input row are visited (the others read
// padding, contribution 0).
template <typename T>
struct ConvRun {
  const T* plane;      // X for the column's channel: input rows row0, row0 + 1, ... of every lane
  const T* r[kGroup];  // R rows of the chunk
  T* sums[kGroup];     // V lanes each: the current block's sums over positions
  T* maxima[kGroup];   // V lanes each
  int64_t oh0, oh1, p0, lo, hi, row0;
  int64_t off_h, off_w;  // position (oh, ow) reads input pixel (oh * stride_h + off_h, ow * stride_w + off_w)
  int64_t stride_h, stride_w, height, width, out_w;
};

// A Linear micro-kernel call: 4 columns x V filters (one lane per filter) over n examples; maxima[k * V + lane]
// rises to the max over them of A_xj R_xf for column k and filter lane.
template <typename T>
struct LinearRun {
  const T* a;         // inputs at (first example, first column)
  const T* r;         // reciprocals at (first example, z+ half, first filter); the z- half is r_neg further
  const T* positive;  // kGroup x V: 1 where the weight is positive (read 1/z+), 0 where not (read -1/z-)
  T* maxima;          // kGroup x V
  int64_t n, a_step, r_step, r_neg;
};

// A Linear micro-kernel call with one lane per example (large batches): 4 filters x 4 columns over n consecutive
// blocks of V examples. The 4 columns' weights have the same signs in each of the 4 filters, so one R row per filter
// serves all 4 columns: each vector load feeds 4 products (the GEMM-like register block that a per-column R row
// choice would prevent). *maxima[kGroup * k + c] rises to the max over the blocks of filter k, column c.
template <typename T>
struct BlockRun {
  const T* x[kGroup];  // interleaved inputs of the 4 columns at the first block
  const T* r[kGroup];  // interleaved reciprocal rows of the 4 filters (by the shared signs) at the first block
  T* maxima[kGroup * kGroup];  // one scalar each
  int64_t n;
};

// Written once for a register width of kBytes (64: AVX-512, 32: AVX2, 16: SSE2/NEON); a narrower width makes
// 64 / kBytes passes, each over one slice of the lanes, so that the 8 accumulators always fit in registers.
// always_inline compiles the body into each ISA's entry point below. T-aligned vector types: any T* may be read.
// Max over the lanes of a vector of kBytes, by halving (log2(lanes) vector max steps).
template <typename T, int kBytes>
__attribute__((always_inline)) inline T lanes_max(const void* v) {
  if constexpr (kBytes == 2 * sizeof(T)) {
    T pair[2];
    std::memcpy(pair, v, sizeof(pair));
    return pair[0] > pair[1] ? pair[0] : pair[1];
  } else {
    typedef T Half __attribute__((vector_size(kBytes / 2), aligned(sizeof(T))));
    Half lo, hi;
    std::memcpy(&lo, v, kBytes / 2);
    std::memcpy(&hi, static_cast<const char*>(v) + kBytes / 2, kBytes / 2);
    const Half m = lo > hi ? lo : hi;
    return lanes_max<T, kBytes / 2>(&m);
  }
}

template <typename T, int kBytes>
__attribute__((always_inline)) inline void conv_run(const ConvRun<T>& run) {
  typedef T Sub __attribute__((vector_size(kBytes), aligned(sizeof(T))));
  constexpr int64_t kPasses = kBlockBytes / kBytes;
  const int64_t count = run.hi - run.lo, a_step = run.stride_w * kPasses;
  for (int64_t pass = 0; pass < kPasses; ++pass) {
    const Sub* max_in[kGroup];
    for (int k = 0; k < kGroup; ++k) max_in[k] = reinterpret_cast<const Sub*>(run.maxima[k]) + pass;
    Sub s0 = {}, s1 = {}, s2 = {}, s3 = {}, m0 = *max_in[0], m1 = *max_in[1], m2 = *max_in[2], m3 = *max_in[3];
    for (int64_t oh = run.oh0; oh < run.oh1; ++oh) {
      const int64_t ih = oh * run.stride_h + run.off_h;
      if (ih < 0 || ih >= run.height) continue;
      const int64_t first = (oh * run.out_w + run.lo - run.p0) * kPasses + pass;  // position (oh, lo) in the chunk
      const Sub* __restrict__ a = reinterpret_cast<const Sub*>(run.plane) +
                                  ((ih - run.row0) * run.width + run.lo * run.stride_w + run.off_w) * kPasses + pass;
      const Sub* __restrict__ q0 = reinterpret_cast<const Sub*>(run.r[0]) + first;
      const Sub* __restrict__ q1 = reinterpret_cast<const Sub*>(run.r[1]) + first;
      const Sub* __restrict__ q2 = reinterpret_cast<const Sub*>(run.r[2]) + first;
      const Sub* __restrict__ q3 = reinterpret_cast<const Sub*>(run.r[3]) + first;
      for (int64_t l = 0; l < count; ++l) {
        const Sub v = a[l * a_step];
        const Sub t0 = v * q0[l * kPasses], t1 = v * q1[l * kPasses], t2 = v * q2[l * kPasses],
                  t3 = v * q3[l * kPasses];
        s0 += t0;
        s1 += t1;
        s2 += t2;
        s3 += t3;
        m0 = m0 > t0 ? m0 : t0;
        m1 = m1 > t1 ? m1 : t1;
        m2 = m2 > t2 ? m2 : t2;
        m3 = m3 > t3 ? m3 : t3;
      }
    }
    // The chunk's sums go into the block's running sums: a two-level summation over the positions.
    const Sub s[kGroup] = {s0, s1, s2, s3}, m[kGroup] = {m0, m1, m2, m3};
    for (int k = 0; k < kGroup; ++k) {
      reinterpret_cast<Sub*>(run.sums[k])[pass] += s[k];
      reinterpret_cast<Sub*>(run.maxima[k])[pass] = m[k];
    }
  }
}

template <typename T, int kBytes>
__attribute__((always_inline)) inline void linear_run(const LinearRun<T>& run) {
  typedef T Sub __attribute__((vector_size(kBytes), aligned(sizeof(T))));
  constexpr int64_t kPasses = kBlockBytes / kBytes;
  for (int64_t pass = 0; pass < kPasses; ++pass) {
    const Sub* __restrict__ sel = reinterpret_cast<const Sub*>(run.positive) + pass;
    const auto p0 = sel[0] > 0, p1 = sel[kPasses] > 0, p2 = sel[2 * kPasses] > 0, p3 = sel[3 * kPasses] > 0;
    // Two examples per iteration into two sets of maxima: eight independent chains hide the latency of max.
    Sub m0 = {}, m1 = {}, m2 = {}, m3 = {}, n0 = {}, n1 = {}, n2 = {}, n3 = {};
    const T* __restrict__ a = run.a;
    const T* __restrict__ r = run.r + pass * (kBytes / static_cast<int64_t>(sizeof(T)));
    const T* __restrict__ b = a + run.a_step;
    const T* __restrict__ s = r + run.r_step;
    int64_t x = 0;
    for (; x + 1 < run.n; x += 2, a += 2 * run.a_step, r += 2 * run.r_step, b += 2 * run.a_step, s += 2 * run.r_step) {
      const Sub rp = *reinterpret_cast<const Sub*>(r), rn = *reinterpret_cast<const Sub*>(r + run.r_neg);
      const Sub sp = *reinterpret_cast<const Sub*>(s), sn = *reinterpret_cast<const Sub*>(s + run.r_neg);
      const Sub t0 = a[0] * (p0 ? rp : rn), t1 = a[1] * (p1 ? rp : rn), t2 = a[2] * (p2 ? rp : rn),
                t3 = a[3] * (p3 ? rp : rn);
      const Sub u0 = b[0] * (p0 ? sp : sn), u1 = b[1] * (p1 ? sp : sn), u2 = b[2] * (p2 ? sp : sn),
                u3 = b[3] * (p3 ? sp : sn);
      m0 = m0 > t0 ? m0 : t0;
      m1 = m1 > t1 ? m1 : t1;
      m2 = m2 > t2 ? m2 : t2;
      m3 = m3 > t3 ? m3 : t3;
      n0 = n0 > u0 ? n0 : u0;
      n1 = n1 > u1 ? n1 : u1;
      n2 = n2 > u2 ? n2 : u2;
      n3 = n3 > u3 ? n3 : u3;
    }
    if (x < run.n) {
      const Sub rp = *reinterpret_cast<const Sub*>(r), rn = *reinterpret_cast<const Sub*>(r + run.r_neg);
      const Sub t0 = a[0] * (p0 ? rp : rn), t1 = a[1] * (p1 ? rp : rn), t2 = a[2] * (p2 ? rp : rn),
                t3 = a[3] * (p3 ? rp : rn);
      m0 = m0 > t0 ? m0 : t0;
      m1 = m1 > t1 ? m1 : t1;
      m2 = m2 > t2 ? m2 : t2;
      m3 = m3 > t3 ? m3 : t3;
    }
    const Sub m[kGroup] = {m0 > n0 ? m0 : n0, m1 > n1 ? m1 : n1, m2 > n2 ? m2 : n2, m3 > n3 ? m3 : n3};
    for (int k = 0; k < kGroup; ++k) {
      Sub* out = reinterpret_cast<Sub*>(run.maxima) + k * kPasses + pass;
      *out = *out > m[k] ? *out : m[k];
    }
  }
}

// out = max(even, odd) where even (odd) takes lanes [2qB, 2qB + B) ([(2q + 1)B, (2q + 2)B)) of the concatenation u:v
// for q = 0, 1, ...: each pair of neighbouring blocks of B lanes is folded into one block.
template <typename Vec, int B, size_t... I>
__attribute__((always_inline)) inline void fold_blocks(Vec& out, const Vec& u, const Vec& v,
                                                       std::index_sequence<I...>) {
  const Vec even = __builtin_shufflevector(u, v, static_cast<int>(I / B * 2 * B + I % B)...);
  const Vec odd = __builtin_shufflevector(u, v, static_cast<int>(I / B * 2 * B + B + I % B)...);
  out = even > odd ? even : odd;
}

// The maxima over the lanes of N vectors of W lanes together (N a multiple of W), in place: after log2 W steps,
// v[g] holds those of v[g W], ..., v[g W + W - 1], one per lane in order. Each step pairs neighbouring vectors and
// halves their lanes (2 shuffles and a max per pair): an in-register transpose, 3 N (1 - 1/W) operations instead of
// 2 N log2 W for one vector at a time.
template <typename Vec, int W, int N, int B = W / 2>
__attribute__((always_inline)) inline void lanes_max_together(Vec* v) {
  if constexpr (B >= 1) {
    constexpr int kCount = N * 2 * B / W;  // vectors left before this step
    for (int i = 0; i < kCount / 2; ++i)
      fold_blocks<Vec, B>(v[i], v[2 * i], v[2 * i + 1], std::make_index_sequence<W>{});
    lanes_max_together<Vec, W, N, B / 2>(v);
  }
}

// Columns per sweep: 4 filters x 4 columns of accumulators with 64-byte registers (32 of them), 4 x 2 with narrower
// ones (16 registers), so that the accumulators, the 4 R vectors and an input stay in registers.
template <int kBytes>
constexpr int block_columns() {
  return kBytes == 64 ? kGroup : 2;
}

template <typename T, int kBytes, int kCols>
__attribute__((always_inline)) inline void blocks_sweep(const BlockRun<T>& run, int64_t pass, int c0) {
  typedef T Sub __attribute__((vector_size(kBytes), aligned(sizeof(T))));
  constexpr int64_t kPasses = kBlockBytes / kBytes;
  const Sub* __restrict__ q0 = reinterpret_cast<const Sub*>(run.r[0]) + pass;
  const Sub* __restrict__ q1 = reinterpret_cast<const Sub*>(run.r[1]) + pass;
  const Sub* __restrict__ q2 = reinterpret_cast<const Sub*>(run.r[2]) + pass;
  const Sub* __restrict__ q3 = reinterpret_cast<const Sub*>(run.r[3]) + pass;
  const Sub* __restrict__ a[kCols];
  Sub m0[kCols], m1[kCols], m2[kCols], m3[kCols];
#pragma GCC unroll 4
  for (int c = 0; c < kCols; ++c) {
    a[c] = reinterpret_cast<const Sub*>(run.x[c0 + c]) + pass;
    m0[c] = m1[c] = m2[c] = m3[c] = Sub{};
  }
  for (int64_t l = 0; l < run.n * kPasses; l += kPasses) {
    const Sub r0 = q0[l], r1 = q1[l], r2 = q2[l], r3 = q3[l];
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) {
      const Sub v = a[c][l];
      const Sub t0 = v * r0, t1 = v * r1, t2 = v * r2, t3 = v * r3;
      m0[c] = m0[c] > t0 ? m0[c] : t0;
      m1[c] = m1[c] > t1 ? m1[c] : t1;
      m2[c] = m2[c] > t2 ? m2[c] : t2;
      m3[c] = m3[c] > t3 ? m3[c] : t3;
    }
  }
  constexpr int W = kBytes / sizeof(T), N = kGroup * kCols;
  Sub m[N];
#pragma GCC unroll 4
  for (int c = 0; c < kCols; ++c) {
    m[c] = m0[c];
    m[kCols + c] = m1[c];
    m[2 * kCols + c] = m2[c];
    m[3 * kCols + c] = m3[c];
  }
  lanes_max_together<Sub, W, N>(m);
  T best[N];
  std::memcpy(best, m, sizeof(best));
  for (int k = 0; k < kGroup; ++k)
    for (int c = 0; c < kCols; ++c) {
      T* out = run.maxima[kGroup * k + c0 + c];
      if (best[k * kCols + c] > *out) *out = best[k * kCols + c];
    }
}

template <typename T, int kBytes>
__attribute__((always_inline)) inline void blocks_run(const BlockRun<T>& run) {
  constexpr int64_t kPasses = kBlockBytes / kBytes;
  constexpr int kCols = block_columns<kBytes>();
  for (int64_t pass = 0; pass < kPasses; ++pass)
    for (int c0 = 0; c0 < kGroup; c0 += kCols) blocks_sweep<T, kBytes, kCols>(run, pass, c0);
}

template <typename T>
struct MicroKernels {
  void (*conv)(const ConvRun<T>&);
  void (*linear)(const LinearRun<T>&);
  void (*blocks)(const BlockRun<T>&);
};

template <typename T>
void conv_16(const ConvRun<T>& run) {
  conv_run<T, 16>(run);
}
template <typename T>
void linear_16(const LinearRun<T>& run) {
  linear_run<T, 16>(run);
}
template <typename T>
void blocks_16(const BlockRun<T>& run) {
  blocks_run<T, 16>(run);
}

// The widest version the CPU runs, picked once: the target_clones idea, by hand, because the width also sets the
// number of passes.
#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx512f"))) void conv_64(const ConvRun<T>& run) {
  conv_run<T, 64>(run);
}
template <typename T>
__attribute__((target("avx512f"))) void linear_64(const LinearRun<T>& run) {
  linear_run<T, 64>(run);
}
template <typename T>
__attribute__((target("avx512f"))) void blocks_64(const BlockRun<T>& run) {
  blocks_run<T, 64>(run);
}
template <typename T>
__attribute__((target("avx2"))) void conv_32(const ConvRun<T>& run) {
  conv_run<T, 32>(run);
}
template <typename T>
__attribute__((target("avx2"))) void linear_32(const LinearRun<T>& run) {
  linear_run<T, 32>(run);
}
template <typename T>
__attribute__((target("avx2"))) void blocks_32(const BlockRun<T>& run) {
  blocks_run<T, 32>(run);
}

template <typename T>
MicroKernels<T> pick_kernels() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {conv_64<T>, linear_64<T>, blocks_64<T>};
  if (__builtin_cpu_supports("avx2")) return {conv_32<T>, linear_32<T>, blocks_32<T>};
  return {conv_16<T>, linear_16<T>, blocks_16<T>};
}
#else
template <typename T>
MicroKernels<T> pick_kernels() {
  return {conv_16<T>, linear_16<T>, blocks_16<T>};
}
#endif

template <typename T>
const MicroKernels<T>& micro_kernels() {
  static const MicroKernels<T> kernels = pick_kernels<T>();
  return kernels;
}

// ------------------------------------------------------------------------------------------------------------
// Interleaving

// An example's scale (relative threshold): its inputs and denominators are multiplied by 2^k, k = 1 - e where
// 2^e > max |z(x)| >= 2^(e-1), which is exact and rounds as dividing by the reference's power of two 2^-k does.
struct Pow2 {
  int k = 0;
  double factor = 1;  // 2^k
};

// v 2^k, correctly rounded: float through double (exact), double directly unless 2^k is not a double (k > 1023,
// denominators below the smallest normal double).
template <typename T>
inline T times(T v, const Pow2& s) {
  if constexpr (sizeof(T) == sizeof(float))
    return static_cast<T>(static_cast<double>(v) * s.factor);
  else
    return s.k > 1023 ? std::ldexp(v, s.k) : v * s.factor;
}

// Each example's Pow2 from its 2 F P denominators: the power of two that torch.frexp gives pyprune.ops.sensitivity's
// denominator_scale (scale 1 where z(x) is 0, 0.5 where it is not finite, as frexp's exponent is 0 there).
template <typename T>
std::vector<Pow2> example_scales(const T* z, int64_t batch, int64_t size, int threads) {
  std::vector<Pow2> scales(static_cast<size_t>(batch));
  parallel_blocks(batch, threads, [&](int, int64_t x) {
    const T* row = z + x * size;
    T peak = 0;
#pragma omp simd reduction(max : peak)
    for (int64_t i = 0; i < size; ++i) peak = std::max(peak, std::fabs(row[i]));
    int e = 0;
    if (std::isfinite(peak)) std::frexp(peak, &e);
    const int k = peak > 0 ? 1 - e : 0;
    scales[x] = Pow2{k, std::ldexp(1.0, k)};
  });
  return scales;
}

// out = factor / z, 0 where |z| <= eps (the reference's "z = inf" rule); factor -1 turns z- <= 0 into -1/z- >= 0.
// With a scale, z is first multiplied by it.
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void reciprocal_row(const T* __restrict__ z, int64_t n, T factor, T* __restrict__ out, const Pow2* scale = nullptr) {
  const T eps = static_cast<T>(kSensitivityEpsilon);
  if (scale == nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = std::fabs(z[i]) <= eps ? T(0) : factor / z[i];
    return;
  }
  const Pow2 s = *scale;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = times(z[i], s);
    out[i] = std::fabs(v) <= eps ? T(0) : factor / v;
  }
}

// Entries [0, n) of V sources (source `lane` at src + lane * stride, multiplied by scales[lane] when given; lanes
// >= valid read as 0) interleaved into dst[i * dst_step + lane], 16 entries at a time so that both sides stay in L1.
template <typename T>
void interleave(const T* src, int64_t stride, int64_t valid, int64_t n, T* dst, int64_t dst_step = lanes<T>(),
                const Pow2* scales = nullptr) {
  constexpr int64_t V = lanes<T>(), kRun = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kRun) {
    const int64_t i1 = std::min(n, i0 + kRun);
    for (int64_t lane = 0; lane < V; ++lane) {
      const T* in = src + lane * stride;
      if (lane >= valid)
        for (int64_t i = i0; i < i1; ++i) dst[i * dst_step + lane] = T(0);
      else if (scales == nullptr)
        for (int64_t i = i0; i < i1; ++i) dst[i * dst_step + lane] = in[i];
      else
        for (int64_t i = i0; i < i1; ++i) dst[i * dst_step + lane] = times(in[i], scales[lane]);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Tasks

struct Tile {
  int64_t f0, f1, j0, j1;  // filters, columns
  int64_t b0, b1;          // conv: example blocks
  int64_t x0, x1;          // Linear: examples
};

// Per-worker buffers. R rows: 0 is zeros (the row of a zero weight), then 1 + sign * (filters) + f.
template <typename T>
struct Work {
  Buffer<T> x;         // conv: the block's input channels, interleaved
  Buffer<T> r;         // conv: the chunk's R rows
  Buffer<T> z;         // conv: V rows of a chunk's reciprocals before interleaving
  Buffer<T> sums;      // conv: V lanes per slot (filter, column of the tile)
  Buffer<T> means;     // conv: V lanes per slot, max over blocks of the sums
  Buffer<T> maxima;    // conv: V lanes per slot; Linear: one scalar per slot
  Buffer<T> dummy;     // conv: accumulators of the missing members of a short last group
  Buffer<T> positive;  // Linear: per column, 1 in the lanes of the filters whose weight is positive
  Buffer<T> columns;   // Linear: the inputs of a short last group of columns
  std::vector<int64_t> rows;  // conv: R row of each slot; large Linear: the tile's columns ordered by sign pattern
  std::vector<int> keys;      // large Linear: each column's sign pattern in the current group of 4 filters
};

template <typename T>
void conv_task(const Layout& d, const T* inputs, const T* z, const Pow2* scales, const Tile& t, Work<T>& w) {
  const MicroKernels<T>& kernels = micro_kernels<T>();
  const Window& win = d.window;
  const int64_t V = lanes<T>(), tf = t.f1 - t.f0, tc = t.j1 - t.j0, F = d.filters, P = d.patches;
  const int64_t plane = d.height * d.width, c0 = t.j0 / d.taps, c1 = (t.j1 - 1) / d.taps + 1;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkPositions / d.out_w);
  const int64_t chunk = std::min(d.out_h, rows_per_chunk) * d.out_w;  // positions of a full chunk
  // Input rows a chunk reads, at most: its output rows' windows.
  const int64_t span = std::min(d.height, (rows_per_chunk - 1) * win.stride_h + (win.kernel_h - 1) * win.dilation_h + 1);
  w.x.resize(static_cast<size_t>((c1 - c0) * span * d.width * V));
  w.r.resize(static_cast<size_t>((2 * kTileFilters + 1) * chunk * V));
  std::fill(w.r.begin(), w.r.begin() + chunk * V, T(0));
  w.z.resize(static_cast<size_t>(V * chunk));
  w.sums.resize(static_cast<size_t>(tf * tc * V));
  w.means.assign(static_cast<size_t>(tf * tc * V), T(0));
  w.maxima.assign(static_cast<size_t>(tf * tc * V), T(0));
  for (int64_t b = t.b0; b < t.b1; ++b) {
    const int64_t valid = std::min(V, d.batch - b * V);
    std::fill(w.sums.begin(), w.sums.end(), T(0));
    for (int64_t oh0 = 0; oh0 < d.out_h; oh0 += rows_per_chunk) {
      const int64_t oh1 = std::min(d.out_h, oh0 + rows_per_chunk), p0 = oh0 * d.out_w, n = (oh1 - oh0) * d.out_w;
      // X: the input rows [ih0, ih1) this chunk reads, of the tile's channels.
      const int64_t ih0 = std::max<int64_t>(0, oh0 * win.stride_h - win.pad_h);
      const int64_t ih1 = std::min(d.height, (oh1 - 1) * win.stride_h - win.pad_h +
                                                 (win.kernel_h - 1) * win.dilation_h + 1);
      for (int64_t c = c0; c < c1 && ih0 < ih1; ++c)
        interleave(inputs + (b * V * d.channels + c) * plane + ih0 * d.width, d.channels * plane, valid,
                   (ih1 - ih0) * d.width, w.x.data() + (c - c0) * span * d.width * V, V,
                   scales ? scales + b * V : nullptr);
      for (int64_t sign = 0; sign < 2; ++sign)
        for (int64_t fi = 0; fi < tf; ++fi) {
          for (int64_t lane = 0; lane < valid; ++lane)
            reciprocal_row(z + (((b * V + lane) * 2 + sign) * F + t.f0 + fi) * P + p0, n, sign ? T(-1) : T(1),
                           w.z.data() + lane * chunk, scales ? scales + b * V + lane : nullptr);
          interleave(w.z.data(), chunk, valid, n, w.r.data() + (1 + sign * tf + fi) * chunk * V);
        }
      for (int64_t fi0 = 0; fi0 < tf; fi0 += kGroup) {
        for (int64_t jj = 0; jj < tc; ++jj) {
          ConvRun<T> run;
          bool any = false;
          for (int k = 0; k < kGroup; ++k) {
            const int64_t fi = fi0 + k, slot = fi * tc + jj;
            const int64_t row = fi < tf ? w.rows[slot] : 0;
            any |= row != 0;
            run.r[k] = w.r.data() + row * chunk * V;
            run.sums[k] = fi < tf ? w.sums.data() + slot * V : w.dummy.data() + 2 * k * V;
            run.maxima[k] = fi < tf ? w.maxima.data() + slot * V : w.dummy.data() + (2 * k + 1) * V;
          }
          if (!any) continue;
          const int64_t j = t.j0 + jj, c = j / d.taps, u = j % d.taps / win.kernel_w, v = j % win.kernel_w;
          run.plane = w.x.data() + (c - c0) * span * d.width * V;
          run.row0 = ih0;
          run.oh0 = oh0;
          run.oh1 = oh1;
          run.p0 = p0;
          run.off_h = u * win.dilation_h - win.pad_h;
          run.off_w = v * win.dilation_w - win.pad_w;
          run.lo = std::clamp<int64_t>(ceil_div(-run.off_w, win.stride_w), 0, d.out_w);
          run.hi = std::clamp<int64_t>(ceil_div(d.width - run.off_w, win.stride_w), run.lo, d.out_w);
          run.stride_h = win.stride_h;
          run.stride_w = win.stride_w;
          run.height = d.height;
          run.width = d.width;
          run.out_w = d.out_w;
          kernels.conv(run);
        }
      }
    }
    for (size_t i = 0; i < w.sums.size(); ++i)
      if (w.sums[i] > w.means[i]) w.means[i] = w.sums[i];
  }
}

// A Linear tile of V filters (one per lane) x up to 256 columns over a range of examples, 4 columns per call;
// R holds every example's reciprocals in z's order, each half padded to a multiple of V filters.
template <typename T>
void linear_task(const Layout& d, const T* weight, const T* inputs, const T* R, int64_t half, const Tile& t,
                 Work<T>& w) {
  const MicroKernels<T>& kernels = micro_kernels<T>();
  const int64_t V = lanes<T>(), tc = t.j1 - t.j0, J = d.columns, groups = ceil_div(tc, kGroup);
  w.maxima.assign(static_cast<size_t>(groups * kGroup * V), T(0));
  w.positive.assign(static_cast<size_t>(groups * kGroup * V), T(0));
  for (int64_t f = t.f0; f < t.f1; ++f)
    for (int64_t jj = 0; jj < tc; ++jj) w.positive[jj * V + f - t.f0] = weight[f * J + t.j0 + jj] > 0 ? 1 : 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t jj = g * kGroup;
    LinearRun<T> run;
    run.a = inputs + t.x0 * J + t.j0 + jj;
    run.a_step = J;
    if (jj + kGroup > tc) {  // a short last group: its missing columns repeat its last one, within the row
      w.columns.resize(static_cast<size_t>((t.x1 - t.x0) * kGroup));
      for (int64_t x = t.x0; x < t.x1; ++x)
        for (int64_t k = 0; k < kGroup; ++k)
          w.columns[(x - t.x0) * kGroup + k] = inputs[x * J + t.j0 + std::min(jj + k, tc - 1)];
      run.a = w.columns.data();
      run.a_step = kGroup;
    }
    run.r = R + t.x0 * 2 * half + t.f0;
    run.r_step = 2 * half;
    run.r_neg = half;
    run.positive = w.positive.data() + jj * V;
    run.maxima = w.maxima.data() + jj * V;
    run.n = t.x1 - t.x0;
    kernels.linear(run);
  }
}

// A Linear tile of 16 filters x up to 256 columns over a range of example blocks, one lane per example (large
// batches): X[j][block][lane] and R[row][block][lane] are interleaved for the whole batch (R row 0: zeros, then
// 1 + f: 1/z+_f, 1 + F + f: -1/z-_f). For each group of 4 filters, the tile's columns are sorted by the signs of
// their 4 weights (zero, positive or negative: 81 patterns), and each call reduces 4 filters x 4 columns of one
// pattern over all the task's blocks (a short last group of a pattern repeats its last column into dummy maxima).
template <typename T>
void linear_blocks_task(const Layout& d, const T* weight, const T* X, const T* R, const Tile& t, Work<T>& w) {
  constexpr int kPatterns = 81;  // 3^kGroup
  const MicroKernels<T>& kernels = micro_kernels<T>();
  const int64_t V = lanes<T>(), tf = t.f1 - t.f0, tc = t.j1 - t.j0, F = d.filters;
  w.maxima.assign(static_cast<size_t>(tf * tc), T(0));
  w.dummy.assign(static_cast<size_t>(kGroup * kGroup), T(0));
  w.keys.resize(static_cast<size_t>(tc));
  w.rows.resize(static_cast<size_t>(tc));
  for (int64_t fi0 = 0; fi0 < tf; fi0 += kGroup) {
    // key = sum_k 3^k code_k with code 0, 1, 2 for a zero, positive, negative weight of filter k (a row at a time,
    // so that the loop vectorises).
    std::fill(w.keys.begin(), w.keys.end(), 0);
    for (int k = std::min<int64_t>(kGroup, tf - fi0) - 1; k >= 0; --k) {
      const T* row = weight + (t.f0 + fi0 + k) * d.columns + t.j0;
      int* keys = w.keys.data();
#pragma omp simd
      for (int64_t jj = 0; jj < tc; ++jj) keys[jj] = 3 * keys[jj] + (row[jj] > 0 ? 1 : 0) + (row[jj] < 0 ? 2 : 0);
    }
    int64_t starts[kPatterns + 1] = {};
    for (int64_t jj = 0; jj < tc; ++jj) ++starts[w.keys[jj] + 1];
    for (int key = 0; key < kPatterns; ++key) starts[key + 1] += starts[key];
    int64_t fill[kPatterns];
    std::copy(starts, starts + kPatterns, fill);
    for (int64_t jj = 0; jj < tc; ++jj) w.rows[fill[w.keys[jj]]++] = jj;
    // Pattern 0 (all 4 weights zero) contributes nothing.
    for (int key = 1; key < kPatterns; ++key) {
      BlockRun<T> run;
      for (int k = 0, rest = key; k < kGroup; ++k, rest /= 3) {
        const int64_t f = t.f0 + fi0 + k, code = rest % 3;
        run.r[k] = R + ((code == 0 ? 0 : code == 1 ? 1 + f : 1 + F + f) * d.blocks + t.b0) * V;
      }
      run.n = t.b1 - t.b0;
      for (int64_t i0 = starts[key]; i0 < starts[key + 1]; i0 += kGroup) {
        for (int c = 0; c < kGroup; ++c) {
          const bool real = i0 + c < starts[key + 1];
          const int64_t jj = w.rows[real ? i0 + c : starts[key + 1] - 1];
          run.x[c] = X + ((t.j0 + jj) * d.blocks + t.b0) * V;
          for (int k = 0; k < kGroup; ++k)
            run.maxima[kGroup * k + c] = real && fi0 + k < tf ? w.maxima.data() + (fi0 + k) * tc + jj
                                                             : w.dummy.data() + kGroup * k + c;
        }
        kernels.blocks(run);
      }
    }
  }
}

// A relative contribution is at most 1, and exactly 1 when the weight carries its whole denominator (the only
// nonzero term of z): the reference's c / z is then exact, while c * (1/z) can miss it by a few ulps either way.
// Values within 4 ulps of 1 (under the kernel's own error bound) are therefore 1, and none is above.
template <typename T>
inline T at_most_one(T v) {
  return v >= T(1) - 2 * std::numeric_limits<T>::epsilon() ? T(1) : v;
}

// s = max(s, |W| raw / P) for the mean and s = max(s, |W| raw) for the max, as torch.maximum does (a NaN already
// in s stays). |W| >= 0 commutes exactly with the maxima over examples.
template <typename T>
inline void fold(T w, T raw_mean, T raw_max, int64_t patches, T& s_mean, T& s_max) {
  const T scale = std::fabs(w);
  const T mean = at_most_one(scale * raw_mean / static_cast<T>(patches)), max = at_most_one(scale * raw_max);
  if (mean > s_mean) s_mean = mean;
  if (max > s_max) s_max = max;
}

// fold over a row of n slots (a large Linear's tile row: mean and max are the same value), written to vectorise.
template <typename T>
void fold_row(const T* __restrict__ w, const T* __restrict__ raw, int64_t n, T* __restrict__ s_mean,
              T* __restrict__ s_max) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = at_most_one(std::fabs(w[i]) * raw[i]);
    s_mean[i] = v > s_mean[i] ? v : s_mean[i];
    s_max[i] = v > s_max[i] ? v : s_max[i];
  }
}

template <typename T>
T lane_max(const T* v) {
  T m = v[0];
  for (int64_t lane = 1; lane < lanes<T>(); ++lane) m = std::max(m, v[lane]);
  return m;
}

Layout make_layout(int64_t filters, int64_t columns, int64_t batch, int64_t height, int64_t width,
                   const Window& w, int64_t lanes_per_block) {
  Layout d;
  d.filters = filters;
  d.columns = columns;
  d.batch = batch;
  d.blocks = ceil_div(batch, lanes_per_block);
  d.window = w;
  if (w.linear()) {
    d.channels = columns;
    return d;
  }
  if (w.kernel_h < 1 || w.kernel_w < 1 || w.stride_h < 1 || w.stride_w < 1 || w.dilation_h < 1 ||
      w.dilation_w < 1 || w.pad_h < 0 || w.pad_w < 0)
    throw std::invalid_argument("window: kernel, stride and dilation must be >= 1 and padding >= 0");
  d.taps = w.kernel_h * w.kernel_w;
  if (columns % d.taps != 0)
    throw std::invalid_argument("columns: " + std::to_string(columns) +
                                " is not a multiple of kernel_h * kernel_w = " + std::to_string(d.taps));
  d.channels = columns / d.taps;
  d.height = height;
  d.width = width;
  d.out_h = window_positions(height, w.kernel_h, w.stride_h, w.pad_h, w.dilation_h);
  d.out_w = window_positions(width, w.kernel_w, w.stride_w, w.pad_w, w.dilation_w);
  if (d.out_h < 1 || d.out_w < 1)
    throw std::invalid_argument("window: no output position fits in a " + std::to_string(height) + " x " +
                                std::to_string(width) + " input");
  d.patches = d.out_h * d.out_w;
  return d;
}

}  // namespace

int64_t window_positions(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 || stride < 1 ? 0 : span / stride + 1;
}

template <typename T>
void sensitivity_update(const T* weight, int64_t filters, int64_t columns, const T* inputs, int64_t batch,
                        int64_t height, int64_t width, const Window& window, const T* z, T* s_mean, T* s_max,
                        int num_threads, bool relative_threshold) {
  const int64_t V = lanes<T>();
  const Layout d = make_layout(filters, columns, batch, height, width, window, V);
  if (batch == 0 || filters == 0 || columns == 0) return;
  const int threads = std::max(1, num_threads);
  const bool linear = window.linear();
  // Relative threshold: each example's inputs and denominators are multiplied by its power of two where they are
  // read (interleaved or turned into reciprocals), never copied for it.
  const std::vector<Pow2> scale_of =
      relative_threshold ? example_scales(z, batch, 2 * filters * d.patches, threads) : std::vector<Pow2>{};
  const Pow2* scales = relative_threshold ? scale_of.data() : nullptr;

  // Linear with a large batch: one lane per example, X[j][block][lane] and R[row][block][lane] for the whole
  // batch. Linear with a small one: one lane per filter, every example's reciprocals in z's order, each half padded
  // to whole vectors of filters.
  const bool by_blocks = linear && batch >= 4 * V;
  const int64_t half = ceil_div(filters, V) * V;
  Buffer<T> X, R;
  if (by_blocks) {
    const int64_t step = d.blocks * V;
    X.resize(static_cast<size_t>(columns * step));
    R.resize(static_cast<size_t>((2 * filters + 1) * step));
    std::fill(R.begin(), R.begin() + step, T(0));
    std::vector<Buffer<T>> scratch(worker_count(d.blocks, threads));
    parallel_blocks(d.blocks, threads, [&](int worker, int64_t b) {
      const int64_t valid = std::min(V, batch - b * V);
      interleave(inputs + b * V * columns, columns, valid, columns, X.data() + b * V, step,
                 scales ? scales + b * V : nullptr);
      Buffer<T>& zs = scratch[worker];
      zs.resize(static_cast<size_t>(V * 2 * filters));
      for (int64_t lane = 0; lane < valid; ++lane)
        for (int64_t sign = 0; sign < 2; ++sign)
          reciprocal_row(z + ((b * V + lane) * 2 + sign) * filters, filters, sign ? T(-1) : T(1),
                         zs.data() + (lane * 2 + sign) * filters, scales ? scales + b * V + lane : nullptr);
      interleave(zs.data(), 2 * filters, valid, 2 * filters, R.data() + step + b * V, step);
    });
  } else if (linear) {
    R.resize(static_cast<size_t>(batch * 2 * half));
    if (scales) X.resize(static_cast<size_t>(batch * columns));  // the scaled inputs (fewer than 4 V examples)
    parallel_blocks(ceil_div(batch, kTileColumns), threads, [&](int, int64_t block) {
      for (int64_t x = block * kTileColumns; x < std::min(batch, (block + 1) * kTileColumns); ++x) {
        for (int64_t sign = 0; sign < 2; ++sign) {
          T* out = R.data() + (2 * x + sign) * half;
          reciprocal_row(z + (2 * x + sign) * filters, filters, sign ? T(-1) : T(1), out,
                         scales ? scales + x : nullptr);
          std::fill(out + filters, out + half, T(0));
        }
        if (scales)
          for (int64_t j = 0; j < columns; ++j) X[x * columns + j] = times(inputs[x * columns + j], scales[x]);
      }
    });
  }

  // Tiles: 16 filters x 256 columns over example blocks (conv, large Linear), or V filters x 256 columns over
  // examples (small Linear).
  const bool by_filters = linear && !by_blocks;
  const int64_t tile_filters = by_filters ? V : kTileFilters, units = by_filters ? batch : d.blocks;
  const int64_t tiles_f = ceil_div(filters, tile_filters), tiles_j = ceil_div(columns, kTileColumns);
  const int64_t tiles = tiles_f * tiles_j;
  // Too few tiles for the threads: split the examples too; each range then has its own partial maxima, merged at
  // the end (maxima are exact, so the split changes no bit of the result).
  const int64_t splits = std::min<int64_t>(units, tiles >= 2 * threads ? 1 : ceil_div(2 * threads, tiles));
  std::vector<T> partial_mean, partial_max;
  if (splits > 1) {
    partial_mean.resize(static_cast<size_t>(splits * filters * columns));
    partial_max.resize(static_cast<size_t>(splits * filters * columns));
  }
  const int workers = worker_count(tiles * splits, threads);
  std::vector<Work<T>> work(workers);
  parallel_blocks(tiles * splits, workers, [&](int worker, int64_t task) {
    const int64_t split = task / tiles, tile = task % tiles, f0 = tile / tiles_j * tile_filters;
    const int64_t j0 = tile % tiles_j * kTileColumns, u0 = units * split / splits, u1 = units * (split + 1) / splits;
    const Tile t{f0, std::min(filters, f0 + tile_filters), j0, std::min(columns, j0 + kTileColumns), u0, u1, u0, u1};
    const int64_t tf = t.f1 - t.f0, tc = t.j1 - t.j0;
    Work<T>& w = work[worker];
    if (by_blocks) {
      linear_blocks_task(d, weight, X.data(), R.data(), t, w);
    } else if (by_filters) {
      linear_task(d, weight, scales ? X.data() : inputs, R.data(), half, t, w);
    } else {
      // R row of each (filter, column) slot by the weight's sign: 1 + fi for 1/z+, 1 + tf + fi for -1/z-, and
      // 0 (zeros, skipped) for a zero weight.
      w.rows.resize(static_cast<size_t>(tf * tc));
      for (int64_t fi = 0; fi < tf; ++fi)
        for (int64_t jj = 0; jj < tc; ++jj) {
          const T v = weight[(t.f0 + fi) * columns + t.j0 + jj];
          w.rows[fi * tc + jj] = v > 0 ? 1 + fi : v < 0 ? 1 + tf + fi : 0;
        }
      w.dummy.assign(static_cast<size_t>(2 * kGroup * V), T(0));
      conv_task(d, inputs, z, scales, t, w);
    }
    if (by_blocks && splits == 1) {
      for (int64_t fi = 0; fi < tf; ++fi) {
        const int64_t at = (t.f0 + fi) * columns + t.j0;
        fold_row(weight + at, w.maxima.data() + fi * tc, tc, s_mean + at, s_max + at);
      }
      return;
    }
    for (int64_t fi = 0; fi < tf; ++fi)
      for (int64_t jj = 0; jj < tc; ++jj) {
        const int64_t at = (t.f0 + fi) * columns + t.j0 + jj;
        // Linear: one position, so the mean is the value.
        const T max = by_blocks    ? w.maxima[fi * tc + jj]
                      : by_filters ? w.maxima[jj * V + fi]
                                   : lane_max(w.maxima.data() + (fi * tc + jj) * V);
        const T mean = linear ? max : lane_max(w.means.data() + (fi * tc + jj) * V);
        if (splits == 1) {
          fold(weight[at], mean, max, d.patches, s_mean[at], s_max[at]);
        } else {
          partial_mean[split * filters * columns + at] = mean;
          partial_max[split * filters * columns + at] = max;
        }
      }
  });
  if (splits == 1) return;
  const int64_t size = filters * columns;
  parallel_blocks(filters, threads, [&](int, int64_t f) {
    for (int64_t at = f * columns; at < (f + 1) * columns; ++at) {
      T mean = 0, max = 0;
      for (int64_t split = 0; split < splits; ++split) {
        mean = std::max(mean, partial_mean[split * size + at]);
        max = std::max(max, partial_max[split * size + at]);
      }
      fold(weight[at], mean, max, d.patches, s_mean[at], s_max[at]);
    }
  });
}

template void sensitivity_update<float>(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                                        const Window&, const float*, float*, float*, int, bool);
template void sensitivity_update<double>(const double*, int64_t, int64_t, const double*, int64_t, int64_t,
                                         int64_t, const Window&, const double*, double*, double*, int, bool);

}  // namespace pyprune
