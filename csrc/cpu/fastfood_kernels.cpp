// CPU kernels of the Fastfood projection (fastfood.h), compiled once per instruction set (LSCAPE_ISA);
// fastfood.cpp picks one at run time and shares the blocks among threads.  One block at a time, in cache:
// n values of the transform and the block's rows of the output.
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace lscape {
namespace fastfood {
namespace LSCAPE_ISA {

namespace {

// Values transformed together before the wide stages: 16 KB (4,096 float, 2,048 double) stay in L1.
template <typename T>
constexpr int64_t kL1 = 16384 / sizeof(T);

// Stages h = 1, 2, 4, ... < kLanes on kLanes consecutive values (64 bytes) in one vector register: lane k
// takes x[k] + x[k ^ h] where k & h == 0, and x[k ^ h] - x[k] elsewhere, exactly the butterfly's a + b and
// a - b.  GCC >= 12 and clang have __builtin_shufflevector; other compilers run the scalar loops.
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
// (the helpers are internal and inlined: no ABI of 64-byte vector arguments is ever crossed)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float V16f __attribute__((vector_size(64)));
typedef double V8d __attribute__((vector_size(64)));

inline V16f partner(V16f x, int h) {
  switch (h) {
    case 1: return __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    case 2: return __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    case 4: return __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    default: return __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  }
}
// lanes of s where k & h == 0, of d elsewhere
inline V16f pick(V16f s, V16f d, int h) {
  switch (h) {
    case 1: return __builtin_shufflevector(s, d, 0, 17, 2, 19, 4, 21, 6, 23, 8, 25, 10, 27, 12, 29, 14, 31);
    case 2: return __builtin_shufflevector(s, d, 0, 1, 18, 19, 4, 5, 22, 23, 8, 9, 26, 27, 12, 13, 30, 31);
    case 4: return __builtin_shufflevector(s, d, 0, 1, 2, 3, 20, 21, 22, 23, 8, 9, 10, 11, 28, 29, 30, 31);
    default: return __builtin_shufflevector(s, d, 0, 1, 2, 3, 4, 5, 6, 7, 24, 25, 26, 27, 28, 29, 30, 31);
  }
}
inline V8d partner(V8d x, int h) {
  switch (h) {
    case 1: return __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
    case 2: return __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5);
    default: return __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
  }
}
inline V8d pick(V8d s, V8d d, int h) {
  switch (h) {
    case 1: return __builtin_shufflevector(s, d, 0, 9, 2, 11, 4, 13, 6, 15);
    case 2: return __builtin_shufflevector(s, d, 0, 1, 10, 11, 4, 5, 14, 15);
    default: return __builtin_shufflevector(s, d, 0, 1, 2, 3, 12, 13, 14, 15);
  }
}

template <typename T>
inline void stages_in_lanes(T* x) {
  using V = std::conditional_t<std::is_same_v<T, float>, V16f, V8d>;
  V v;
  std::memcpy(&v, x, sizeof(V));
  for (int h = 1; h < kLanes<T>; h *= 2) {  // unrolled: h is a constant in each copy
    const V p = partner(v, h);
    v = pick(v + p, p - v, h);
  }
  std::memcpy(x, &v, sizeof(V));
}
#else
template <typename T>
inline void stages_in_lanes(T* x) {
  for (int h = 1; h < kLanes<T>; h *= 2)
    for (int i = 0; i < kLanes<T>; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}
#endif

// Stage h alone over x[0, n).
template <typename T>
inline void radix2(T* __restrict x, int64_t n, int64_t h) {
  for (int64_t i = 0; i < n; i += 2 * h)
    for (int64_t j = i; j < i + h; ++j) {
      const T a = x[j], b = x[j + h];
      x[j] = a + b;
      x[j + h] = a - b;
    }
}

// Stages h then 2h in one pass over x[0, n) (the same operations as two radix2 passes, in the same order).
template <typename T>
inline void radix4(T* __restrict x, int64_t n, int64_t h) {
  for (int64_t i = 0; i < n; i += 4 * h)
    for (int64_t j = i; j < i + h; ++j) {
      const T a = x[j], b = x[j + h], c = x[j + 2 * h], e = x[j + 3 * h];
      const T a1 = a + b, b1 = a - b, c1 = c + e, e1 = c - e;
      x[j] = a1 + c1;
      x[j + 2 * h] = a1 - c1;
      x[j + h] = b1 + e1;
      x[j + 3 * h] = b1 - e1;
    }
}

// Stages from h0 up to n / 2, fused in pairs.
template <typename T>
inline void stages_from(T* x, int64_t n, int64_t h) {
  for (; 4 * h <= n; h *= 4) radix4(x, n, h);
  if (2 * h <= n) radix2(x, n, h);
}

// H x for n <= kL1: the stages below kLanes in registers, the rest in passes that stay in L1.
template <typename T>
inline void fwht_small(T* x, int64_t n) {
  if (n < kLanes<T>) {
    stages_from(x, n, 1);
    return;
  }
  for (int64_t i = 0; i < n; i += kLanes<T>) stages_in_lanes(x + i);
  stages_from(x, n, kLanes<T>);
}

// y[i] = v[idx[i]] * s[i] for i < r, with the vector gathers of the ISA (the same products either way).
template <typename T>
inline void gather_mul(T* __restrict y, const T* __restrict v, const int32_t* __restrict idx, const T* __restrict s,
                       int64_t r) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 16 <= r; i += 16) {
      const __m512i ix = _mm512_loadu_si512(idx + i);
      _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_i32gather_ps(ix, v, 4), _mm512_loadu_ps(s + i)));
    }
  } else {
    for (; i + 8 <= r; i += 8) {
      const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + i));
      _mm512_storeu_pd(y + i, _mm512_mul_pd(_mm512_i32gather_pd(ix, v, 8), _mm512_loadu_pd(s + i)));
    }
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 8 <= r; i += 8) {
      const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + i));
      // (the masked form: GCC 12 warns that the plain one's source operand may be uninitialised)
      const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mask_i32gather_ps(_mm256_setzero_ps(), v, ix, all, 4),
                                            _mm256_loadu_ps(s + i)));
    }
  } else {
    for (; i + 4 <= r; i += 4) {
      const __m128i ix = _mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + i));
      const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
      _mm256_storeu_pd(y + i, _mm256_mul_pd(_mm256_mask_i32gather_pd(_mm256_setzero_pd(), v, ix, all, 8),
                                            _mm256_loadu_pd(s + i)));
    }
  }
