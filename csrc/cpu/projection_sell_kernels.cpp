// Products on the SELL-C-sigma layout of the stored projection (projection.h).  Compiled once per
// instruction set (LSCAPE_ISA = baseline | avx2 | avx512); projection.cpp picks one at run time.
//
// P theta: threads own slices; a slice gathers its entries' x values (x scaled and padded: d + 1 numbers,
//   in L1 at d = 9,000), sums each row in increasing column order (the order of the other kernels, so
//   results agree bit for bit), and writes its rows straight to their places in `out` (perm).
// P^T g: threads own contiguous slice ranges, stream them, and add each entry's signed g into a private
//   (d + 1)-vector (36 KB at d = 9,000: in L1/L2 while g and the entries stream past); the private
//   vectors are summed in thread order at the end, times the column scales.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <vector>

#include "lscape/projection.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

// GCC 12's gather intrinsics start from an uninitialised vector it then warns about.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lscape {
namespace proj {
namespace LSCAPE_ISA {

namespace {

constexpr int64_t C = kSellC;

#ifdef LSCAPE_OPENMP
inline int thread_id() { return omp_get_thread_num(); }
inline int team_size() { return omp_get_num_threads(); }
#else
inline int thread_id() { return 0; }
inline int team_size() { return 1; }
#endif

inline void my_range(int64_t n, int64_t& lo, int64_t& hi) {
  const int64_t t = thread_id(), T = team_size();
  lo = n * t / T;
  hi = n * (t + 1) / T;
}

// v or -v by flipping the sign bit (exact, and branch-free: signs are random).
inline float signed_value(float v, uint32_t neg) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b ^= neg << 31;
  std::memcpy(&v, &b, 4);
  return v;
}
inline double signed_value(double v, uint32_t neg) {
  uint64_t b;
  std::memcpy(&b, &v, 8);
  b ^= static_cast<uint64_t>(neg) << 63;
  std::memcpy(&v, &b, 8);
  return v;
}

// B > 1 works on blocks of V batch entries (one AVX2 vector), the batch padded to a multiple of V.
template <typename T>
constexpr int64_t kV = 32 / sizeof(T);
template <typename T>
inline int64_t padded_batch(int64_t B) { return B == 1 ? 1 : (B + kV<T> - 1) / kV<T> * kV<T>; }

// xs (d + 1, Bp) = x (B, d) transposed, column scales folded in; row d and the padded batch entries are 0.
template <typename T>
std::vector<T> scaled_x(const Spec& s, const T* x, const T* scales, int64_t B, int64_t Bp) {
  std::vector<T> xs(static_cast<size_t>((s.d + 1) * Bp), T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < s.d; ++j) xs[j * Bp + b] = scales[j] * x[b * s.d + j];
  return xs;
}

// ---- one slice of P theta, B = 1: res[l] = sum over k of +-xs[col(k, l)], k increasing ----------------
template <typename T, typename E>
inline void slice_matvec_scalar(const E* e, int64_t w, const T* xs, T* res) {
  T acc[C] = {};
  for (int64_t k = 0; k < w; ++k)
    for (int64_t l = 0; l < C; ++l) {
      const E x = e[k * C + l];
      acc[l] += signed_value(xs[sell_col(x)], sell_neg(x));
    }
  for (int64_t l = 0; l < C; ++l) res[l] = acc[l];
}
template <typename T, typename E>
inline void slice_matvec(const E* e, int64_t w, const T* xs, T* res) { slice_matvec_scalar(e, w, xs, res); }

#if defined(__AVX512F__)
inline __m512i widen(const uint16_t* e) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e))); }
inline __m512i widen(const uint32_t* e) { return _mm512_loadu_si512(e); }
inline __m512i col_mask(uint16_t) { return _mm512_set1_epi32(0x7FFF); }
inline __m512i col_mask(uint32_t) { return _mm512_set1_epi32(0x7FFFFFFF); }
inline __m512i sign_bits(__m512i x, uint16_t) { return _mm512_and_si512(_mm512_slli_epi32(x, 16), _mm512_set1_epi32(INT32_MIN)); }
inline __m512i sign_bits(__m512i x, uint32_t) { return _mm512_and_si512(x, _mm512_set1_epi32(INT32_MIN)); }

