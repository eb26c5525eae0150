// The NEB family's binding (neb.h), written once for both modules: B is the backend (csrc/bind/common.h).
// Python names: neb_work_size, neb_step.
#pragma once
#include <string>
#include <type_traits>
#include <utility>

#include "bind/pybind.h"

namespace lscape::bind {

template <class B>
void bind_neb(py::module_& m) {
  m.def("neb_work_size", [](int64_t B_, int64_t n, int64_t D) {
    neb_sizes(B_, n, D);
    return B::neb_work_size(B_, n, D);
  }, "Doubles of scratch neb_step needs for B bands of n images of dimension D", py::arg("B"), py::arg("n"),
     py::arg("D"));

  m.def("neb_step", [](const NebTuple& cfg, int64_t B_, int64_t n, int64_t D, uintptr_t x, uintptr_t e,
                       uintptr_t g, uintptr_t v, uintptr_t x_out, uintptr_t dt, uintptr_t a, uintptr_t nsteps,
                       uintptr_t status, uintptr_t fmax, uintptr_t imax, uintptr_t work, bool f64, Tail<B> tail) {
    if (f64 && !B::kNebDouble)
      throw std::invalid_argument(std::string("neb: the ") + B::kModule +
                                  " NEB kernel takes float32; float64 runs on the reference");
    const neb::Config c = to_neb(cfg);
    neb_sizes(B_, n, D);
    if (B_ == 0) return;
    for (auto [p, name] : {std::pair{x, "x"}, {e, "e"}, {g, "g"}, {v, "v"}, {x_out, "x_out"}, {dt, "dt"}, {a, "a"},
                           {nsteps, "nsteps"}, {status, "status"}, {fmax, "fmax"}, {imax, "imax"}, {work, "work"}})
      need(p, name, "neb");
    const char* err = nullptr;
    by_dtype(f64, [&](auto t) {
      using T = decltype(t);
      if constexpr (std::is_same_v<T, float> || B::kNebDouble)
        err = B::template neb_step<T>(c, B_, n, D, ptr<const T>(x), ptr<const T>(e), ptr<const T>(g), ptr<T>(v),
                                      ptr<T>(x_out), ptr<double>(dt), ptr<double>(a), ptr<int32_t>(nsteps),
                                      ptr<uint8_t>(status), ptr<double>(fmax), ptr<int32_t>(imax),
                                      ptr<double>(work), tail);
    });
    check(err, B::kModule, "neb_step");
  }, "One NEB step of B bands (neb.h)", py::arg("cfg"), py::arg("B"), py::arg("n"), py::arg("D"), py::arg("x"),
     py::arg("e"), py::arg("g"), py::arg("v"), py::arg("x_out"), py::arg("dt"), py::arg("a"), py::arg("nsteps"),
     py::arg("status"), py::arg("fmax"), py::arg("imax"), py::arg("work"), py::arg("f64"), py::arg(B::kTail),
     py::call_guard<py::gil_scoped_release>());
}

}  // namespace lscape::bind
