// CPU kernels of the projection family.  This file is compiled once per instruction set
// (LSCAPE_ISA = baseline | avx2 | avx512); projection.cpp picks one at run time.
#include "projection_prelude.h"

namespace lscape {
namespace proj {
namespace LSCAPE_ISA {

namespace {

#include "projection_common.inc"

inline int64_t chunk_end(const Spec& s, int64_t c) { return std::min((c + 1) * s.seg_rows, s.D); }


constexpr int kBlock = 8;
#if defined(__AVX2__)
constexpr bool kAvx2 = true;
#else
constexpr bool kAvx2 = false;
// unused without AVX2 (the kHasGatherSum flags are false there)
inline float implicit_segment_sum(const Spec&, int64_t, int64_t, const float*) { return 0.0f; }
#endif

// Every segment is handed to a consumer as runs of packed indices (row | sign << 31):
// consume(const uint32_t* packed, int count), called one or more times per segment in row order.
// Segments are regenerated as blocks of up to kBlock (the stored kind runs on SELL: projection_sell_kernels.cpp).

#if defined(__AVX2__)
inline __m256i vmix32(__m256i x) {
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x21F0AAAD));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x735A2D97));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
}

// Gaps (as integers) and raw draws of draws k .. k+7 of a stream: the scalar draw_gap of
// projection.h operation for operation (same IEEE roundings, no FMA), 8 lanes at once.
inline __m256i draw_gaps8(uint64_t key, uint32_t k, __m256 cinv, __m256 smax, __m256i& h) {
  const __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(k)),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  h = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(key))),
                       _mm256_mullo_epi32(ctr, _mm256_set1_epi32(static_cast<int32_t>(rng::kGolden32))));
  h = vmix32(_mm256_xor_si256(vmix32(h), _mm256_set1_epi32(static_cast<int32_t>(key >> 32))));
  // uniform24
  const __m256i m24 = _mm256_add_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0xFFFFFF)), _mm256_set1_epi32(1));
  const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(m24), _mm256_set1_ps(5.9604644775390625e-08f));
  // log2_approx
  const __m256i bits = _mm256_castps_si256(u);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421353816986083984375f), _CMP_GT_OQ);
  const __m256 one = _mm256_set1_ps(1.0f);
  m = _mm256_mul_ps(m, _mm256_blendv_ps(one, _mm256_set1_ps(0.5f), big));
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // true lanes are -1
  const __m256 sv = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
  const __m256 z = _mm256_mul_ps(sv, sv);
  __m256 p = _mm256_set1_ps(0.32059889797532520f);
  p = _mm256_add_ps(_mm256_set1_ps(0.41219858311113240f), _mm256_mul_ps(z, p));
  p = _mm256_add_ps(_mm256_set1_ps(0.57707801635558530f), _mm256_mul_ps(z, p));
  p = _mm256_add_ps(_mm256_set1_ps(0.96179669392597560f), _mm256_mul_ps(z, p));
  p = _mm256_add_ps(_mm256_set1_ps(2.88539008177792680f), _mm256_mul_ps(z, p));
  const __m256 l2 = _mm256_add_ps(_mm256_cvtepi32_ps(e), _mm256_mul_ps(sv, p));
  // draw_gap: min_ps(t, smax) is t < smax ? t : smax
  return _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(l2, cinv), smax));
}

// Walks segment (col, chunk): rows are start - 1 + prefix sums of (gap + 1), 8 per step, and the rows
// below the chunk's end form a prefix of each step (rows only grow).  Calls
// vconsume(rows, signbits, valid, cnt) per step with cnt >= 1 valid lanes; returns the count.
// Inclusive prefix sum of 8 int32 lanes.
inline __m256i prefix8(__m256i x) {
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
  return _mm256_add_epi32(
      x, _mm256_blend_epi32(_mm256_setzero_si256(), _mm256_permutevar8x32_epi32(x, _mm256_set1_epi32(3)), 0xF0));
}

inline __m256i last_lane(__m256i x) { return _mm256_permutevar8x32_epi32(x, _mm256_set1_epi32(7)); }

