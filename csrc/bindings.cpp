// pybind11 module lscape._C: the CPU kernels.  Arrays cross as raw addresses (Python ints, 0 = null) of
// C-contiguous buffers; the Python layer (lscape.ops) owns shapes, dtypes and devices.  The family
// bindings live in csrc/bind/ (shared with lscape._cuda); this file says how the CPU runs them.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind/common.h"
#include "bind/mlp.h"
#include "bind/neb.h"
#include "bind/projection.h"
#include "lscape/cpu_isa.h"
#include "lscape/fastfood.h"
#include "lscape/mlp.h"
#include "lscape/neb.h"
#include "lscape/projection.h"
#include "lscape/walk.h"
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

using lscape::proj::Spec;

// The CPU backend of csrc/bind/: the trailing argument is the thread count; kernels raise C++ errors
// themselves, so every function returns nullptr.
struct Cpu {
  using Tail = int;
  static constexpr const char* kModule = "_C";
  static constexpr const char* kTail = "nthreads";
  static constexpr bool kNebDouble = true;
  static constexpr bool kSegmentProducts = false;  // the stored kind's products run on SELL (bind_projection_sell)

  static const char* count(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, int nt) {
    lscape::proj::count_cpu(s, seg_counts, col_counts, nt);
    return nullptr;
  }
  static const char* fill(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
                          int nt) {
    lscape::proj::fill_cpu(s, seg_start, chunk_ptr, indices, nt);
    return nullptr;
  }
  template <typename T>
  static const char* product_implicit(bool transpose, const Spec& s, const T* scales, const T* x, T* out, int64_t B,
                                      int nt) {
    (transpose ? lscape::proj::rmatvec_implicit_cpu<T> : lscape::proj::matvec_implicit_cpu<T>)(s, scales, x, out, B,
                                                                                                nt);
    return nullptr;
  }

  static const char* sell_plan(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                               const int32_t* indices, uint16_t* perm, int32_t* widths, int nt) {
    lscape::proj::sell_plan_cpu(s, seg_start, chunk_ptr, indices, perm, widths, nt);
    return nullptr;
  }
  static const char* sell_fill(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                               const int32_t* indices, const uint16_t* perm, const int64_t* slice_ptr, void* cols,
                               int nt) {
    lscape::proj::sell_fill_cpu(s, seg_start, chunk_ptr, indices, perm, slice_ptr, cols, nt);
    return nullptr;
  }
  template <typename T>
  static const char* product_sell(bool transpose, const Spec& s, const uint16_t* perm, const int64_t* slice_ptr,
                                  const void* cols, const T* scales, const T* x, T* out, int64_t B, int nt) {
    (transpose ? lscape::proj::rmatvec_sell_cpu<T> : lscape::proj::matvec_sell_cpu<T>)(s, perm, slice_ptr, cols,
                                                                                        scales, x, out, B, nt);
    return nullptr;
  }

  static const char* bands_plan(const Spec& s, int64_t nb, int64_t window, const uint16_t* perm,
                                const int64_t* slice_ptr, const void* cols, uint16_t* bperm, int32_t* widths, int nt) {
    lscape::proj::sell_bands_plan_cpu(s, nb, window, perm, slice_ptr, cols, bperm, widths, nt);
    return nullptr;
  }
  static const char* bands_fill(const Spec& s, int64_t nb, int64_t window, const uint16_t* perm,
                                const int64_t* slice_ptr, const void* cols, const uint16_t* bperm,
                                const int64_t* band_ptr, void* bcols, int nt) {
    lscape::proj::sell_bands_fill_cpu(s, nb, window, perm, slice_ptr, cols, bperm, band_ptr, bcols, nt);
    return nullptr;
  }
  template <typename T>
  static const char* product_bands(bool transpose, const Spec& s, int64_t nb, int64_t window, const uint16_t* bperm,
                                   const uint16_t* bwidth, const int64_t* bstart, const void* bcols, const T* scales,
                                   const T* x, T* out, int nt) {
    (transpose ? lscape::proj::rmatvec_bands_cpu<T> : lscape::proj::matvec_bands_cpu<T>)(
        s, nb, window, bperm, bwidth, bstart, bcols, scales, x, out, nt);
    return nullptr;
  }

