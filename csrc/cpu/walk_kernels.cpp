// CPU kernel of the fused walk step (walk.h), compiled once per instruction set (LSCAPE_ISA); walk.cpp
// picks one at run time (cpu_isa.h).  One row at a time: the draws, the mask and the addition in one
// pass, with nothing of size D stored but x_out.
#include <cstdint>

#include "lscape/walk.h"

namespace lscape {
namespace walk {
namespace LSCAPE_ISA {

template <typename T>
void step_row(uint64_t k, int64_t D, const T* bound, const T* g, const uint8_t* up, const T* x, T* x_out) {
  const uint32_t n = static_cast<uint32_t>(D);
  if (g) {
    for (uint32_t j = 0; j < n; ++j) x_out[j] = x[j] + gradient_step(step_size<T>(k, j, bound[j]), g[j]);
  } else {
    for (uint32_t j = 0; j < n; ++j) {
      const T r = step_size<T>(k, j, bound[j]);
      x_out[j] = x[j] + (up[j] ? r : -r);
    }
  }
}

template void step_row<float>(uint64_t, int64_t, const float*, const float*, const uint8_t*, const float*, float*);
template void step_row<double>(uint64_t, int64_t, const double*, const double*, const uint8_t*, const double*,
                               double*);

}  // namespace LSCAPE_ISA
}  // namespace walk
}  // namespace lscape