// Walks segment (col, chunk): rows are start - 1 + prefix sums of (gap + 1), and the rows below the
// chunk's end form a prefix of the draws (rows only grow).  kSteps blocks of 8 draws are made per
// iteration as independent dependency chains, so the core overlaps their long latency.  Calls
// vconsume(rows, signbits, valid, cnt) for each block with cnt >= 1 valid lanes; returns the count.
constexpr int kSteps = 3;

template <class VConsume>
inline uint32_t walk_segment_v(const Spec& s, int64_t col, int64_t chunk, VConsume&& vconsume) {
  const uint64_t key = segment_key(s, col, chunk);
  const __m256 cinv = _mm256_set1_ps(s.cinv), smax = _mm256_set1_ps(static_cast<float>(s.seg_rows));
  const __m256i bias = _mm256_set1_epi32(INT32_MIN);  // unsigned compare via signed compare
  const __m256i endb = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int32_t>(chunk_end(s, chunk))), bias);
  const __m256i ones = _mm256_set1_epi32(1);
  __m256i last = _mm256_set1_epi32(static_cast<int32_t>(chunk * s.seg_rows - 1));  // row before the next
  uint32_t n = 0;
  for (uint32_t k = 0;; k += kSteps * kBlock) {
    __m256i h[kSteps], x[kSteps];
    for (int t = 0; t < kSteps; ++t)
      x[t] = prefix8(_mm256_add_epi32(draw_gaps8(key, k + t * kBlock, cinv, smax, h[t]), ones));
    for (int t = 0; t < kSteps; ++t) {
      const __m256i r = _mm256_add_epi32(last, x[t]);
      const __m256i valid = _mm256_cmpgt_epi32(endb, _mm256_xor_si256(r, bias));
      const int cnt = __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(valid))));
      if (cnt) vconsume(r, _mm256_slli_epi32(_mm256_srli_epi32(h[t], 31), 31), valid, cnt);
      n += static_cast<uint32_t>(cnt);
      if (cnt < kBlock) return n;
      last = last_lane(r);
    }
  }
}

template <class Consume>
inline uint32_t walk_segment(const Spec& s, int64_t col, int64_t chunk, Consume&& consume) {
  return walk_segment_v(s, col, chunk, [&](__m256i r, __m256i sign, __m256i, int cnt) {
    alignas(32) uint32_t packed[kBlock];
    _mm256_store_si256(reinterpret_cast<__m256i*>(packed), _mm256_or_si256(r, sign));
    consume(packed, cnt);
  });
}

inline float hsum(__m256 acc) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 h = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// Sum of the signed g[row] over segment (col, chunk), gathering 8 rows at a time (float, B = 1).
inline float implicit_segment_sum(const Spec& s, int64_t col, int64_t chunk, const float* g) {
  __m256 acc = _mm256_setzero_ps();
  walk_segment_v(s, col, chunk, [&](__m256i r, __m256i sign, __m256i valid, int) {
    const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), g, r, _mm256_castsi256_ps(valid), 4);
    acc = _mm256_add_ps(acc, _mm256_xor_ps(v, _mm256_castsi256_ps(sign)));
  });
  return hsum(acc);
}

#else
// Portable path: the cursor's own loop, with draws made a block at a time.
template <class Consume>
inline uint32_t walk_segment(const Spec& s, int64_t col, int64_t chunk, Consume&& consume) {
  SegmentCursor cur(s, col, chunk);
  uint32_t packed[kBlock];
  uint32_t n = 0, row, neg;
  int cnt = 0;
  while (cur.next(row, neg)) {
    packed[cnt++] = row | (neg << 31);
    if (cnt == kBlock) {
      consume(packed, cnt);
      n += cnt;
      cnt = 0;
    }
  }
  if (cnt) consume(packed, cnt);
  return n + static_cast<uint32_t>(cnt);
}
#endif

// ---- B > 1: one run of packed indices against a tile of rows x B (one contiguous B-vector per row) ----
// scatter_run (matvec):  tile[row][b] += +-v[b]                   for every index of the run
// gather_run (rmatvec):  a[b] += sum over the run of +-tile[row][b]
inline int64_t row_of(uint32_t packed) { return static_cast<int64_t>(packed & 0x7FFFFFFFu); }