  static const char* loss_grad(const lscape::mlp::Spec& s, int64_t M, const float* params, int64_t P,
                               const float* x, const float* y, float* loss, float* grad, int nt) {
    lscape::mlp::loss_grad_cpu(s, M, params, P, x, y, loss, grad, nt);
    return nullptr;
  }
  static const char* train(const lscape::mlp::Spec& s, const lscape::mlp::OptConfig& o, int64_t M, float* params,
                           float* state0, float* state1, uint8_t* diverged, int64_t P, const float* x,
                           const float* y, int64_t step0, int64_t steps, int64_t record_every, float* history,
                           int nt) {
    lscape::mlp::train_cpu(s, o, M, params, state0, state1, diverged, P, x, y, step0, steps, record_every, history,
                           nt);
    return nullptr;
  }

  static int64_t neb_work_size(int64_t B, int64_t n, int64_t D) { return lscape::neb::work_size_cpu(B, n, D); }
  template <typename T>
  static const char* neb_step(const lscape::neb::Config& c, int64_t B, int64_t n, int64_t D, const T* x,
                              const T* e, const T* g, T* v, T* x_out, double* dt, double* a, int32_t* nsteps,
                              uint8_t* status, double* fmax, int32_t* imax, double* work, int nt) {
    lscape::neb::step_cpu<T>(c, B, n, D, x, e, g, v, x_out, dt, a, nsteps, status, fmax, imax, work, nt);
    return nullptr;
  }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lscape CPU kernels";
  m.def("isa", [] { return lscape::isa_name(lscape::cpu_isa()); },
        "Instruction set the CPU kernels run on here (avx512, avx2 or baseline); raises when LSCAPE_CPU_ISA "
        "forces one this CPU cannot run");
  m.def("set_isa", [](const std::string& name) { return lscape::isa_name(lscape::set_cpu_isa(name)); },
        "Run the CPU kernels on `name` (avx512, avx2, baseline or auto) from now on; returns the ISA chosen. "
        "For side-by-side benchmarks: LSCAPE_CPU_ISA is the way to choose one for a run", py::arg("name"));
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
  lscape::bind::bind_projection<Cpu>(m);
  lscape::bind::bind_projection_sell<Cpu>(m);
  lscape::bind::bind_mlp<Cpu>(m);
  lscape::bind::bind_neb<Cpu>(m);
  m.def("walk_step", [](int64_t W, int64_t D, uintptr_t keys, uint64_t tag, uintptr_t bound, uintptr_t g,
                        uintptr_t up, uintptr_t stopped, uintptr_t x, uintptr_t x_out, bool f64, int nthreads) {
    if (W < 0 || D < 0 || D > INT64_C(0x7FFFFFFF))
      throw std::invalid_argument("walk_step: W must be >= 0 and D in [0, 2^31 - 1], got W = " +
                                  std::to_string(W) + ", D = " + std::to_string(D));
    if (W == 0 || D == 0) return;
    if ((g == 0) == (up == 0)) throw std::invalid_argument("walk_step: exactly one of g and up must be given");
    for (auto [p, name] : {std::pair{keys, "keys"}, {bound, "bound"}, {x, "x"}, {x_out, "x_out"}})
      lscape::bind::need(p, name, "walk_step");
    auto run = [&](auto t) {
      using T = decltype(t);
      lscape::walk::step_cpu<T>(W, D, reinterpret_cast<const uint64_t*>(keys), tag,
                                reinterpret_cast<const T*>(bound), reinterpret_cast<const T*>(g),
                                reinterpret_cast<const uint8_t*>(up), reinterpret_cast<const uint8_t*>(stopped),
                                reinterpret_cast<const T*>(x), reinterpret_cast<T*>(x_out), nthreads);
    };
    if (f64) run(double{}); else run(float{});
  }, "One fused walk step of W walkers of dimension D (walk.h): x_out = x + the signed step sizes",
     py::arg("W"), py::arg("D"), py::arg("keys"), py::arg("tag"), py::arg("bound"), py::arg("g"), py::arg("up"),
     py::arg("stopped"), py::arg("x"), py::arg("x_out"), py::arg("f64"), py::arg("nthreads"),
     py::call_guard<py::gil_scoped_release>());

