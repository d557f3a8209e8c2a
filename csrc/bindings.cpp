// The only file that knows pybind11: converts arrays to pointers, checks them, releases the GIL and calls the
// kernels in csrc/cpu. Arrays cross without copies (buffer protocol); torch tensors arrive as NumPy views.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cka_damage.h"
#include "cpu/column_stats.h"
#include "cpu/gram_hsic.h"
#include "cpu/nm_select.h"
#include "cpu/permutation_hsic.h"
#include "cpu/rbf_gram.h"
#include "cpu/sensitivity.h"

namespace py = pybind11;

namespace {

// ---- Checks shared by every binding: they protect memory, so they are repeated here even where the Python
// layer already validated. Dtypes are compared by value (kind, size, byte order), never by identity, so an
// equal dtype carrying metadata is accepted; size arithmetic is overflow-checked before anything is indexed.

bool native_order(const py::dtype& dt) { return dt.byteorder() != '>'; }

// True when a's dtype is a native-order IEEE float of itemsize bytes.
bool is_float(const py::array& a, py::ssize_t itemsize) {
  const py::dtype dt = a.dtype();
  return dt.kind() == 'f' && dt.itemsize() == itemsize && native_order(dt);
}

[[noreturn]] void overflow(const std::string& what) {
  throw py::value_error(what + ": size arithmetic overflows 64-bit integers; the sizes are not plausible");
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t out;
  if (__builtin_mul_overflow(a, b, &out)) overflow(what);
  return out;
}

int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) overflow(what);
  return out;
}

// Every kernel starts min(num_threads, blocks) std::threads: an absurd count would fail half-way through
// starting them, and a failed std::thread constructor with running siblings terminates the process.
constexpr int kMaxThreads = 1024;

void check_num_threads(int num_threads) {
  if (num_threads < 1 || num_threads > kMaxThreads)
    throw py::value_error("num_threads: expected 1 to " + std::to_string(kMaxThreads) + ", got " +
                          std::to_string(num_threads));
}

// The kernels index with ptr + i * stride in elements: the data must be aligned to its element size.
void expect_aligned(const py::array& a, const std::string& name) {
  if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(a.itemsize()) != 0)
    throw py::value_error(name + ": data is not aligned to its element size");
}

// Python's str(tuple(shape)): "(3, 4)", "(3,)", "()".
std::string shape_string(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) out += (d ? ", " : "") + std::to_string(a.shape(d));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

// The leading dimension (in elements) of a 2-D array whose rows are contiguous; the kernels index it as
// ptr + r * ld + c, so a column stride other than the itemsize, a negative or overlapping row stride or one that
// is not a whole number of elements is refused.
int64_t row_stride(const py::array& a, const std::string& name) {
  const int64_t rows = a.shape(0), cols = a.shape(1), itemsize = a.itemsize();
  if (cols > 1 && a.strides(1) != itemsize)
    throw py::value_error(name + ": rows must be contiguous (column stride == itemsize)");
  if (rows > 1 &&
      (a.strides(0) % itemsize != 0 || a.strides(0) < checked_mul(cols, itemsize, name + " row length")))
    throw py::value_error(name + ": unsupported row stride " + std::to_string(a.strides(0)));
  expect_aligned(a, name);
  return rows > 1 ? a.strides(0) / itemsize : cols;
}

// A list of square, row-contiguous matrices of one floating dtype, as pointers and leading dimensions.
struct GramList {
  std::vector<const void*> data;
  std::vector<int64_t> ld;
  int64_t n = -1;
  bool is_double = false;
};

