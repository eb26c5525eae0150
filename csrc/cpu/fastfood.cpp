// The Fastfood products on the CPU (fastfood.h): blocks (and batch rows) shared among threads, each block
// on the ISA build that runs here.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "lscape/cpu_isa.h"
#include "lscape/fastfood.h"

namespace lscape {
namespace fastfood {

#define LSCAPE_FF_DECL(isa)                                                                                   \
  namespace isa {                                                                                             \
  template <typename T>                                                                                       \
  void fwht(T* x, int64_t n);                                                                                 \
  template <typename T>                                                                                       \
  void block_matvec(int64_t n, int64_t d, int64_t r, const T* sign, const int32_t* perm, const T* gs,         \
                    const T* x, T* v, T* y);                                                                  \
  template <typename T>                                                                                       \
  void block_rmatvec(int64_t n, int64_t d, int64_t r, const T* sign, const int32_t* inv, const T* gs_inv,     \
                     const T* g, T* w, T* v, T* out, bool first);                                             \
  }
LSCAPE_FF_DECL(baseline)
LSCAPE_FF_DECL(avx2)
LSCAPE_FF_DECL(avx512)
#undef LSCAPE_FF_DECL

namespace {
// Rows of block b (the last is cut).
inline int64_t rows_of(int64_t b, int64_t D, int64_t n) { return std::min(n, D - b * n); }
}  // namespace

template <typename T>
void fwht_cpu(int64_t rows, int64_t n, T* x, int nt) {
  (void)nt;
#ifdef LSCAPE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && rows > 1)
#endif
  for (int64_t i = 0; i < rows; ++i) LSCAPE_ISA_DISPATCH(fwht<T>, x + i * n, n);
}

template <typename T>
void matvec_cpu(int64_t D, int64_t d, int64_t n, int64_t nb, const T* sign, const int32_t* perm, const T* gs,
                const T* x, T* y, int64_t B, int nt) {
  (void)nt;
  const int64_t tasks = B * nb;
#ifdef LSCAPE_OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && tasks > 1)
#endif
  {
    std::vector<T> v(n);
#ifdef LSCAPE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t row = t / nb, b = t % nb;
      LSCAPE_ISA_DISPATCH(block_matvec<T>, n, d, rows_of(b, D, n), sign + b * n, perm + b * n, gs + b * n,
                          x + row * d, v.data(), y + row * D + b * n);
    }
  }
}

template <typename T>
void rmatvec_cpu(int64_t D, int64_t d, int64_t n, int64_t nb, const T* sign, const int32_t* inv, const T* gs_inv,
                 const T* g, T* out, int64_t B, int nt) {
  (void)nt;
  // Threads over batch rows; one row alone: over blocks into a scratch (nb, d), summed in block order
  // afterwards, the same additions in the same order as one thread (results do not depend on nt).
  const bool by_rows = nt <= 1 || B > 1 || nb == 1;
  std::vector<T> part(by_rows ? 0 : static_cast<size_t>(nb * d));
  const int64_t tasks = by_rows ? B : nb;
#ifdef LSCAPE_OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && tasks > 1)
#endif
  {
    std::vector<T> w(n), v(n);
#ifdef LSCAPE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t t = 0; t < tasks; ++t) {
      if (by_rows) {
        for (int64_t b = 0; b < nb; ++b)
          LSCAPE_ISA_DISPATCH(block_rmatvec<T>, n, d, rows_of(b, D, n), sign + b * n, inv + b * n, gs_inv + b * n,
                              g + t * D + b * n, w.data(), v.data(), out + t * d, b == 0);
      } else {
        const int64_t b = t;  // B == 1
        LSCAPE_ISA_DISPATCH(block_rmatvec<T>, n, d, rows_of(b, D, n), sign + b * n, inv + b * n, gs_inv + b * n,
                            g + b * n, w.data(), v.data(), part.data() + b * d, true);
      }
    }
  }
  if (!by_rows) {
    for (int64_t j = 0; j < d; ++j) out[j] = part[j];
    for (int64_t b = 1; b < nb; ++b)
      for (int64_t j = 0; j < d; ++j) out[j] += part[b * d + j];
  }
}

#define LSCAPE_FF_INST(T)                                                                                        \
  template void fwht_cpu<T>(int64_t, int64_t, T*, int);                                                          \
  template void matvec_cpu<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, const T*, const T*, \
                              T*, int64_t, int);                                                                 \
  template void rmatvec_cpu<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, const T*,          \
                               const T*, T*, int64_t, int);
LSCAPE_FF_INST(float)
LSCAPE_FF_INST(double)
#undef LSCAPE_FF_INST

}  // namespace fastfood
}  // namespace lscape
