// The only file that knows pybind11: converts arrays to pointers, checks them, releases the GIL and calls the
// kernels in csrc/cpu. Arrays cross without copies (buffer protocol); torch tensors arrive as NumPy views.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "cpu/gram_hsic.h"
#include "cpu/rbf_gram.h"

namespace py = pybind11;

namespace {

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
    const bool is_f32 = py::isinstance<py::array_t<float>>(g) && g.dtype().is(py::dtype::of<float>());
    const bool is_f64 = g.dtype().is(py::dtype::of<double>());
    if (!is_f32 && !is_f64) throw py::type_error(where + ": expected float32 or float64, got " + std::string(py::str(g.dtype())));
    if (g.ndim() != 2 || g.shape(0) != g.shape(1))
      throw py::value_error(where + ": expected a square 2-D matrix, got shape " + std::string(py::str(py::cast(std::vector<py::ssize_t>(g.shape(), g.shape() + g.ndim())))));
    if (g.shape(1) > 1 && g.strides(1) != g.itemsize())
      throw py::value_error(where + ": rows must be contiguous (column stride == itemsize)");
    if (g.strides(0) % g.itemsize() != 0 || g.strides(0) < g.shape(1) * g.itemsize())
      throw py::value_error(where + ": unsupported row stride " + std::to_string(g.strides(0)));
    if (out.n == -1) out.n = g.shape(0);
    if (g.shape(0) != out.n)
      throw py::value_error(where + ": expected " + std::to_string(out.n) + " x " + std::to_string(out.n) + ", got " +
                            std::to_string(g.shape(0)) + " x " + std::to_string(g.shape(0)));
    if (expected_double == -1) expected_double = is_f64;
    if (is_f64 != static_cast<bool>(expected_double))
      throw py::type_error(where + ": all Gram matrices must share one dtype");
    out.data.push_back(g.data());
    out.ld.push_back(g.strides(0) / g.itemsize());
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
  const GramList a = check_grams(grams_a, "grams_a");
  const bool same = !grams_b.has_value();
  GramList b = same ? GramList{} : check_grams(*grams_b, "grams_b", a.n, a.is_double);
  const int64_t n = a.n, la = a.data.size(), lb = same ? la : b.data.size();
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
  const GramList g = check_grams({gram}, "gram");
  if (!gram.writeable()) throw py::value_error("gram: must be writeable (the kernel works in place)");
  double median;
  py::gil_scoped_release release;
  if (g.is_double)
    median = pyprune::rbf_from_linear_gram(static_cast<double*>(gram.mutable_data()), g.n, g.ld[0], threshold, num_threads);
  else
    median = pyprune::rbf_from_linear_gram(static_cast<float*>(gram.mutable_data()), g.n, g.ld[0], threshold, num_threads);
  return median;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyprune's CPU kernels (framework-agnostic, float64 accumulation, std::thread parallelism)";
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
}