GramList check_grams(const std::vector<py::array>& grams, const char* name, int64_t expected_n = -1,
                     int expected_double = -1) {
  if (grams.empty()) throw py::value_error(std::string(name) + ": expected at least one Gram matrix, got none");
  GramList out;
  out.n = expected_n;
  for (size_t i = 0; i < grams.size(); ++i) {
    const py::array& g = grams[i];
    const std::string where = std::string(name) + "[" + std::to_string(i) + "]";
    const bool is_f32 = is_float(g, 4);
    const bool is_f64 = is_float(g, 8);
    if (!is_f32 && !is_f64) throw py::type_error(where + ": expected float32 or float64, got " + std::string(py::str(g.dtype())));
    if (g.ndim() != 2 || g.shape(0) != g.shape(1))
      throw py::value_error(where + ": expected a square 2-D matrix, got shape " + shape_string(g));
    const int64_t ld = row_stride(g, where);
    if (out.n == -1) out.n = g.shape(0);
    if (g.shape(0) != out.n)
      throw py::value_error(where + ": expected " + std::to_string(out.n) + " x " + std::to_string(out.n) + ", got " +
                            std::to_string(g.shape(0)) + " x " + std::to_string(g.shape(0)));
    if (expected_double == -1) expected_double = is_f64;
    if (is_f64 != static_cast<bool>(expected_double))
      throw py::type_error(where + ": all Gram matrices must share one dtype");
    out.data.push_back(g.data());
    out.ld.push_back(ld);
  }
  out.is_double = expected_double;
  return out;
}

template <typename T>
std::vector<const T*> typed(const GramList& list) {
  std::vector<const T*> out;
  for (const void* p : list.data) out.push_back(static_cast<const T*>(p));
  return out;
}

py::dict gram_hsic_terms(const std::vector<py::array>& grams_a, const std::optional<std::vector<py::array>>& grams_b,
                         int num_threads) {
  check_num_threads(num_threads);
  const GramList a = check_grams(grams_a, "grams_a");
  const bool same = !grams_b.has_value();
  GramList b = same ? GramList{} : check_grams(*grams_b, "grams_b", a.n, a.is_double);
  const int64_t n = a.n, la = a.data.size(), lb = same ? la : b.data.size();
  // Outputs and per-thread partials: La * Lb and (La + Lb) * n doubles per worker.
  checked_mul(checked_mul(la, lb, "grams_a x grams_b"), checked_mul(num_threads, 8, "num_threads"), "cross");
  checked_mul(checked_mul(la + lb, n, "row sums"), checked_mul(num_threads, 8, "num_threads"), "row sums");
  py::array_t<double> cross({la, lb}), self_a(la), self_b(lb), rows_a({la, n}), diag_a({la, n}), rows_b({lb, n}),
      diag_b({lb, n});
  double *p_cross = cross.mutable_data(), *p_sa = self_a.mutable_data(), *p_sb = self_b.mutable_data(),
         *p_ra = rows_a.mutable_data(), *p_da = diag_a.mutable_data(), *p_rb = rows_b.mutable_data(),
         *p_db = diag_b.mutable_data();
  {
    py::gil_scoped_release release;
    if (a.is_double) {
      auto pa = typed<double>(a), pb = typed<double>(b);
      pyprune::gram_hsic_terms<double>(pa.data(), a.ld.data(), la, same ? nullptr : pb.data(), b.ld.data(), lb, n,
                                       num_threads, p_cross, p_sa, p_sb, p_ra, p_da, p_rb, p_db);
    } else {
      auto pa = typed<float>(a), pb = typed<float>(b);
      pyprune::gram_hsic_terms<float>(pa.data(), a.ld.data(), la, same ? nullptr : pb.data(), b.ld.data(), lb, n,
                                      num_threads, p_cross, p_sa, p_sb, p_ra, p_da, p_rb, p_db);
    }
  }
  py::dict out;
  out["cross"] = cross;
  out["self_a"] = self_a;
  out["row_sums_a"] = rows_a;
  out["diag_a"] = diag_a;
  if (same) {
    out["self_b"] = self_a;
    out["row_sums_b"] = rows_a;
    out["diag_b"] = diag_a;
  } else {
    out["self_b"] = self_b;
    out["row_sums_b"] = rows_b;
    out["diag_b"] = diag_b;
  }
  return out;
}

double rbf_from_linear_gram(py::array gram, double threshold, int num_threads) {
  check_num_threads(num_threads);
  const GramList g = check_grams({gram}, "gram");
  if (!gram.writeable()) throw py::value_error("gram: must be writeable (the kernel works in place)");
  checked_mul(g.n, g.n, "gram: n * n");
  double median;
  py::gil_scoped_release release;
  if (g.is_double)
    median = pyprune::rbf_from_linear_gram(static_cast<double*>(gram.mutable_data()), g.n, g.ld[0], threshold, num_threads);
  else
    median = pyprune::rbf_from_linear_gram(static_cast<float*>(gram.mutable_data()), g.n, g.ld[0], threshold, num_threads);
  return median;
}


