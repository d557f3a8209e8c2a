// Device helpers and launch constants shared by every csrc/cuda/*.cu (included by NVRTC through -I).
//
// The launch constants are defined once, in pyprune/_cuda.py (LAUNCH_CONSTANTS), which launches the kernels
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

}  // namespace
}  // namespace pyprune

#endif  // PYPRUNE_PP_COMMON_CUH
