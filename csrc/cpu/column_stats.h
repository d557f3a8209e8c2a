// One pass over a layer's activations for CKA: float64 column sums and the smallest and largest entries.
//
// CKA's preparation of a layer (n samples x p features) needs its peak |x| (for an exact power-of-two rescaling)
// and its column means (for centring). Read with NumPy they cost three passes (max, min, mean); this is one.
// Each column is summed in one fixed order whatever the thread count (threads take blocks of columns): in float64,
// 4 rows at a time, s += (x[r] + x[r+1]) + (x[r+2] + x[r+3]), then the last rows one by one. NaN is skipped by the
// minimum and maximum and propagates into its column's sum.
#pragma once

#include <cstdint>

namespace pyprune {

// x: rows x cols, row r at x + r * ld (ld >= cols). sums: cols doubles, overwritten. low/high: the smallest and
// largest non-NaN entries (+inf / -inf when every entry is NaN; rows and cols must be >= 1).
template <typename T>
void column_stats(const T* x, int64_t rows, int64_t cols, int64_t ld, double* sums, T* low, T* high,
                  int num_threads);

}  // namespace pyprune