template <typename T>
inline void scatter_run(T* bt, const uint32_t* p, int cnt, const T* v, int64_t B) {
  for (int i = 0; i < cnt; ++i) {
    T* o = bt + row_of(p[i]) * B;
    const uint32_t neg = p[i] >> 31;
    for (int64_t b = 0; b < B; ++b) o[b] += signed_value(v[b], neg);
  }
}

template <typename T>
inline void gather_run(T* a, const T* gt, const uint32_t* p, int cnt, int64_t B) {
  for (int i = 0; i < cnt; ++i) {
    const T* gi = gt + row_of(p[i]) * B;
    const uint32_t neg = p[i] >> 31;
    for (int64_t b = 0; b < B; ++b) a[b] += signed_value(gi[b], neg);
  }
}

#if defined(__AVX2__)
// AVX2: B is taken one vector of lanes at a time, and that vector of v, or of the run's sums, stays in
// a register over the whole run.  The loops above keep it in memory: a load-add-store per lane and
// index, about 2x slower at B = 8, paper size.  gather_run masks its last vector; scatter_run does its
// leftover lanes one by one (a masked store is microcoded, and slow, on AMD).
struct F32x8 {
  using T = float;
  using V = __m256;
  using M = __m256i;
  static constexpr int64_t W = 8;
  static M mask(int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, W))),
                                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static V load(const T* x, bool full, M m) { return full ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, m); }
  static void store(T* x, V v, bool full, M m) { full ? _mm256_storeu_ps(x, v) : _mm256_maskstore_ps(x, m, v); }
  static V sign(uint32_t neg) { return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(neg << 31))); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V flip(V a, V s) { return _mm256_xor_ps(a, s); }
  static V zero() { return _mm256_setzero_ps(); }
};
struct F64x4 {
  using T = double;
  using V = __m256d;
  using M = __m256i;
  static constexpr int64_t W = 4;
  static M mask(int64_t n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(std::min<int64_t>(n, W)),
                                                       _mm256_setr_epi64x(0, 1, 2, 3)); }
  static V load(const T* x, bool full, M m) { return full ? _mm256_loadu_pd(x) : _mm256_maskload_pd(x, m); }
  static void store(T* x, V v, bool full, M m) { full ? _mm256_storeu_pd(x, v) : _mm256_maskstore_pd(x, m, v); }
  static V sign(uint32_t neg) { return _mm256_castsi256_pd(_mm256_set1_epi64x(static_cast<int64_t>(neg) << 63)); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V flip(V a, V s) { return _mm256_xor_pd(a, s); }
  static V zero() { return _mm256_setzero_pd(); }
};

template <class X>
inline void scatter_run_v(typename X::T* bt, const uint32_t* p, int cnt, const typename X::T* v, int64_t B) {
  const int64_t whole = B - B % X::W;
  const typename X::M all = X::mask(X::W);  // (unused by whole-vector loads and stores)
  for (int64_t b = 0; b < whole; b += X::W) {
    const typename X::V vb = X::load(v + b, true, all);
    for (int i = 0; i < cnt; ++i) {
      typename X::T* o = bt + row_of(p[i]) * B + b;
      X::store(o, X::add(X::load(o, true, all), X::flip(vb, X::sign(p[i] >> 31))), true, all);
    }
  }
  if (whole == B) return;
  for (int i = 0; i < cnt; ++i) {
    typename X::T* o = bt + row_of(p[i]) * B;
    const uint32_t neg = p[i] >> 31;
    for (int64_t b = whole; b < B; ++b) o[b] += signed_value(v[b], neg);
  }
}

template <class X>
inline void gather_run_v(typename X::T* a, const typename X::T* gt, const uint32_t* p, int cnt, int64_t B) {
  for (int64_t b = 0; b < B; b += X::W) {
    const bool full = b + X::W <= B;
    const typename X::M m = X::mask(B - b);
    typename X::V s0 = X::zero(), s1 = X::zero();  // two sums halve the add-latency chain
    int i = 0;
    for (; i + 2 <= cnt; i += 2) {
      s0 = X::add(s0, X::flip(X::load(gt + row_of(p[i]) * B + b, full, m), X::sign(p[i] >> 31)));
      s1 = X::add(s1, X::flip(X::load(gt + row_of(p[i + 1]) * B + b, full, m), X::sign(p[i + 1] >> 31)));
    }
    if (i < cnt) s0 = X::add(s0, X::flip(X::load(gt + row_of(p[i]) * B + b, full, m), X::sign(p[i] >> 31)));
    X::store(a + b, X::add(X::load(a + b, full, m), X::add(s0, s1)), full, m);
  }
}

