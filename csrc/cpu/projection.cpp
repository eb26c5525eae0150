// Run-time choice between the baseline and AVX2 builds of projection_kernels.cpp.
#include <cstdlib>
#include <cstring>

#include "lscape/projection.h"

namespace lscape {
namespace proj {

namespace baseline {
#include "lscape/projection_cpu_api.inc"
}
namespace avx2 {
#include "lscape/projection_cpu_api.inc"
}

namespace {
// LSCAPE_CPU_ISA=baseline forces the portable kernels (so they are tested on AVX2 machines too).
bool baseline_forced() {
  const char* isa = std::getenv("LSCAPE_CPU_ISA");
  return isa && std::strcmp(isa, "baseline") == 0;
}

bool use_avx2() {
#if LSCAPE_HAVE_AVX2_BUILD && (defined(__GNUC__) || defined(__clang__))
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt") && !baseline_forced();
  return yes;
#else
  return false;
#endif
}
}  // namespace

const char* cpu_isa() { return use_avx2() ? "avx2" : "baseline"; }

#define LSCAPE_DISPATCH(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))

void count_cpu(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, int nthreads) {
  LSCAPE_DISPATCH(count_cpu, s, seg_counts, col_counts, nthreads);
}
void fill_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
              int nthreads) {
  LSCAPE_DISPATCH(fill_cpu, s, seg_start, chunk_ptr, indices, nthreads);
}
template <typename T>
void matvec_indices_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                        const int32_t* indices, const T* scales, const T* x, T* out, int64_t B,
                        int nthreads) {
  LSCAPE_DISPATCH(matvec_indices_cpu<T>, s, seg_start, chunk_ptr, indices, scales, x, out, B, nthreads);
}
template <typename T>
void rmatvec_indices_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                         const int32_t* indices, const T* scales, const T* g, T* out, int64_t B,
                         int nthreads) {
  LSCAPE_DISPATCH(rmatvec_indices_cpu<T>, s, seg_start, chunk_ptr, indices, scales, g, out, B, nthreads);
}
template <typename T>
void matvec_implicit_cpu(const Spec& s, const T* scales, const T* x, T* out, int64_t B, int nthreads) {
  LSCAPE_DISPATCH(matvec_implicit_cpu<T>, s, scales, x, out, B, nthreads);
}
template <typename T>
void rmatvec_implicit_cpu(const Spec& s, const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  LSCAPE_DISPATCH(rmatvec_implicit_cpu<T>, s, scales, g, out, B, nthreads);
}
#undef LSCAPE_DISPATCH

LSCAPE_PROJ_CPU_INSTANTIATE(float)
LSCAPE_PROJ_CPU_INSTANTIATE(double)

}  // namespace proj
}  // namespace lscape
