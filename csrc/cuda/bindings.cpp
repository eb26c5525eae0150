// pybind11 module lscape._cuda: the CUDA kernels.  Compiled by the host C++ compiler; it sees only the
// plain-C++ APIs of projection.h, mlp.h and neb.h (nvcc never parses pybind11).  Arrays cross as raw
// device addresses (Python ints, 0 = null) of C-contiguous buffers and the stream as an int holding a
// cudaStream_t.  Launches are asynchronous on that stream; a launch error is raised as RuntimeError.
// The family bindings live in csrc/bind/ (shared with lscape._C); this file says how CUDA runs them.
#include <cuda_runtime_api.h>  // plain C: the driver queries below (the static runtime is linked in)
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind/common.h"
#include "bind/mlp.h"
#include "bind/neb.h"
#include "bind/projection.h"
#include "lscape/mlp.h"
#include "lscape/neb.h"
#include "lscape/projection.h"

namespace py = pybind11;

namespace {

using lscape::proj::Spec;

void* stream_ptr(uintptr_t a) { return reinterpret_cast<void*>(a); }

// The CUDA backend of csrc/bind/: the trailing argument is the stream.
struct Cuda {
  using Tail = uintptr_t;
  static constexpr const char* kModule = "_cuda";
  static constexpr const char* kTail = "stream";
  static constexpr bool kNebDouble = false;  // neb.h: the CUDA step is float32 only
  static constexpr bool kSegmentProducts = true;  // the stored kind's products run on its segments

  static const char* count(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, uintptr_t stream) {
    return lscape::proj::count_cuda(s, seg_counts, col_counts, stream_ptr(stream));
  }
  static const char* fill(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
                          uintptr_t stream) {
    return lscape::proj::fill_cuda(s, seg_start, chunk_ptr, indices, stream_ptr(stream));
  }
  template <typename T>
  static const char* product_indices(bool transpose, const Spec& s, const int32_t* seg_start,
                                     const int64_t* chunk_ptr, const int32_t* indices, const T* scales, const T* x,
                                     T* out, int64_t B, uintptr_t stream) {
    return (transpose ? lscape::proj::rmatvec_indices_cuda<T> : lscape::proj::matvec_indices_cuda<T>)(
        s, seg_start, chunk_ptr, indices, scales, x, out, B, stream_ptr(stream));
  }
  template <typename T>
  static const char* product_implicit(bool transpose, const Spec& s, const T* scales, const T* x, T* out, int64_t B,
                                      uintptr_t stream) {
    return (transpose ? lscape::proj::rmatvec_implicit_cuda<T> : lscape::proj::matvec_implicit_cuda<T>)(
        s, scales, x, out, B, stream_ptr(stream));
  }

  static const char* loss_grad(const lscape::mlp::Spec& s, int64_t M, const float* params, int64_t P,
                               const float* x, const float* y, float* loss, float* grad, uintptr_t stream) {
    return lscape::mlp::loss_grad_cuda(s, M, params, P, x, y, loss, grad, stream_ptr(stream));
  }
  static const char* train(const lscape::mlp::Spec& s, const lscape::mlp::OptConfig& o, int64_t M, float* params,
                           float* state0, float* state1, uint8_t* diverged, int64_t P, const float* x,
                           const float* y, int64_t step0, int64_t steps, int64_t record_every, float* history,
                           uintptr_t stream) {
    return lscape::mlp::train_cuda(s, o, M, params, state0, state1, diverged, P, x, y, step0, steps, record_every,
                                   history, stream_ptr(stream));
  }

  static int64_t neb_work_size(int64_t B, int64_t n, int64_t D) { return lscape::neb::work_size_cuda(B, n, D); }
  template <typename T>  // float only (kNebDouble): bind_neb never instantiates double
  static const char* neb_step(const lscape::neb::Config& c, int64_t B, int64_t n, int64_t D, const T* x,
                              const T* e, const T* g, T* v, T* x_out, double* dt, double* a, int32_t* nsteps,
                              uint8_t* status, double* fmax, int32_t* imax, double* work, uintptr_t stream) {
    return lscape::neb::step_cuda(c, B, n, D, x, e, g, v, x_out, dt, a, nsteps, status, fmax, imax, work,
                                  stream_ptr(stream));
  }
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lscape CUDA kernels";
#ifdef LSCAPE_VERSION
  m.attr("__version__") = LSCAPE_VERSION;
#endif
  m.def("runtime_version", &lscape::proj::cuda_runtime_version,
        "CUDA runtime version the extension was built with (e.g. 13000)");
  m.def("device_count", &lscape::proj::cuda_device_count, "Number of CUDA devices visible (0 on error)");
  m.def("driver_version", [] {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) v = 0;
    return v;
  }, "CUDA version the installed driver supports (e.g. 13000; 0: no driver)");
  m.def("device_error", [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    cudaGetLastError();
    return err == cudaSuccess ? std::string() : std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }, "Why the runtime lscape._cuda was built with sees no device ('' when it sees them)");
  lscape::bind::bind_projection<Cuda>(m);
  lscape::bind::bind_mlp<Cuda>(m);
  lscape::bind::bind_neb<Cuda>(m);
}