// ---- CKA-damage kernels: float64 only. The messages are those of the shared checks in pyprune/ops/checks.py
// (check_greedy_arguments, check_rbf_scan_arguments), so every backend rejects an input with the same words.

void expect_dtype(const py::array& a, const std::string& name, const char* want) {
  const py::dtype dt = a.dtype();
  const std::string w(want);
  bool ok;
  if (w == "float64")
    ok = dt.kind() == 'f' && dt.itemsize() == 8 && native_order(dt);
  else if (w == "int64")
    ok = dt.kind() == 'i' && dt.itemsize() == 8 && native_order(dt);
  else
    ok = dt.kind() == 'b';
  if (!ok) throw py::type_error(name + ": expected " + w + ", got " + std::string(py::str(dt)));
}

void expect_contiguous(const py::array& a, const std::string& name) {
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + ": must be contiguous");
  expect_aligned(a, name);
}

void expect_shape(const py::array& a, const std::string& name, const std::vector<py::ssize_t>& shape,
                  const std::string& wanted) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || a.shape(d) == shape[d];
  if (!ok) throw py::value_error(name + ": expected " + wanted + ", got shape " + shape_string(a));
}

std::string dim(py::ssize_t v) { return std::to_string(v); }

py::tuple greedy_removal_order(py::array interaction, std::optional<py::array> active, int num_threads) {
  check_num_threads(num_threads);
  expect_dtype(interaction, "interaction", "float64");
  if (interaction.ndim() != 2 || interaction.shape(0) != interaction.shape(1))
    throw py::value_error("interaction: expected a square 2-D matrix, got shape " + shape_string(interaction));
  expect_contiguous(interaction, "interaction");
  const py::ssize_t p = interaction.shape(0);
  const uint8_t* active_ptr = nullptr;
  if (active.has_value()) {
    expect_dtype(*active, "active", "bool");
    expect_shape(*active, "active", {p}, "shape (" + dim(p) + ",)");
    expect_contiguous(*active, "active");
    active_ptr = static_cast<const uint8_t*>(active->data());
  }
  const int64_t steps = pyprune::count_active(active_ptr, p);
  py::array_t<int64_t> order(steps);
  py::array_t<double> cka_after(steps);
  int64_t* p_order = order.mutable_data();
  double* p_cka = cka_after.mutable_data();
  const double* m = static_cast<const double*>(interaction.data());
  {
    py::gil_scoped_release release;
    pyprune::greedy_removal_order(m, p, active_ptr, num_threads, p_order, p_cka);
  }
  return py::make_tuple(order, cka_after);
}

py::dict rbf_candidate_scan(py::array distances_kept, py::array values, py::array candidates,
                            py::array inv_two_sigma_sq, py::array target, int num_threads) {
  check_num_threads(num_threads);
  expect_dtype(distances_kept, "distances_kept", "float64");
  if (distances_kept.ndim() != 2 || distances_kept.shape(0) != distances_kept.shape(1))
    throw py::value_error("distances_kept: expected a square 2-D matrix, got shape " + shape_string(distances_kept));
  expect_contiguous(distances_kept, "distances_kept");
  const py::ssize_t n = distances_kept.shape(0);
  expect_dtype(values, "values", "float64");
  expect_shape(values, "values", {-1, n, -1}, "shape (p, " + dim(n) + ", T)");
  expect_contiguous(values, "values");
  expect_dtype(candidates, "candidates", "int64");
  if (candidates.ndim() != 1)
    throw py::value_error("candidates: expected a 1-D tensor, got shape " + shape_string(candidates));
  expect_contiguous(candidates, "candidates");
  const py::ssize_t m = candidates.shape(0);
  expect_dtype(inv_two_sigma_sq, "inv_two_sigma_sq", "float64");
  expect_shape(inv_two_sigma_sq, "inv_two_sigma_sq", {m}, "shape (" + dim(m) + ",)");
  expect_contiguous(inv_two_sigma_sq, "inv_two_sigma_sq");
  expect_dtype(target, "target", "float64");
  expect_shape(target, "target", {n, n}, "shape (" + dim(n) + ", " + dim(n) + ")");
  expect_contiguous(target, "target");

  const py::ssize_t p = values.shape(0), t = values.shape(2);
  py::array_t<double> cross(m), self_sq(m), row_sq(m), total(m);
  double *p_cross = cross.mutable_data(), *p_self = self_sq.mutable_data(), *p_row = row_sq.mutable_data(),
         *p_total = total.mutable_data();
  const double* d = static_cast<const double*>(distances_kept.data());
  const double* v = static_cast<const double*>(values.data());
  const int64_t* c = static_cast<const int64_t*>(candidates.data());
  const double* inv = static_cast<const double*>(inv_two_sigma_sq.data());
  const double* tg = static_cast<const double*>(target.data());
  {
    py::gil_scoped_release release;  // a bad candidate throws std::invalid_argument, which becomes ValueError
    pyprune::rbf_candidate_scan(d, v, p, n, t, c, m, inv, tg, num_threads, p_cross, p_self, p_row, p_total);
  }
  py::dict out;
  out["cross"] = cross;
  out["self_sq"] = self_sq;
  out["row_sq"] = row_sq;
  out["total"] = total;
  return out;
}