template <typename E>
inline void slice_matvec(const E* e, int64_t w, const float* xs, float* res) {
  __m512 acc = _mm512_setzero_ps();
  const __m512i m = col_mask(E{});
  for (int64_t k = 0; k < w; ++k) {
    const __m512i x = widen(e + k * C);
    const __m512 v = _mm512_i32gather_ps(_mm512_and_si512(x, m), xs, 4);
    acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign_bits(x, E{}))));
  }
  _mm512_storeu_ps(res, acc);
}
#elif defined(__AVX2__)
inline __m256i widen(const uint16_t* e) { return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e))); }
inline __m256i widen(const uint32_t* e) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e)); }
inline __m256i col_mask(uint16_t) { return _mm256_set1_epi32(0x7FFF); }
inline __m256i col_mask(uint32_t) { return _mm256_set1_epi32(0x7FFFFFFF); }
inline __m256i sign_bits(__m256i x, uint16_t) { return _mm256_and_si256(_mm256_slli_epi32(x, 16), _mm256_set1_epi32(INT32_MIN)); }
inline __m256i sign_bits(__m256i x, uint32_t) { return _mm256_and_si256(x, _mm256_set1_epi32(INT32_MIN)); }

template <typename E>
inline void slice_matvec(const E* e, int64_t w, const float* xs, float* res) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  const __m256i m = col_mask(E{});
  for (int64_t k = 0; k < w; ++k) {
    const __m256i x0 = widen(e + k * C), x1 = widen(e + k * C + 8);
    const __m256 v0 = _mm256_i32gather_ps(xs, _mm256_and_si256(x0, m), 4);
    const __m256 v1 = _mm256_i32gather_ps(xs, _mm256_and_si256(x1, m), 4);
    a0 = _mm256_add_ps(a0, _mm256_xor_ps(v0, _mm256_castsi256_ps(sign_bits(x0, E{}))));
    a1 = _mm256_add_ps(a1, _mm256_xor_ps(v1, _mm256_castsi256_ps(sign_bits(x1, E{}))));
  }
  _mm256_storeu_ps(res, a0);
  _mm256_storeu_ps(res + 8, a1);
}
#endif

template <typename T, typename E>
void matvec(const Spec& s, const uint16_t* perm, const int64_t* sp, const E* cols, const T* scales, const T* x,
            T* out, int64_t B, int nthreads) {
  const int64_t Bp = padded_batch<T>(B), n_slices = sell_slices(s.D);
  const std::vector<T> xsv = scaled_x(s, x, scales, B, Bp);
  const T* xs = xsv.data();
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t sl = 0; sl < n_slices; ++sl) {
    const E* e = cols + sp[sl];
    const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C, nl = std::min(C, s.D - p0);
    if (B == 1) {
      alignas(64) T res[C];
      static const bool kScalar = getenv("SELL_SCALAR") != nullptr;
      if (kScalar) slice_matvec_scalar(e, w, xs, res); else slice_matvec(e, w, xs, res);
      for (int64_t l = 0; l < nl; ++l) out[sell_row(perm, p0 + l)] = res[l];
      continue;
    }
    // B > 1: a lane at a time, its sums for V batch entries in one register over the whole row.
    constexpr int64_t V = kV<T>;
    for (int64_t l = 0; l < nl; ++l) {
      const int64_t row = sell_row(perm, p0 + l);
      for (int64_t b0 = 0; b0 < B; b0 += V) {
        T acc[V] = {};
        for (int64_t k = 0; k < w; ++k) {
          const E xk = e[k * C + l];
          const T* v = xs + sell_col(xk) * Bp + b0;
          const T sg = T(1) - T(2 * sell_neg(xk));  // +-1, branch-free (signs are random); x * -1 is -x
          for (int64_t b = 0; b < V; ++b) acc[b] += v[b] * sg;
        }
        for (int64_t b = 0; b < std::min(V, B - b0); ++b) out[(b0 + b) * s.D + row] = acc[b];
      }
    }
  }
}

