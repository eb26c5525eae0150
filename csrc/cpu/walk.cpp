// The fused walk step on the CPU (walk.h): threads over walkers, each row on the ISA build that runs here.
#include <cstdint>

#include "lscape/cpu_isa.h"
#include "lscape/walk.h"

namespace lscape {
namespace walk {

#define LSCAPE_WALK_DECL(isa)                                                                                  \
  namespace isa {                                                                                              \
  template <typename T>                                                                                        \
  void step_row(uint64_t k, int64_t D, const T* bound, const T* g, const uint8_t* up, const T* x, T* x_out); \
  }
LSCAPE_WALK_DECL(baseline)
LSCAPE_WALK_DECL(avx2)
LSCAPE_WALK_DECL(avx512)
#undef LSCAPE_WALK_DECL

template <typename T>
void step_cpu(int64_t W, int64_t D, const uint64_t* keys, uint64_t tag, const T* bound, const T* g,
              const uint8_t* up, const uint8_t* stopped, const T* x, T* x_out, int nt) {
  (void)nt;
#ifdef LSCAPE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && W > 1)
#endif
  for (int64_t w = 0; w < W; ++w) {
    const T* xw = x + w * D;
    T* ow = x_out + w * D;
    if (stopped && stopped[w]) {  // no direction from a non-finite gradient: the walker stays
      for (int64_t j = 0; j < D; ++j) ow[j] = xw[j] + T(0);
      continue;
    }
    LSCAPE_ISA_DISPATCH(step_row<T>, tag_key(keys[w], tag), D, bound, g ? g + w * D : nullptr,
                        up ? up + w * D : nullptr, xw, ow);
  }
}

template void step_cpu<float>(int64_t, int64_t, const uint64_t*, uint64_t, const float*, const float*,
                              const uint8_t*, const uint8_t*, const float*, float*, int);
template void step_cpu<double>(int64_t, int64_t, const uint64_t*, uint64_t, const double*, const double*,
                               const uint8_t*, const uint8_t*, const double*, double*, int);

}  // namespace walk
}  // namespace lscape