// ---- Sensitivity (SiPP/PFP): float32 or float64. The messages and their order are those of
// pyprune.ops.checks.check_kernel_arguments, so every backend rejects an input with the same words.

// Python's str(tuple(values)).
std::string tuple_string(const std::vector<int64_t>& values) {
  std::string out = "(";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + (values.size() == 1 ? ",)" : ")");
}

void expect_like_weight(const py::array& a, const std::string& name, const py::array& weight) {
  if (!is_float(a, weight.itemsize()))
    throw py::type_error(name + ": expected " + std::string(py::str(weight.dtype())) + " (the dtype of weight), got " +
                         std::string(py::str(a.dtype())));
}

// Whether every entry is finite, and whether one is negative.
template <typename T>
std::pair<bool, bool> scan_values(const py::array& a) {
  const T* v = static_cast<const T*>(a.data());
  bool finite = true, negative = false;
  for (py::ssize_t i = 0, n = a.size(); i < n; ++i) {
    finite &= std::isfinite(v[i]);
    negative |= v[i] < 0;
  }
  return {finite, negative};
}

// The value rules of sensitivity_update, one pass over weight and inputs of one float dtype, run without the GIL
// (the exceptions thrown here are translated once the GIL is back).
void scan_sensitivity_values(const py::array& weight, const py::array& inputs) {
  const bool is_double = weight.itemsize() == 8;
  py::gil_scoped_release release;
  if (!(is_double ? scan_values<double>(weight) : scan_values<float>(weight)).first)
    throw py::value_error("weight: contains NaN or inf");
  const auto [finite, negative] = is_double ? scan_values<double>(inputs) : scan_values<float>(inputs);
  if (!finite) throw py::value_error("inputs: contains NaN or inf");
  if (negative)
    throw py::value_error(
        "inputs: has negative entries; relative contributions need inputs >= 0 (split a signed batch first with "
        "the batch-doubling rule, torch.cat([x.clamp_min(0), (-x).clamp_min(0)]), as SensitivityTracker does)");
}

void check_sensitivity_values(const py::array& weight, const py::array& inputs) {
  if (!is_float(weight, 4) && !is_float(weight, 8))
    throw py::type_error("weight: expected float32 or float64, got " + std::string(py::str(weight.dtype())));
  expect_contiguous(weight, "weight");
  expect_like_weight(inputs, "inputs", weight);
  expect_contiguous(inputs, "inputs");
  scan_sensitivity_values(weight, inputs);
}