  // The Fastfood projection (fastfood.h): CPU only; on a GPU its products run on the torch reference.
  m.def("fastfood_fwht", [](int64_t rows, int64_t n, uintptr_t x, bool f64, int nthreads) {
    if (rows < 0 || n < 1 || (n & (n - 1)))
      throw std::invalid_argument("fastfood_fwht: rows must be >= 0 and n a power of two >= 1, got rows = " +
                                  std::to_string(rows) + ", n = " + std::to_string(n));
    if (rows == 0) return;
    lscape::bind::need(x, "x", "fastfood_fwht");
    lscape::bind::by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      lscape::fastfood::fwht_cpu<T>(rows, n, lscape::bind::ptr<T>(x), nthreads);
    });
  }, "x (rows, n) in place: the unnormalised Walsh-Hadamard transform of each row", py::arg("rows"), py::arg("n"),
     py::arg("x"), py::arg("f64"), py::arg("nthreads"), py::call_guard<py::gil_scoped_release>());
  for (bool transpose : {false, true}) {
    const char* name = transpose ? "fastfood_rmatvec" : "fastfood_matvec";
    m.def(name, [transpose, name](std::tuple<int64_t, int64_t, int64_t, int64_t> spec, uintptr_t sign,
                                  uintptr_t perm, uintptr_t gs, uintptr_t x, uintptr_t out, int64_t B, bool f64,
                                  int nthreads) {
      const auto [D, d, n, nb] = spec;
      if (D < 1 || d < 1 || d > D || n < d || (n & (n - 1)) || (n > 1 && n / 2 >= d) || nb != (D + n - 1) / n ||
          B < 0)
        throw std::invalid_argument(std::string(name) + ": inconsistent spec (D, d, n, nb) = (" + std::to_string(D) +
                                    ", " + std::to_string(d) + ", " + std::to_string(n) + ", " +
                                    std::to_string(nb) + ") or B = " + std::to_string(B));
      if (B == 0) return;
      for (auto [p, what] : {std::pair{sign, "sign"}, {perm, "perm"}, {gs, "gs"}, {x, "x"}, {out, "out"}})
        lscape::bind::need(p, what, name);
      lscape::bind::by_dtype(f64, [&](auto t) {
        using T = decltype(t);
        (transpose ? lscape::fastfood::rmatvec_cpu<T> : lscape::fastfood::matvec_cpu<T>)(
            D, d, n, nb, lscape::bind::ptr<const T>(sign), lscape::bind::ptr<const int32_t>(perm),
            lscape::bind::ptr<const T>(gs), lscape::bind::ptr<const T>(x), lscape::bind::ptr<T>(out), B, nthreads);
      });
    }, transpose ? "out (B, d) = P^T g for g (B, D), P the Fastfood projection (fastfood.h); perm and gs are then "
                   "the inverse permutations and the scales gathered through them"
                 : "out (B, D) = P x for x (B, d), P the Fastfood projection (fastfood.h)",
       py::arg("spec"), py::arg("sign"), py::arg("perm"), py::arg("gs"), py::arg("x"), py::arg("out"), py::arg("B"),
       py::arg("f64"), py::arg("nthreads"), py::call_guard<py::gil_scoped_release>());
  }
}
