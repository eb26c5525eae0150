// pybind11 module lscape._C: the CPU kernels.  Arrays cross as raw addresses (Python ints) of
// C-contiguous buffers; the Python layer (lscape.ops) owns shapes, dtypes, devices and errors.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "lscape/binding_util.h"
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

using namespace lscape::bind;

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
    check_batch(B);
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      matvec_indices_cpu<T>(to_spec(st), ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                            ptr<T>(scales), ptr<T>(x), ptr<T>(out), B, nt);
    });
  }, nogil);
  m.def("proj_rmatvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                   uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out,
                                   int64_t B, bool f64, int nt) {
    check_batch(B);
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      rmatvec_indices_cpu<T>(to_spec(st), ptr<int32_t>(seg_start), ptr<int64_t>(chunk_ptr), ptr<int32_t>(indices),
                             ptr<T>(scales), ptr<T>(x), ptr<T>(out), B, nt);
    });
  }, nogil);
  m.def("proj_matvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                   int64_t B, bool f64, int nt) {
    check_batch(B);
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      matvec_implicit_cpu<T>(to_spec(st), ptr<T>(scales), ptr<T>(x), ptr<T>(out), B, nt);
    });
  }, nogil);
  m.def("proj_rmatvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                    int64_t B, bool f64, int nt) {
    check_batch(B);
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      rmatvec_implicit_cpu<T>(to_spec(st), ptr<T>(scales), ptr<T>(x), ptr<T>(out), B, nt);
    });
  }, nogil);
}