void sensitivity_update(py::array weight, py::array inputs, py::array z, py::array s_mean, py::array s_max,
                        const std::vector<int64_t>& kernel_size, const std::vector<int64_t>& stride,
                        const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int num_threads,
                        bool check_values, bool relative_threshold) {
  if (!is_float(weight, 4) && !is_float(weight, 8))
    throw py::type_error("weight: expected float32 or float64, got " + std::string(py::str(weight.dtype())));
  if (weight.ndim() != 2)
    throw py::value_error("weight: expected a 2-D (F, J) matrix, got shape " + shape_string(weight));
  expect_contiguous(weight, "weight");
  const int64_t filters = weight.shape(0), columns = weight.shape(1);

  const std::string described = "kernel_size=" + tuple_string(kernel_size) + ", stride=" + tuple_string(stride) +
                                ", padding=" + tuple_string(padding) + ", dilation=" + tuple_string(dilation);
  const size_t rank = kernel_size.size();
  if ((rank != 0 && rank != 2) || stride.size() != rank || padding.size() != rank || dilation.size() != rank)
    throw py::value_error(
        "geometry: expected kernel_size, stride, padding and dilation as (h, w) pairs (all four empty for a Linear "
        "layer), got " + described);
  const bool linear = rank == 0;
  pyprune::Window window;
  if (!linear) {
    window = pyprune::Window{kernel_size[0], kernel_size[1], stride[0], stride[1],
                             padding[0],     padding[1],     dilation[0], dilation[1]};
    if (std::min(kernel_size[0], kernel_size[1]) < 1 || std::min(stride[0], stride[1]) < 1 ||
        std::min(padding[0], padding[1]) < 0 || std::min(dilation[0], dilation[1]) < 1)
      throw py::value_error(
          "geometry: expected kernel_size >= 1, stride >= 1, padding >= 0 and dilation >= 1, got " + described);
  }
  const int64_t taps = linear ? 1 : checked_mul(kernel_size[0], kernel_size[1], "kernel_size: kh * kw");
  if (columns % taps != 0)
    throw py::value_error("weight: expected J = C_in * " + dim(kernel_size[0]) + " * " + dim(kernel_size[1]) +
                          " columns, got " + dim(columns));

  expect_like_weight(inputs, "inputs", weight);
  if (linear)
    expect_shape(inputs, "inputs", {-1, columns}, "shape (batch, " + dim(columns) + ")");
  else
    expect_shape(inputs, "inputs", {-1, columns / taps, -1, -1}, "shape (batch, " + dim(columns / taps) + ", H, W)");
  expect_contiguous(inputs, "inputs");
  const int64_t batch = inputs.shape(0);
  const int64_t height = linear ? 1 : inputs.shape(2), width = linear ? 1 : inputs.shape(3);
  int64_t positions = 1;
  if (!linear) {
    // The kernel's index arithmetic stays below size + 2 pad + dilation (kernel - 1): check that it fits first.
    for (const auto& [size, k, p, d] : {std::tuple{height, window.kernel_h, window.pad_h, window.dilation_h},
                                        std::tuple{width, window.kernel_w, window.pad_w, window.dilation_w}})
      checked_add(checked_add(size, checked_mul(2, p, "padding"), "size + 2 padding"),
                  checked_mul(d, k - 1, "dilation * (kernel_size - 1)"), "window span for " + described);
    const int64_t out_h = pyprune::window_positions(height, window.kernel_h, window.stride_h, window.pad_h,
                                                    window.dilation_h);
    const int64_t out_w = pyprune::window_positions(width, window.kernel_w, window.stride_w, window.pad_w,
                                                    window.dilation_w);
    if (out_h < 1 || out_w < 1)
      throw py::value_error("inputs: a " + dim(height) + " x " + dim(width) +
                            " input leaves no output position for " + described);
    positions = checked_mul(out_h, out_w, "output positions for " + described);
  }

  expect_like_weight(z, "z", weight);
  expect_shape(z, "z", {batch, 2, filters, positions},
               "shape (batch, 2, F, P) = " + tuple_string({batch, 2, filters, positions}));
  expect_contiguous(z, "z");
  for (const auto& [s, name] : {std::pair{&s_mean, "s_mean"}, std::pair{&s_max, "s_max"}}) {
    expect_like_weight(*s, name, weight);
    expect_shape(*s, name, {filters, columns}, "shape " + tuple_string({filters, columns}));
    expect_contiguous(*s, name);
    if (!s->writeable()) throw py::value_error(std::string(name) + ": must be writeable (updated in place)");
  }

  check_num_threads(num_threads);
  // pyprune.ops.sensitivity scans a whole batch once with check_sensitivity_values and then passes
  // check_values=false for each block of it, so no block is read twice.
  if (check_values) scan_sensitivity_values(weight, inputs);
  const bool is_double = weight.itemsize() == 8;
  py::gil_scoped_release release;
  if (is_double)
    pyprune::sensitivity_update<double>(
        static_cast<const double*>(weight.data()), filters, columns, static_cast<const double*>(inputs.data()), batch,
        height, width, window, static_cast<const double*>(z.data()), static_cast<double*>(s_mean.mutable_data()),
        static_cast<double*>(s_max.mutable_data()), num_threads, relative_threshold);
  else
    pyprune::sensitivity_update<float>(
        static_cast<const float*>(weight.data()), filters, columns, static_cast<const float*>(inputs.data()), batch,
        height, width, window, static_cast<const float*>(z.data()), static_cast<float*>(s_mean.mutable_data()),
        static_cast<float*>(s_max.mutable_data()), num_threads, relative_threshold);
}