inline void scatter_run(float* bt, const uint32_t* p, int cnt, const float* v, int64_t B) {
  scatter_run_v<F32x8>(bt, p, cnt, v, B);
}
inline void scatter_run(double* bt, const uint32_t* p, int cnt, const double* v, int64_t B) {
  scatter_run_v<F64x4>(bt, p, cnt, v, B);
}
inline void gather_run(float* a, const float* gt, const uint32_t* p, int cnt, int64_t B) {
  gather_run_v<F32x8>(a, gt, p, cnt, B);
}
inline void gather_run(double* a, const double* gt, const uint32_t* p, int cnt, int64_t B) {
  gather_run_v<F64x4>(a, gt, p, cnt, B);
}
#endif

// n elements of buf starting at a 64-byte boundary.  A tile row of B = 8 floats is then one cache
// line; with std::vector's 16-byte alignment half the rows straddle two, and the scatter into them ran
// about 2x slower (paper size, B = 8).
template <typename T>
T* aligned_part(std::vector<T>& buf, size_t n) {
  constexpr size_t kExtra = 64 / sizeof(T);
  if (buf.size() < n + kExtra) buf.resize(n + kExtra);
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - at % 64) % 64) / sizeof(T);
}

// x (B, d) -> xs (d, B) with column scales folded in, so a nonzero touches one contiguous B-vector.
template <typename T>
std::vector<T> scaled_transpose(const T* x, const T* scales, int64_t d, int64_t B) {
  std::vector<T> xs(static_cast<size_t>(d * B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < d; ++j) xs[j * B + b] = scales[j] * x[b * d + j];
  return xs;
}

// ---- matvec: out (B, D) = x (B, d) P^T.  Threads own chunks (row ranges), so writes never race. ----
template <typename T, class ForSegment>
void matvec_driver(const Spec& s, const T* scales, const T* x, T* out, int64_t B, int nthreads,
                   ForSegment&& for_segment) {
  const std::vector<T> xs = scaled_transpose(x, scales, s.d, B);
  const T* xsp = xs.data();
#pragma omp parallel num_threads(nthreads)
  {
  std::vector<T> tile;  // this thread's rows x B accumulator (B > 1)
#pragma omp for schedule(dynamic, 1)
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    const int64_t r0 = c * s.seg_rows, r1 = chunk_end(s, c);
    if (B == 1) {
      std::fill(out + r0, out + r1, T(0));
      for (int64_t j = 0; j < s.d; ++j) {
        const T v = xsp[j];
        for_segment(j, c, [&](const uint32_t* p, int cnt) {
          for (int i = 0; i < cnt; ++i) out[p[i] & 0x7FFFFFFFu] += signed_value(v, p[i] >> 31);
        });
      }
    } else {
      // Accumulate the chunk as rows x B (one contiguous B-vector per nonzero instead of B cache
      // lines), then transpose it into out's B rows.
      const size_t n = static_cast<size_t>((r1 - r0) * B);
      T* t0 = aligned_part(tile, n);
      std::fill(t0, t0 + n, T(0));
      T* bt = t0 - r0 * B;
      for (int64_t j = 0; j < s.d; ++j) {
        const T* v = xsp + j * B;
        for_segment(j, c, [&](const uint32_t* p, int cnt) { scatter_run(bt, p, cnt, v, B); });
      }
      for (int64_t b = 0; b < B; ++b) {
        T* ob = out + b * s.D;
        for (int64_t r = r0; r < r1; ++r) ob[r] = bt[r * B + b];
      }
    }
  }
  }  // omp parallel
}