// ---- P^T g ----------------------------------------------------------------------------------------
// Threads for P^T g: each holds a (d + 1) x Bp accumulator that it zeroes and that is reduced at the
// end, so a team larger than the entries warrant (or than 256 MB of accumulators) only adds work.
template <typename T>
int rmatvec_team(const Spec& s, int64_t entries, int64_t Bp, int nthreads) {
  const int64_t acc_bytes = (s.d + 1) * Bp * static_cast<int64_t>(sizeof(T));
  int64_t team = std::min<int64_t>(nthreads, entries / (4 * (s.d + 1)));
  team = std::min<int64_t>(team, (INT64_C(256) << 20) / acc_bytes);
  return static_cast<int>(std::max<int64_t>(team, 1));
}

template <typename T, typename E>
void rmatvec(const Spec& s, const uint16_t* perm, const int64_t* sp, const E* cols, const T* scales, const T* g,
             T* out, int64_t B, int nthreads) {
  const int64_t Bp = padded_batch<T>(B), n_slices = sell_slices(s.D), n_acc = (s.d + 1) * Bp;
  const int team = rmatvec_team<T>(s, sp[n_slices], Bp, nthreads);
  std::vector<T> accs(static_cast<size_t>(team * n_acc));
#pragma omp parallel num_threads(team)
  {
    T* acc = accs.data() + thread_id() * n_acc;
    std::fill(acc, acc + n_acc, T(0));
    int64_t lo, hi;
    my_range(n_slices, lo, hi);
    std::vector<T> gt(static_cast<size_t>(C * Bp));  // the slice's rows of g: gt[l * Bp + b]
    for (int64_t sl = lo; sl < hi; ++sl) {
      const E* e = cols + sp[sl];
      const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C, nl = std::min(C, s.D - p0);
      if (w == 0) continue;
      if (B == 1) {
        T gv[C];
        for (int64_t l = 0; l < C; ++l) gv[l] = l < nl ? g[sell_row(perm, p0 + l)] : T(0);
        for (int64_t k = 0; k < w; ++k)
          for (int64_t l = 0; l < C; ++l) {
            const E x = e[k * C + l];
            acc[sell_col(x)] += signed_value(gv[l], sell_neg(x));
          }
        continue;
      }
      constexpr int64_t V = kV<T>;
      for (int64_t l = 0; l < C; ++l) {
        const int64_t row = l < nl ? sell_row(perm, p0 + l) : -1;
        for (int64_t b = 0; b < Bp; ++b) gt[l * Bp + b] = (row >= 0 && b < B) ? g[b * s.D + row] : T(0);
      }
      for (int64_t k = 0; k < w; ++k)
        for (int64_t l = 0; l < C; ++l) {
          const E x = e[k * C + l];
          T* a = acc + sell_col(x) * Bp;
          const T* gl = gt.data() + l * Bp;
          const T sg = T(1) - T(2 * sell_neg(x));
          for (int64_t b0 = 0; b0 < Bp; b0 += V)
            for (int64_t b = 0; b < V; ++b) a[b0 + b] += gl[b0 + b] * sg;
        }
    }
#pragma omp barrier
    int64_t j0, j1;
    my_range(s.d, j0, j1);
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t b = 0; b < B; ++b) {
        T sum = accs[j * Bp + b];
        for (int t = 1; t < team; ++t) sum += accs[t * n_acc + j * Bp + b];
        out[b * s.d + j] = scales[j] * sum;
      }
  }
}

}  // namespace

template <typename T>
void matvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                     const T* scales, const T* theta, T* out, int64_t B, int nthreads) {
  if (sell_narrow(s.d))
    matvec(s, perm, slice_ptr, static_cast<const uint16_t*>(cols), scales, theta, out, B, nthreads);
  else
    matvec(s, perm, slice_ptr, static_cast<const uint32_t*>(cols), scales, theta, out, B, nthreads);
}

template <typename T>
void rmatvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                      const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  if (sell_narrow(s.d))
    rmatvec(s, perm, slice_ptr, static_cast<const uint16_t*>(cols), scales, g, out, B, nthreads);
  else
    rmatvec(s, perm, slice_ptr, static_cast<const uint32_t*>(cols), scales, g, out, B, nthreads);
}

LSCAPE_PROJ_SELL_INSTANTIATE(float)
LSCAPE_PROJ_SELL_INSTANTIATE(double)

}  // namespace LSCAPE_ISA
}  // namespace proj
}  // namespace lscape