py::tuple column_stats(const py::array& x, int num_threads) {
  const bool is_double = is_float(x, 8);
  if (!is_double && !is_float(x, 4))
    throw py::type_error("x: expected float32 or float64, got " + std::string(py::str(x.dtype())));
  if (x.ndim() != 2 || x.shape(0) < 1 || x.shape(1) < 1)
    throw py::value_error("x: expected a non-empty 2-D (rows, cols) matrix, got shape " + shape_string(x));
  check_num_threads(num_threads);
  const int64_t rows = x.shape(0), cols = x.shape(1), ld = row_stride(x, "x");
  py::array_t<double> sums(cols);
  double* out = sums.mutable_data();
  double low, high;
  {
    py::gil_scoped_release release;
    if (is_double) {
      pyprune::column_stats<double>(static_cast<const double*>(x.data()), rows, cols, ld, out, &low, &high,
                                    num_threads);
    } else {
      float lo, hi;
      pyprune::column_stats<float>(static_cast<const float*>(x.data()), rows, cols, ld, out, &lo, &hi, num_threads);
      low = lo;
      high = hi;
    }
  }
  return py::make_tuple(sums, low, high);
}

py::array_t<uint8_t> nm_select(const py::array& weight, const std::optional<py::array>& norms, int64_t k, int64_t n,
                               int64_t m, int num_threads) {
  const bool is_f64 = is_float(weight, 8);
  if (!is_float(weight, 4) && !is_f64)
    throw py::type_error("weight: expected float32 or float64, got " + std::string(py::str(weight.dtype())));
  if (weight.ndim() != 2) throw py::value_error("weight: expected a 2-D (rows, cols) matrix");
  const int64_t rows = weight.shape(0), cols = weight.shape(1);
  const int64_t ld = row_stride(weight, "weight");
  const double* norm_data = nullptr;
  if (norms.has_value()) {
    const py::array& x = *norms;
    if (!is_float(x, 8)) throw py::type_error("norms: expected float64, got " + std::string(py::str(x.dtype())));
    if (x.ndim() != 1 || x.shape(0) != cols)
      throw py::value_error("norms: expected shape (" + std::to_string(cols) + ",) (one per weight column)");
    if (cols > 1 && x.strides(0) != x.itemsize()) throw py::value_error("norms: must be contiguous");
    expect_aligned(x, "norms");
    norm_data = static_cast<const double*>(x.data());
  }
  if (m == 0 && (k < 0 || k > cols))
    throw py::value_error("k: expected 0 <= k <= " + std::to_string(cols) + " (the number of columns), got " +
                          std::to_string(k));
  if (m != 0 && !(0 < n && n < m))
    throw py::value_error("n_m: expected 0 < n < m (keep n of every m weights), got (" + std::to_string(n) + ", " +
                          std::to_string(m) + ")");
  if (m != 0 && cols % m != 0)
    throw py::value_error("n_m: " + std::to_string(cols) + " columns do not split into groups of m=" +
                          std::to_string(m));
  check_num_threads(num_threads);
  py::array_t<uint8_t> removed({rows, cols});
  uint8_t* out = removed.mutable_data();
  {
    py::gil_scoped_release release;
    if (is_f64)
      pyprune::nm_select<double>(static_cast<const double*>(weight.data()), rows, cols, ld, norm_data, k, n, m, out,
                                 num_threads);
    else
      pyprune::nm_select<float>(static_cast<const float*>(weight.data()), rows, cols, ld, norm_data, k, n, m, out,
                                num_threads);
  }
  return removed;
}