#endif
  for (; i < r; ++i) y[i] = v[idx[i]] * s[i];
}

}  // namespace

template <typename T>
void fwht(T* x, int64_t n) {
  // depth first: each L1-sized chunk through its own stages, then the wide stages over all of x
  const int64_t c = n < kL1<T> ? n : kL1<T>;
  for (int64_t i = 0; i < n; i += c) fwht_small(x + i, c);
  if (c < n) stages_from(x, n, c);
}

// H on each dyadic piece of r values (r's binary digits, largest first).
template <typename T>
void fwht_pieces(T* x, int64_t r) {
  for (int bit = 62; bit >= 0; --bit) {
    const int64_t m = int64_t{1} << bit;
    if (r & m) {
      fwht(x, m);
      x += m;
    }
  }
}

template <typename T>
void block_matvec(int64_t n, int64_t d, int64_t r, const T* sign, const int32_t* perm, const T* gs, const T* x,
                  T* v, T* y) {
  for (int64_t j = 0; j < d; ++j) v[j] = x[j] * sign[j];
  for (int64_t j = d; j < n; ++j) v[j] = T(0) * sign[j];  // the reference's zero padding times B, signs kept
  fwht(v, n);
  gather_mul(y, v, perm, gs, r);
  fwht_pieces(y, r);
}

// The scatter v[perm[i]] = w[i] gs[i] as a gather through the inverse permutation (vectorises):
// v[j] = w[inv[j]] gs_inv[j], gs_inv[j] = gs[inv[j]] (zero where inv[j] >= r, and w is zero there too).
template <typename T>
void block_rmatvec(int64_t n, int64_t d, int64_t r, const T* sign, const int32_t* inv, const T* gs_inv, const T* g,
                   T* w, T* v, T* out, bool first) {
  std::memcpy(w, g, sizeof(T) * r);
  if (r < n) std::memset(w + r, 0, sizeof(T) * (n - r));
  fwht_pieces(w, r);
  gather_mul(v, w, inv, gs_inv, n);
  fwht(v, n);
  if (first)
    for (int64_t j = 0; j < d; ++j) out[j] = v[j] * sign[j];
  else
    for (int64_t j = 0; j < d; ++j) out[j] += v[j] * sign[j];
}

#define LSCAPE_FF_INST(T)                                                                                       \
  template void fwht<T>(T*, int64_t);                                                                           \
  template void block_matvec<T>(int64_t, int64_t, int64_t, const T*, const int32_t*, const T*, const T*, T*, T*); \
  template void block_rmatvec<T>(int64_t, int64_t, int64_t, const T*, const int32_t*, const T*, const T*, T*, T*, \
                                 T*, bool);
LSCAPE_FF_INST(float)
LSCAPE_FF_INST(double)
#undef LSCAPE_FF_INST

}  // namespace LSCAPE_ISA
}  // namespace fastfood
}  // namespace lscape
