// What every family binding (csrc/bind/<family>.h) shares: how specs, configurations and raw buffer
// addresses arrive from Python, and the checks made on them before any kernel runs.  Plain C++, no
// pybind11 types; host code only (nvcc never sees csrc/bind/).
//
// A binding is written once, as a template on a backend B (csrc/bindings.cpp: Cpu; csrc/cuda/bindings.cpp:
// Cuda), which provides:
//   using Tail = ...;             the trailing argument: int threads (CPU) or uintptr_t stream (CUDA)
//   static constexpr const char* kModule, kTail;     "_C" / "nthreads", "_cuda" / "stream"
//   static constexpr bool kNebDouble;                whether its NEB kernel takes float64
//   static constexpr bool kSegmentProducts;          whether it binds products on the stored kind's segments
//                                                    (CUDA; the CPU's run on SELL, bind_projection_sell)
//   static functions mirroring the family headers' kernels, each returning nullptr or an error string.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "lscape/mlp.h"
#include "lscape/neb.h"
#include "lscape/projection.h"

namespace lscape {
namespace bind {

// (D, d, seed, cinv, seg_rows, n_chunks), as lscape.reference.projection.ProjSpec.as_tuple() gives it.
using SpecTuple = std::tuple<int64_t, int64_t, uint64_t, double, int64_t, int64_t>;

// The spec, checked against the invariants projection.h states: a bad one would make kernels write
// out of bounds, so it is refused even though the Python layer never sends one.
inline proj::Spec to_spec(const SpecTuple& t) {
  const proj::Spec s{std::get<0>(t), std::get<1>(t), std::get<2>(t), static_cast<float>(std::get<3>(t)),
                     std::get<4>(t), std::get<5>(t)};
  if (s.D < 1 || s.D > INT64_C(0x7FFFFFFF)) throw std::invalid_argument("projection spec: D must be in [1, 2^31 - 1]");
  if (s.d < 1 || s.d > s.D) throw std::invalid_argument("projection spec: d must be in [1, D]");
  if (s.seg_rows < 1 || s.seg_rows > (INT64_C(1) << 24) || (s.seg_rows & (s.seg_rows - 1)) != 0)
    throw std::invalid_argument("projection spec: seg_rows must be a power of two <= 2^24");
  if (s.n_chunks != (s.D + s.seg_rows - 1) / s.seg_rows)
    throw std::invalid_argument("projection spec: n_chunks must be ceil(D / seg_rows)");
  return s;
}

// The column-band copy's shape (projection.h): others would index out of bounds.
inline void check_bands(int64_t nb, int64_t window, const char* op) {
  if (nb < 1 || nb > 64) throw std::invalid_argument(std::string(op) + ": nb must be in [1, 64]");
  if (window < proj::kSellC || window > 65536 || (window & (window - 1)) != 0)
    throw std::invalid_argument(std::string(op) + ": window must be a power of two in [16, 65536]");
}

inline void check_batch(int64_t B) {
  if (B < 1) throw std::invalid_argument("batch size B must be >= 1");
}

// A kernel's error string (a CUDA launch error), raised as RuntimeError naming the function.
inline void check(const char* err, const char* module, const char* what) {
  if (err) throw std::runtime_error(std::string("lscape.") + module + "." + what + ": " + err);
}

// A null buffer that the kernel would dereference: refused (on a GPU the fault would poison the whole
// CUDA context; on the CPU it would crash the interpreter).
inline void need(uintptr_t a, const char* name, const char* op) {
  if (!a) throw std::invalid_argument(std::string(op) + ": " + name + " must not be null");
}

// A buffer address (a Python int) as a typed pointer.
template <typename T>
T* ptr(uintptr_t a) { return reinterpret_cast<T*>(a); }

// Calls f(T{}) with T = double when f64, else float.
template <class F>
void by_dtype(bool f64, F&& f) {
  if (f64)
    f(double{});
  else
    f(float{});
}

// (kind, lr, momentum, rho, eps, beta1, beta2), as lscape.reference.mlp.OptConfig.as_tuple() gives it.
using OptTuple = std::tuple<int, double, double, double, double, double, double>;

inline mlp::OptConfig to_opt(const OptTuple& t) {
  const int kind = std::get<0>(t);
  if (kind < mlp::kSgd || kind > mlp::kAdam)
    throw std::invalid_argument("mlp optimizer kind must be 0 (sgd), 1 (adadelta) or 2 (adam)");
  return {kind, std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t), std::get<5>(t),
          std::get<6>(t)};
}

// The sizes mlp.h allows: others would index out of bounds, so they are refused here even though the
// Python layer never sends them.
inline mlp::Spec mlp_spec(int K, int N, int64_t M, int64_t P) {
  if (K < 1 || K > mlp::kMaxDepth) throw std::invalid_argument("mlp: K must be in [1, 8]");
  if (N < 1 || N > mlp::kMaxWidth) throw std::invalid_argument("mlp: N must be in [1, 16]");
  if (M < 0) throw std::invalid_argument("mlp: M must be >= 0");
  if (P < 1) throw std::invalid_argument("mlp: P must be >= 1");
  return {K, N};
}

// (k, climb, method, fmax_tol, maxstep, lr, dt_max, n_min, f_inc, f_dec, a_start, f_a), as
// lscape.reference.neb.NEBConfig.as_tuple() gives it.
using NebTuple = std::tuple<double, int, int, double, double, double, double, int, double, double, double, double>;

inline neb::Config to_neb(const NebTuple& t) {
  const neb::Config c{std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t),  std::get<4>(t),  std::get<5>(t),
                      std::get<6>(t), std::get<7>(t), std::get<8>(t), std::get<9>(t), std::get<10>(t), std::get<11>(t)};
  if (c.method != neb::kFire && c.method != neb::kDescent)
    throw std::invalid_argument("neb: method must be 0 (fire) or 1 (descent)");
  return c;
}

// The sizes neb.h allows.
inline void neb_sizes(int64_t B, int64_t n, int64_t D) {
  if (B < 0) throw std::invalid_argument("neb: B must be >= 0");
  if (n < 3) throw std::invalid_argument("neb: n must be >= 3");
  if (D < 1) throw std::invalid_argument("neb: D must be >= 1");
}

}  // namespace bind
}  // namespace lscape
