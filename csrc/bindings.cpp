// pybind11 module lscape._C: the CPU kernels.  Arrays cross as raw addresses (Python ints) of
// C-contiguous buffers; the Python layer (lscape.ops) owns shapes, dtypes, devices and errors.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <tuple>

#include "lscape/projection.h"
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using lscape::proj::Spec;

namespace {

using SpecTuple = std::tuple<int64_t, int64_t, uint64_t, double, int64_t, int64_t>;

Spec to_spec(const SpecTuple& t) {
  return Spec{std::get<0>(t), std::get<1>(t), std::get<2>(t), static_cast<float>(std::get<3>(t)),
              std::get<4>(t), std::get<5>(t)};
}

template <typename T>
T* ptr(uintptr_t a) { return reinterpret_cast<T*>(a); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lscape CPU kernels";
  using namespace lscape::proj;
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("isa", &cpu_isa, "Instruction set the CPU kernels run on here");
  m.def("openmp", [] {
#ifdef LSCAPE_OPENMP
    return true;
#else
    return false;
#endif
  });
  m.def("omp_max_threads", [] {
#ifdef LSCAPE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
#ifdef LSCAPE_VERSION
  m.attr("__version__") = LSCAPE_VERSION;
#endif

  m.def("proj_count", [](const SpecTuple& s, uintptr_t seg_counts, uintptr_t col_counts, int nt) {
    count_cpu(to_spec(s), ptr<uint32_t>(seg_counts), ptr<int64_t>(col_counts), nt);
  }, nogil);
  m.def("proj_fill", [](const SpecTuple& s, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                        int nt) {
    fill_cpu(to_spec(s), ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices), nt);
  }, nogil);

  m.def("proj_matvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                  uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out,
                                  int64_t B, bool f64, int nt) {
    const Spec s = to_spec(st);
    if (f64)
      matvec_indices_cpu<double>(s, ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                                 ptr<double>(scales), ptr<double>(x), ptr<double>(out), B, nt);
    else
      matvec_indices_cpu<float>(s, ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                                ptr<float>(scales), ptr<float>(x), ptr<float>(out), B, nt);
  }, nogil);
  m.def("proj_rmatvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                   uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out,
                                   int64_t B, bool f64, int nt) {
    const Spec s = to_spec(st);
    if (f64)
      rmatvec_indices_cpu<double>(s, ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                                  ptr<double>(scales), ptr<double>(x), ptr<double>(out), B, nt);
    else
      rmatvec_indices_cpu<float>(s, ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                                 ptr<float>(scales), ptr<float>(x), ptr<float>(out), B, nt);
  }, nogil);
  m.def("proj_matvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                   int64_t B, bool f64, int nt) {
    const Spec s = to_spec(st);
    if (f64)
      matvec_implicit_cpu<double>(s, ptr<double>(scales), ptr<double>(x), ptr<double>(out), B, nt);
    else
      matvec_implicit_cpu<float>(s, ptr<float>(scales), ptr<float>(x), ptr<float>(out), B, nt);
  }, nogil);
  m.def("proj_rmatvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                    int64_t B, bool f64, int nt) {
    const Spec s = to_spec(st);
    if (f64)
      rmatvec_implicit_cpu<double>(s, ptr<double>(scales), ptr<double>(x), ptr<double>(out), B, nt);
    else
      rmatvec_implicit_cpu<float>(s, ptr<float>(scales), ptr<float>(x), ptr<float>(out), B, nt);
  }, nogil);
}
