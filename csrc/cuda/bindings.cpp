// pybind11 module lscape._cuda: the CUDA kernels.  Compiled by the host C++ compiler; it sees only the
// plain-C++ API of projection_cuda.h.  Arrays cross as raw device addresses (Python ints, 0 = null) of
// C-contiguous buffers and the stream as an int holding a cudaStream_t; the Python layer (lscape.ops)
// owns shapes, dtypes, devices and the checks on them.  Launches are asynchronous on that stream; a
// launch error is raised as RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "lscape/binding_util.h"
#include "lscape/projection_cuda.h"

namespace py = pybind11;
using lscape::proj::Spec;
using namespace lscape::bind;

namespace {

void* stream_ptr(uintptr_t a) { return reinterpret_cast<void*>(a); }

void check(const char* err, const char* what) {
  if (err) throw std::runtime_error(std::string("lscape._cuda.") + what + ": " + err);
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
    const char* err =
        f64 ? matvec_indices_cuda<double>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                          ptr<const int32_t>(indices), ptr<const double>(scales),
                                          ptr<const double>(x), ptr<double>(out), B, stream_ptr(stream))
            : matvec_indices_cuda<float>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                         ptr<const int32_t>(indices), ptr<const float>(scales),
                                         ptr<const float>(x), ptr<float>(out), B, stream_ptr(stream));
    check(err, "proj_matvec_indices");
  }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("scales"),
     py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"), py::arg("stream"), nogil);

  m.def("proj_rmatvec_indices", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr,
                                   uintptr_t indices, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t B,
                                   bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err =
        f64 ? rmatvec_indices_cuda<double>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                           ptr<const int32_t>(indices), ptr<const double>(scales),
                                           ptr<const double>(x), ptr<double>(out), B, stream_ptr(stream))
            : rmatvec_indices_cuda<float>(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr),
                                          ptr<const int32_t>(indices), ptr<const float>(scales),
                                          ptr<const float>(x), ptr<float>(out), B, stream_ptr(stream));
    check(err, "proj_rmatvec_indices");
  }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("scales"),
     py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"), py::arg("stream"), nogil);

  m.def("proj_matvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t B,
                                   bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = f64 ? matvec_implicit_cuda<double>(s, ptr<const double>(scales), ptr<const double>(x),
                                                          ptr<double>(out), B, stream_ptr(stream))
                          : matvec_implicit_cuda<float>(s, ptr<const float>(scales), ptr<const float>(x),
                                                         ptr<float>(out), B, stream_ptr(stream));
    check(err, "proj_matvec_implicit");
  }, py::arg("spec"), py::arg("scales"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"),
     py::arg("stream"), nogil);

  m.def("proj_rmatvec_implicit", [](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out,
                                    int64_t B, bool f64, uintptr_t stream) {
    const Spec s = to_spec(st);
    check_batch(B);
    const char* err = f64 ? rmatvec_implicit_cuda<double>(s, ptr<const double>(scales), ptr<const double>(x),
                                                           ptr<double>(out), B, stream_ptr(stream))
                          : rmatvec_implicit_cuda<float>(s, ptr<const float>(scales), ptr<const float>(x),
                                                          ptr<float>(out), B, stream_ptr(stream));
    check(err, "proj_rmatvec_implicit");
  }, py::arg("spec"), py::arg("scales"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"),
     py::arg("stream"), nogil);
}