// ---- Permutation test of CKA. The full checks (one dtype, symmetric roles, every row a permutation) are
// pyprune.ops.checks.check_permutation_arguments; here only what protects memory is re-checked.
py::array_t<double> permutation_hsic(const py::array& a, const py::array& b, const py::array& permutations,
                                     int num_threads) {
  check_num_threads(num_threads);
  const GramList ga = check_grams({a}, "a");
  const GramList gb = check_grams({b}, "b", ga.n, ga.is_double);
  const py::dtype dt = permutations.dtype();
  if (dt.kind() != 'i' || dt.itemsize() != 8 || !native_order(dt))
    throw py::type_error("permutations: expected int64, got " + std::string(py::str(dt)));
  if (permutations.ndim() != 2 || permutations.shape(1) != ga.n)
    throw py::value_error("permutations: expected shape (S, " + std::to_string(ga.n) + "), got " +
                          shape_string(permutations));
  expect_contiguous(permutations, "permutations");
  const int64_t n = ga.n, num_perms = permutations.shape(0);
  const auto* perms = static_cast<const int64_t*>(permutations.data());
  py::array_t<double> out(num_perms);
  double* p_out = out.mutable_data();
  py::gil_scoped_release release;
  // Out-of-range entries would index outside b: scanned here, without the GIL, though the Python checker has
  // already required each row to be a permutation.
  for (int64_t k = 0, size = checked_mul(num_perms, n, "permutations: S * n"); k < size; ++k)
    if (perms[k] < 0 || perms[k] >= n)
      throw py::value_error("permutations: entries must lie in [0, " + std::to_string(n) + "), got " +
                            std::to_string(perms[k]));
  if (ga.is_double)
    pyprune::permutation_hsic(static_cast<const double*>(ga.data[0]), ga.ld[0], static_cast<const double*>(gb.data[0]),
                              gb.ld[0], n, perms, num_perms, num_threads, p_out);
  else
    pyprune::permutation_hsic(static_cast<const float*>(ga.data[0]), ga.ld[0], static_cast<const float*>(gb.data[0]),
                              gb.ld[0], n, perms, num_perms, num_threads, p_out);
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "pyprune's CPU kernels (framework-agnostic, std::thread parallelism; float64 accumulation except "
      "sensitivity_update, which accumulates in the inputs' dtype)";
  m.attr("__version__") = PYPRUNE_VERSION;
  m.def("gram_hsic_terms", &gram_hsic_terms, py::arg("grams_a"), py::arg("grams_b") = py::none(),
        py::arg("num_threads") = 1,
        R"doc(Fused HSIC statistics of symmetric Gram matrices, read from their lower triangles.

grams_a: list of La arrays (n, n), float32 or float64, rows contiguous; grams_b: list of Lb such arrays or None
(then B is A). Returns a dict of float64 arrays: cross (La, Lb) = <A_i, B_j>_F, self_a (La,), self_b (Lb,),
row_sums_a (La, n), diag_a (La, n), row_sums_b (Lb, n), diag_b (Lb, n).)doc");
  m.def("rbf_from_linear_gram", &rbf_from_linear_gram, py::arg("gram"), py::arg("threshold"),
        py::arg("num_threads") = 1,
        R"doc(In place: the lower triangle of a linear Gram matrix (n, n) becomes the RBF kernel with bandwidth
threshold * sqrt(median squared distance). Returns the median squared distance.)doc");
  m.def("greedy_removal_order", &greedy_removal_order, py::arg("interaction"), py::arg("active") = py::none(),
        py::arg("num_threads") = 1,
        R"doc(Greedy CKA-damage removal order (see pyprune.ops.reference.greedy_removal_order_reference).

interaction: (p, p) float64, symmetric, contiguous; active: (p,) bool or None (all active). Returns (order int64
(n_active,), cka_after float64 (n_active,)).)doc");
  m.def("rbf_candidate_scan", &rbf_candidate_scan, py::arg("distances_kept"), py::arg("values"),
        py::arg("candidates"), py::arg("inv_two_sigma_sq"), py::arg("target"), py::arg("num_threads") = 1,
        R"doc(RBF HSIC sums of a layer with each candidate neuron removed (see
pyprune.ops.reference.rbf_candidate_scan_reference).

distances_kept (n, n), values (p, n, T), candidates int64 (m,), inv_two_sigma_sq (m,), target (n, n); all float64
except candidates, all contiguous; distances_kept and target symmetric (only their lower triangles are read).
Returns a dict of float64 arrays (m,): cross, self_sq, row_sq, total.)doc");
  m.def("sensitivity_update", &sensitivity_update, py::arg("weight"), py::arg("inputs"), py::arg("z"),
        py::arg("s_mean"), py::arg("s_max"), py::arg("kernel_size") = std::vector<int64_t>{},
        py::arg("stride") = std::vector<int64_t>{}, py::arg("padding") = std::vector<int64_t>{},
        py::arg("dilation") = std::vector<int64_t>{}, py::arg("num_threads") = 1, py::arg("check_values") = true,
        py::arg("relative_threshold") = false,
        R"doc(Fold one batch into the running sensitivity maxima s_mean and s_max, in place (see
pyprune.ops.sensitivity.sensitivity_update_reference).

