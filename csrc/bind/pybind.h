// What every family binding (csrc/bind/<family>.h, a template on the backend B) needs of pybind11: py,
// nogil (the call guard that releases the GIL while a kernel runs: kernels touch no Python object) and
// Tail<B>, the type of the trailing argument (common.h).  common.h's checks stay free of pybind11.
#pragma once
#include <pybind11/pybind11.h>

#include "bind/common.h"

namespace lscape {
namespace bind {

namespace py = pybind11;

inline const py::call_guard<py::gil_scoped_release> nogil{};

template <class B>
using Tail = typename B::Tail;

}  // namespace bind
}  // namespace lscape
