// pybind11 module lscape._cuda: the CUDA kernels.  Compiled by the host C++ compiler; it sees only the
// plain-C++ APIs of projection_cuda.h, mlp.h and neb.h.  Arrays cross as raw device addresses (Python ints,
// 0 = null) of C-contiguous buffers and the stream as an int holding a cudaStream_t; the Python layer
// (lscape.ops) owns shapes, dtypes, devices and the checks on them.  Launches are asynchronous on that
// stream; a launch error is raised as RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "lscape/binding_util.h"
#include "lscape/mlp.h"
#include "lscape/neb.h"
#include "lscape/projection_cuda.h"

namespace py = pybind11;
using lscape::proj::Spec;
using namespace lscape::bind;

namespace {

void* stream_ptr(uintptr_t a) { return reinterpret_cast<void*>(a); }

void check(const char* err, const char* what) {
  if (err) throw std::runtime_error(std::string("lscape._cuda.") + what + ": " + err);
}

// A null device buffer that the kernel would dereference: refused, since the fault it causes would
// poison the whole CUDA context.
void need(uintptr_t a, const char* name, const char* op = "mlp") {
  if (!a) throw std::invalid_argument(std::string(op) + ": " + name + " must not be null");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lscape CUDA kernels";
  using namespace lscape::proj;
  const auto nogil = py::call_guard<py::gil_scoped_release>();

#ifdef LSCAPE_VERSION
  m.attr("__version__") = LSCAPE_VERSION;
#endif

  m.def("runtime_version", &cuda_runtime_version, "CUDA runtime version the extension was built with (e.g. 13000)");
  m.def("device_count", &cuda_device_count, "Number of CUDA devices visible (0 on error)");

  m.def("proj_count", [](const SpecTuple& st, uintptr_t seg_counts, uintptr_t col_counts, uintptr_t stream) {
    const Spec s = to_spec(st);
    check(count_cuda(s, ptr<uint32_t>(seg_counts), ptr<int64_t>(col_counts), stream_ptr(stream)), "proj_count");
  }, py::arg("spec"), py::arg("seg_counts"), py::arg("col_counts"), py::arg("stream"), nogil);

  m.def("proj_fill", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                        uintptr_t stream) {
    const Spec s = to_spec(st);
    check(fill_cuda(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr), ptr<int32_t>(indices),
                    stream_ptr(stream)),
          "proj_fill");
  }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("stream"), nogil);

  m.def("proj_matvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                  uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t B,
                                  bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = nullptr;
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      err = matvec_indices_cuda<T>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                   ptr<const int32_t>(indices), ptr<const T>(scales), ptr<const T>(x),
                                   ptr<T>(out), B, stream_ptr(stream));
    });
    check(err, "proj_matvec_indices");
  }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("scales"),
     py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"), py::arg("stream"), nogil);

  m.def("proj_rmatvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                   uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t B,
                                   bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = nullptr;
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      err = rmatvec_indices_cuda<T>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                    ptr<const int32_t>(indices), ptr<const T>(scales), ptr<const T>(x),
                                    ptr<T>(out), B, stream_ptr(stream));
    });
    check(err, "proj_rmatvec_indices");
  }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("scales"),
     py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"), py::arg("stream"), nogil);

  m.def("proj_matvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t B,
                                   bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = nullptr;
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      err = matvec_implicit_cuda<T>(s, ptr<const T>(scales), ptr<const T>(x), ptr<T>(out), B,
                                    stream_ptr(stream));
    });
    check(err, "proj_matvec_implicit");
  }, py::arg("spec"), py::arg("scales"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"),
     py::arg("stream"), nogil);

  m.def("proj_rmatvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                    int64_t B, bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = nullptr;
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      err = rmatvec_implicit_cuda<T>(s, ptr<const T>(scales), ptr<const T>(x), ptr<T>(out), B,
                                     stream_ptr(stream));
    });
    check(err, "proj_rmatvec_implicit");
  }, py::arg("spec"), py::arg("scales"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"),
     py::arg("stream"), nogil);

  m.def("mlp_loss_grad", [](int K, int N, int64_t M, int64_t P, uintptr_t params, uintptr_t x, uintptr_t y,
                            uintptr_t loss, uintptr_t grad, uintptr_t stream) {
    const lscape::mlp::Spec s = mlp_spec(K, N, M, P);
    if (M == 0) return;
    for (auto [a, name] : {std::pair{params, "params"}, {x, "x"}, {y, "y"}, {loss, "loss"}}) need(a, name);
    check(lscape::mlp::loss_grad_cuda(s, M, ptr<const float>(params), P, ptr<const float>(x),
                                      ptr<const float>(y), ptr<float>(loss), ptr<float>(grad),
                                      stream_ptr(stream)),
          "mlp_loss_grad");
  }, py::arg("K"), py::arg("N"), py::arg("M"), py::arg("P"), py::arg("params"), py::arg("x"), py::arg("y"),
     py::arg("loss"), py::arg("grad"), py::arg("stream"), nogil);

  m.def("mlp_train", [](int K, int N, const OptTuple& opt, int64_t M, int64_t P, uintptr_t params,
                        uintptr_t state0, uintptr_t state1, uintptr_t diverged, uintptr_t x, uintptr_t y,
                        int64_t step0, int64_t steps, int64_t record_every, uintptr_t history, uintptr_t stream) {
    const lscape::mlp::Spec s = mlp_spec(K, N, M, P);
    const lscape::mlp::OptConfig o = to_opt(opt);
    if (steps < 0) throw std::invalid_argument("mlp: steps must be >= 0");
    if (record_every < 1) throw std::invalid_argument("mlp: record_every must be >= 1");
    if (step0 < 0) throw std::invalid_argument("mlp: step0 must be >= 0");
    if (M == 0 || steps == 0) return;
    for (auto [a, name] : {std::pair{params, "params"}, {state0, "state0"}, {diverged, "diverged"}, {x, "x"}, {y, "y"}})
      need(a, name);
    if (o.kind != lscape::mlp::kSgd) need(state1, "state1");
    check(lscape::mlp::train_cuda(s, o, M, ptr<float>(params), ptr<float>(state0), ptr<float>(state1),
                                  ptr<uint8_t>(diverged), P, ptr<const float>(x), ptr<const float>(y), step0,
                                  steps, record_every, ptr<float>(history), stream_ptr(stream)),
          "mlp_train");
  }, py::arg("K"), py::arg("N"), py::arg("opt"), py::arg("M"), py::arg("P"), py::arg("params"),
     py::arg("state0"), py::arg("state1"), py::arg("diverged"), py::arg("x"), py::arg("y"), py::arg("step0"),
     py::arg("steps"), py::arg("record_every"), py::arg("history"), py::arg("stream"), nogil);

  m.def("neb_work_size", [](int64_t B, int64_t n, int64_t D) {
    neb_sizes(B, n, D);
    return lscape::neb::work_size_cuda(B, n, D);
  }, "Doubles of scratch neb_step needs for B bands of n images of dimension D");
  m.def("neb_step", [](const NebTuple& cfg, int64_t B, int64_t n, int64_t D, uintptr_t x, uintptr_t e,
                       uintptr_t g, uintptr_t v, uintptr_t x_out, uintptr_t dt, uintptr_t a, uintptr_t nsteps,
                       uintptr_t status, uintptr_t fmax, uintptr_t imax, uintptr_t work, bool f64,
                       uintptr_t stream) {
    if (f64) throw std::invalid_argument("neb: the CUDA kernel takes float32; float64 runs on the reference");
    const lscape::neb::Config c = to_neb(cfg);
    neb_sizes(B, n, D);
    if (B == 0) return;
    for (auto [p, name] : {std::pair{x, "x"}, {e, "e"}, {g, "g"}, {v, "v"}, {x_out, "x_out"}, {dt, "dt"}, {a, "a"},
                           {nsteps, "nsteps"}, {status, "status"}, {fmax, "fmax"}, {imax, "imax"}, {work, "work"}})
      need(p, name, "neb");
    check(lscape::neb::step_cuda(c, B, n, D, ptr<const float>(x), ptr<const float>(e), ptr<const float>(g),
                                 ptr<float>(v), ptr<float>(x_out), ptr<double>(dt), ptr<double>(a),
                                 ptr<int32_t>(nsteps), ptr<uint8_t>(status), ptr<double>(fmax), ptr<int32_t>(imax),
                                 ptr<double>(work), stream_ptr(stream)),
          "neb_step");
  }, py::arg("cfg"), py::arg("B"), py::arg("n"), py::arg("D"), py::arg("x"), py::arg("e"), py::arg("g"),
     py::arg("v"), py::arg("x_out"), py::arg("dt"), py::arg("a"), py::arg("nsteps"), py::arg("status"),
     py::arg("fmax"), py::arg("imax"), py::arg("work"), py::arg("f64"), py::arg("stream"), nogil);
}