// ---- rmatvec: out (B, d) = g (B, D) P.  Threads own column ranges and sweep chunks in order, so each
// chunk of g is hot while all of a thread's columns read it, and sums need no reduction. -------------
template <typename T, class ForSegment>
void rmatvec_driver(const Spec& s, const T* scales, const T* g, T* out, int64_t B, int nthreads,
                    ForSegment&& for_segment) {
#pragma omp parallel num_threads(nthreads)
  {
    int64_t j0, j1;
    my_range(s.d, j0, j1);
    std::vector<T> acc(static_cast<size_t>((j1 - j0) * B), T(0));
    std::vector<T> gtile;  // B > 1: the chunk of g as rows x B, one contiguous B-vector per nonzero
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      const int64_t r0 = c * s.seg_rows, r1 = chunk_end(s, c);
      const T* gt = nullptr;  // gt[row * B + b] = g[b * D + row] for rows of chunk c
      if (B > 1) {
        // instead of B rows of g (B cache lines) per nonzero: 1.7x faster at B = 8, paper size
        T* t0 = aligned_part(gtile, static_cast<size_t>((r1 - r0) * B));
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t b = 0; b < B; ++b) t0[(r - r0) * B + b] = g[b * s.D + r];
        gt = t0 - r0 * B;
      }
      for (int64_t j = j0; j < j1; ++j) {
        T* a = acc.data() + (j - j0) * B;
        if constexpr (std::decay_t<ForSegment>::kHasGatherSum && std::is_same_v<T, float>) {
          if (B == 1) {
            a[0] += for_segment.gather_sum(j, c, g);
            continue;
          }
        }
        if (B == 1) {
          // four partial sums break the add-latency chain
          for_segment(j, c, [&](const uint32_t* p, int cnt) {
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int i = 0;
            for (; i + 4 <= cnt; i += 4) {
              s0 += signed_value(g[p[i] & 0x7FFFFFFFu], p[i] >> 31);
              s1 += signed_value(g[p[i + 1] & 0x7FFFFFFFu], p[i + 1] >> 31);
              s2 += signed_value(g[p[i + 2] & 0x7FFFFFFFu], p[i + 2] >> 31);
              s3 += signed_value(g[p[i + 3] & 0x7FFFFFFFu], p[i + 3] >> 31);
            }
            for (; i < cnt; ++i) s0 += signed_value(g[p[i] & 0x7FFFFFFFu], p[i] >> 31);
            a[0] += (s0 + s1) + (s2 + s3);
          });
        } else {
          for_segment(j, c, [&](const uint32_t* p, int cnt) { gather_run(a, gt, p, cnt, B); });
        }
      }
    }
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t b = 0; b < B; ++b) out[b * s.d + j] = scales[j] * acc[(j - j0) * B + b];
  }
}

// Regenerated segments.
struct ImplicitSegments {
  static constexpr bool kHasGatherSum = kAvx2;
  const Spec& s;
  inline float gather_sum(int64_t j, int64_t c, const float* g) const { return implicit_segment_sum(s, j, c, g); }
  template <class Consume>
  inline void operator()(int64_t j, int64_t c, Consume&& consume) const {
    walk_segment(s, j, c, consume);
  }
};


}  // namespace

void count_cpu(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, int nthreads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t j = 0; j < s.d; ++j) {
    int64_t total = 0;
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      const uint32_t n = walk_segment(s, j, c, [](const uint32_t*, int) {});
      if (seg_counts) seg_counts[c * s.d + j] = n;
      total += n;
    }
    col_counts[j] = total;
  }
}

void fill_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
              int nthreads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    for (int64_t j = 0; j < s.d; ++j) {
      int32_t* out = indices + chunk_ptr[c] + seg_start[c * (s.d + 1) + j];
      walk_segment(s, j, c, [&](const uint32_t* p, int cnt) {
        std::memcpy(out, p, sizeof(uint32_t) * static_cast<size_t>(cnt));
        out += cnt;
      });
    }
  }
}

template <typename T>
void matvec_implicit_cpu(const Spec& s, const T* scales, const T* theta, T* out, int64_t B, int nthreads) {
  matvec_driver(s, scales, theta, out, B, nthreads, ImplicitSegments{s});
}

template <typename T>
void rmatvec_implicit_cpu(const Spec& s, const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  rmatvec_driver(s, scales, g, out, B, nthreads, ImplicitSegments{s});
}

LSCAPE_PROJ_CPU_INSTANTIATE(float)
LSCAPE_PROJ_CPU_INSTANTIATE(double)

}  // namespace LSCAPE_ISA
}  // namespace proj
}  // namespace lscape