weight (F, J) float32 or float64; inputs (batch, J / (kh kw), H, W) for a conv or (batch, J) for a Linear
(kernel_size, stride, padding, dilation all empty), finite and >= 0; z (batch, 2, F, P): z[:, 0] = W+ A and
z[:, 1] = W- A; s_mean, s_max (F, J). One dtype, all contiguous. check_values=False skips the finite and
non-negative scan of weight and inputs (for a caller that ran check_sensitivity_values on the whole batch).
relative_threshold=True computes as if each example's inputs and z were first divided by its power of two
2^floor(log2 max |z(x)|) (1 where z(x) is 0): the threshold becomes relative and no other bit changes
(pyprune.ops.sensitivity.denominator_scale); no copy is made for it. Arithmetic is in that dtype: a float32 sum
over the P positions is two-level (chunks of about 64 positions, then the chunk sums), within about 5e-7 relative
of a float64 sum of the same float32 data (benchmarks/bench_sensitivity.py measures it).)doc");
  m.def("check_sensitivity_values", &check_sensitivity_values, py::arg("weight"), py::arg("inputs"),
        R"doc(The value rules of sensitivity_update in one pass without the GIL: weight finite, inputs finite and >= 0
(weight float32 or float64, inputs of its dtype, both contiguous). Raises ValueError naming the argument.)doc");
  m.def("column_stats", &column_stats, py::arg("x"), py::arg("num_threads") = 1,
        R"doc(One pass over x (rows, cols) float32 or float64 (rows contiguous, at least one row and column): returns
(sums, low, high), the float64 column sums (cols,) and the smallest and largest non-NaN entries as floats. Each
column is summed in the same order whatever num_threads is (4 rows at a time, s += (x0 + x1) + (x2 + x3), then the
last rows one by one); a NaN skips the extremes and makes its column's sum NaN.)doc");
  m.def("nm_select", &nm_select, py::arg("weight"), py::arg("norms"), py::arg("k") = 0, py::arg("n") = 0,
        py::arg("m") = 0, py::arg("num_threads") = 1,
        R"doc(Per-row lowest-k (m == 0) or N:M (keep n of every m columns) selection of |W_ij| * norms_j, ties to the
lowest column (see pyprune.ops.reference.nm_select_reference).

weight (rows, cols) float32 or float64, rows contiguous; norms (cols,) float64 or None (magnitude). Values are the
caller's to check (pyprune.ops.checks.check_nm_select_arguments: weight finite, norms finite and >= 0); a NaN score
ranks as +inf. Returns uint8 (rows, cols), 1 where removed.)doc");
  m.def("permutation_hsic", &permutation_hsic, py::arg("a"), py::arg("b"), py::arg("permutations"),
        py::arg("num_threads") = 1,
        R"doc(Inner products <A, P_s B P_s^T>_F of a symmetric matrix with permuted copies of another (see
pyprune.ops.reference.permutation_hsic_reference).

a, b (n, n) float32 or float64 (one dtype), rows contiguous, symmetric; only the lower triangle of a is read, b
is read in full. permutations (S, n) int64, contiguous, each row a permutation of 0..n-1. Returns float64 (S,).)doc");
}
