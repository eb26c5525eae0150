// Run-time choice between the baseline, AVX2 and AVX-512 builds of projection_kernels.cpp and
// projection_sell_kernels.cpp (cpu_isa.h).
#include "lscape/cpu_isa.h"
#include "lscape/projection.h"

namespace lscape {
namespace proj {

namespace baseline {
#include "lscape/projection_cpu_api.inc"
}
namespace avx2 {
#include "lscape/projection_cpu_api.inc"
}
namespace avx512 {
#include "lscape/projection_cpu_api.inc"
}

void count_cpu(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, int nthreads) {
  LSCAPE_ISA_DISPATCH(count_cpu, s, seg_counts, col_counts, nthreads);
}
void fill_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
              int nthreads) {
  LSCAPE_ISA_DISPATCH(fill_cpu, s, seg_start, chunk_ptr, indices, nthreads);
}
template <typename T>
void matvec_implicit_cpu(const Spec& s, const T* scales, const T* x, T* out, int64_t B, int nthreads) {
  LSCAPE_ISA_DISPATCH(matvec_implicit_cpu<T>, s, scales, x, out, B, nthreads);
}
template <typename T>
void rmatvec_implicit_cpu(const Spec& s, const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  LSCAPE_ISA_DISPATCH(rmatvec_implicit_cpu<T>, s, scales, g, out, B, nthreads);
}

template <typename T>
void matvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                     const T* scales, const T* x, T* out, int64_t B, int nthreads) {
  LSCAPE_ISA_DISPATCH(matvec_sell_cpu<T>, s, perm, slice_ptr, cols, scales, x, out, B, nthreads);
}
template <typename T>
void rmatvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                      const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  LSCAPE_ISA_DISPATCH(rmatvec_sell_cpu<T>, s, perm, slice_ptr, cols, scales, g, out, B, nthreads);
}

template <typename T>
void matvec_bands_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* bperm, const uint16_t* bwidth,
                      const int64_t* bstart, const void* bcols, const T* scales, const T* x, T* out, int nthreads) {
  LSCAPE_ISA_DISPATCH(matvec_bands_cpu<T>, s, nb, window, bperm, bwidth, bstart, bcols, scales, x, out, nthreads);
}

template <typename T>
void rmatvec_bands_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* bperm, const uint16_t* bwidth,
                       const int64_t* bstart, const void* bcols, const T* scales, const T* g, T* out, int nthreads) {
  LSCAPE_ISA_DISPATCH(rmatvec_bands_cpu<T>, s, nb, window, bperm, bwidth, bstart, bcols, scales, g, out, nthreads);
}

LSCAPE_PROJ_CPU_INSTANTIATE(float)
LSCAPE_PROJ_CPU_INSTANTIATE(double)
LSCAPE_PROJ_SELL_INSTANTIATE(float)
LSCAPE_PROJ_SELL_INSTANTIATE(double)

}  // namespace proj
}  // namespace lscape
