// pybind11 module lscape._C: the CPU kernels.  Arrays cross as raw addresses (Python ints) of
// C-contiguous buffers; the Python layer (lscape.ops) owns shapes, dtypes, devices and errors.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <tuple>

#include "lscape/binding_util.h"
#include "lscape/mlp.h"
#include "lscape/neb.h"
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

  m.def("mlp_loss_grad", [](int K, int N, int64_t M, int64_t P, uintptr_t params, uintptr_t x, uintptr_t y,
                            uintptr_t loss, uintptr_t grad, int nt) {
    lscape::mlp::loss_grad_cpu(mlp_spec(K, N, M, P), M, ptr<const float>(params), P, ptr<const float>(x),
                               ptr<const float>(y), ptr<float>(loss), ptr<float>(grad), nt);
  }, nogil);
  m.def("mlp_train", [](int K, int N, const OptTuple& opt, int64_t M, int64_t P, uintptr_t params,
                        uintptr_t state0, uintptr_t state1, uintptr_t diverged, uintptr_t x, uintptr_t y,
                        int64_t step0, int64_t steps, int64_t record_every, uintptr_t history, int nt) {
    const lscape::mlp::Spec s = mlp_spec(K, N, M, P);
    const lscape::mlp::OptConfig o = to_opt(opt);
    if (steps < 0) throw std::invalid_argument("mlp: steps must be >= 0");
    if (record_every < 1) throw std::invalid_argument("mlp: record_every must be >= 1");
    lscape::mlp::train_cpu(s, o, M, ptr<float>(params), ptr<float>(state0), ptr<float>(state1),
                           ptr<uint8_t>(diverged), P, ptr<const float>(x), ptr<const float>(y), step0, steps,
                           record_every, ptr<float>(history), nt);
  }, nogil);

  m.def("neb_work_size", [](int64_t B, int64_t n, int64_t D) {
    neb_sizes(B, n, D);
    return lscape::neb::work_size_cpu(B, n, D);
  }, "Doubles of scratch neb_step needs for B bands of n images of dimension D");
  m.def("neb_step", [](const NebTuple& cfg, int64_t B, int64_t n, int64_t D, uintptr_t x, uintptr_t e,
                       uintptr_t g, uintptr_t v, uintptr_t x_out, uintptr_t dt, uintptr_t a, uintptr_t nsteps,
                       uintptr_t status, uintptr_t fmax, uintptr_t imax, uintptr_t work, bool f64, int nt) {
    const lscape::neb::Config c = to_neb(cfg);
    neb_sizes(B, n, D);
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      lscape::neb::step_cpu<T>(c, B, n, D, ptr<const T>(x), ptr<const T>(e), ptr<const T>(g), ptr<T>(v),
                               ptr<T>(x_out), ptr<double>(dt), ptr<double>(a), ptr<int32_t>(nsteps),
                               ptr<uint8_t>(status), ptr<double>(fmax), ptr<int32_t>(imax), ptr<double>(work), nt);
    });
  }, nogil);
}
