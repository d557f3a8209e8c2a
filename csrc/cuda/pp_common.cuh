// Device helpers and launch constants shared by every csrc/cuda/*.cu (included by NVRTC through -I).
//
// The launch constants are defined once, in pyprune/ops/cuda.py (LAUNCH_CONSTANTS), which launches the kernels
// with them and passes them to NVRTC as -D options, so the host and the kernels cannot disagree about a block
// or tile size. A source compiled without them stops here instead of silently using other values:
//   PP_THREADS         threads per block of every kernel except the greedy removal loop
//   PP_GREEDY_THREADS  threads of the single block of the greedy removal loop
//   PP_TILE            edge of the square tiles that cover the lower triangle of an n x n matrix
//   PP_SENS_COLUMNS    sensitivity tile: columns ...
//   PP_SENS_FILTERS    ... x filters per block
#ifndef PYPRUNE_PP_COMMON_CUH
#define PYPRUNE_PP_COMMON_CUH

#if !defined(PP_THREADS) || !defined(PP_GREEDY_THREADS) || !defined(PP_TILE) || !defined(PP_SENS_COLUMNS) || \
    !defined(PP_SENS_FILTERS)
#error "compile through pyprune.ops.cuda.nvrtc_options(): it passes the launch constants as -D options"
#endif

// Derived sizes of the tile loops: a block covers a PP_TILE x PP_TILE tile with PP_ROW_STEP rows in flight,
// each thread taking one column of PP_ROWS_PER_THREAD rows.
#define PP_WARPS (PP_THREADS / 32)
#define PP_ROW_STEP (PP_THREADS / PP_TILE)
#define PP_ROWS_PER_THREAD (PP_TILE / PP_ROW_STEP)

static_assert(PP_THREADS % 32 == 0 && PP_GREEDY_THREADS % 32 == 0, "blocks are whole warps");
static_assert(PP_THREADS % PP_TILE == 0 && PP_TILE % PP_ROW_STEP == 0 && PP_TILE % 32 == 0,
              "a tile row is whole warps and the block covers whole rows of a tile");
static_assert(PP_GREEDY_THREADS / 32 <= 32, "the greedy loop reduces its warps' results within one warp");

typedef long long pp_i64;

namespace pyprune {
namespace {

// Sum of v over the 32 lanes of a warp, returned to every lane.
__device__ __forceinline__ double pp_warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Tile t (0-based, row by row over the lower triangle of tiles) -> (tr, tc) with tc <= tr.
__device__ __forceinline__ void pp_tile_coords(pp_i64 t, pp_i64& tr, pp_i64& tc) {
  pp_i64 r = static_cast<pp_i64>((sqrt(8.0 * static_cast<double>(t) + 1.0) - 1.0) * 0.5);
  while (r > 0 && r * (r + 1) / 2 > t) --r;
  while ((r + 1) * (r + 2) / 2 <= t) ++r;
  tr = r;
  tc = t - r * (r + 1) / 2;
}

// Adds one tile's row sums of a symmetric matrix given by its lower triangle to rows[0..n): s_row holds the
// partial sums of each tile row from the tile's two 32-column halves (2 x PP_TILE), s_col the sums of each tile
// column below the diagonal from each of the PP_ROW_STEP rows in flight (PP_ROW_STEP x PP_TILE). The strictly
// lower entries of tile column d also belong to row c0 + d of the full matrix (the symmetric completion).
// Threads 0..PP_TILE-1 each add one row and one column; call after the __syncthreads that filled s_row, s_col.
__device__ __forceinline__ void pp_add_tile_row_sums(const double* s_row, const double* s_col,
                                                     double* __restrict__ rows, pp_i64 r0, pp_i64 c0, pp_i64 n) {
  if (threadIdx.x >= PP_TILE) return;
  const int d = threadIdx.x;
  const double row_sum = s_row[d] + s_row[PP_TILE + d];
  double col_sum = 0.0;
#pragma unroll
  for (int q = 0; q < PP_ROW_STEP; ++q) col_sum += s_col[q * PP_TILE + d];
  if (r0 == c0) {
    if (r0 + d < n) atomicAdd(rows + r0 + d, row_sum + col_sum);
  } else {
    if (r0 + d < n) atomicAdd(rows + r0 + d, row_sum);
    atomicAdd(rows + c0 + d, col_sum);  // c0 + d < r0 <= n - 1 on an off-diagonal tile
  }
}

}  // namespace
}  // namespace pyprune

#endif  // PYPRUNE_PP_COMMON_CUH
