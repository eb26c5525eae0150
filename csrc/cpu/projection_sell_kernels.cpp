// Products on the SELL-C-sigma layout of the stored projection (projection.h).  Compiled once per
// instruction set (LSCAPE_ISA = baseline | avx2 | avx512); projection.cpp picks one at run time.
//
// P theta: threads own slices; a slice reads its entries' values from xs2 = [+v_0, -v_0, +v_1, ...]
//   (v = scales * theta, 72 KB at d = 9,000: L1/L2), sums each row in increasing column order (the order
//   of the other kernels, so results agree bit for bit), and writes its rows straight to their places
//   in `out` (perm): no permutation pass.
// P theta, B = 1, on the column-band copy (projection.h): threads own contiguous slice ranges and sweep
//   each window's part band by band, so the part of xs2 in use is 1/nb of it; rows' running sums wait in
//   a buffer between bands.
// P^T g, B = 1, on the column-band copy: the same, band by band (each band adds into its part of the
//   accumulator), each window's rows of g read once.
// P^T g: threads own contiguous slice ranges, stream them, and add each entry's g into a private
//   accumulator indexed by the entry itself (+ and - sums of each column apart, 2 (d + 1) numbers; with
//   B > 1 a (d + 1) x B block per thread), which stays in L1/L2 while g and the entries stream past; the
//   private accumulators are summed in thread order at the end, times the column scales.  (Lane-private
//   scatters and a transposed SELL were slower in a prototype; d is small, so per-thread d-vectors are
//   cheap.)
#include "projection_prelude.h"

namespace lscape {
namespace proj {
namespace LSCAPE_ISA {

namespace {

constexpr int64_t C = kSellC;

#include "projection_common.inc"

// B > 1 works on blocks of V batch entries (one AVX2 vector), the batch padded to a multiple of V.
template <typename T>
constexpr int64_t kV = 32 / sizeof(T);

// One block of V batch entries: load, store, add, and flip the sign of all (neg = 1) or none (neg = 0).
#if defined(__AVX2__)
template <typename T>
struct Block;
template <>
struct Block<float> {
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* x) { return _mm256_loadu_ps(x); }
  static void store(float* x, V v) { _mm256_storeu_ps(x, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V flip(V a, uint32_t neg) { return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(neg << 31)))); }
};
template <>
struct Block<double> {
  using V = __m256d;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* x) { return _mm256_loadu_pd(x); }
  static void store(double* x, V v) { _mm256_storeu_pd(x, v); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V flip(V a, uint32_t neg) {
    return _mm256_xor_pd(a, _mm256_castsi256_pd(_mm256_set1_epi64x(static_cast<int64_t>(neg) << 63)));
  }
};
#else
template <typename T>
struct Block {
  struct V {
    T v[kV<T>];
  };
  static V zero() { return V{}; }
  static V load(const T* x) {
    V r;
    for (int64_t b = 0; b < kV<T>; ++b) r.v[b] = x[b];
    return r;
  }
  static void store(T* x, V a) {
    for (int64_t b = 0; b < kV<T>; ++b) x[b] = a.v[b];
  }
  static V add(V a, V b) {
    for (int64_t i = 0; i < kV<T>; ++i) a.v[i] += b.v[i];
    return a;
  }
  static V flip(V a, uint32_t neg);
};
#endif
#if !defined(__AVX2__)
template <typename T>
typename Block<T>::V Block<T>::flip(V a, uint32_t neg) {
  const T sg = T(1) - T(2 * neg);  // +-1 without a branch (signs are random); x * -1 is exactly -x
  for (int64_t b = 0; b < kV<T>; ++b) a.v[b] *= sg;
  return a;
}
#endif

// Lanes of a slice that P theta (B > 1) sums side by side: 4 where the 16 vector registers hold them.
#if defined(__AVX2__)
constexpr int kLanes = 4;
#else
constexpr int kLanes = 1;
#endif

template <typename T>
inline int64_t padded_batch(int64_t B) { return B == 1 ? 1 : (B + kV<T> - 1) / kV<T> * kV<T>; }

// The inner loops below that must stay scalar (random reads or read-modify-writes of a small vector,
// which scalar loads do faster than gather instructions on the CPUs measured): GCC would turn them
// into gathers.
#if defined(__GNUC__) && !defined(__clang__)
#define LSCAPE_SCALAR_LOOP __attribute__((optimize("no-tree-vectorize")))
#else
#define LSCAPE_SCALAR_LOOP
#endif

// B = 1: xs2 = [+v_0, -v_0, +v_1, -v_1, ..., 0, 0] with v = scales * x, so entry e reads xs2[e].
template <typename T>
std::vector<T> signed_x(const Spec& s, const T* x, const T* scales) {
  std::vector<T> xs(static_cast<size_t>(2 * (s.d + 1)), T(0));
  for (int64_t j = 0; j < s.d; ++j) {
    xs[2 * j] = scales[j] * x[j];
    xs[2 * j + 1] = -xs[2 * j];
  }
  return xs;
}

// B > 1: xs (d + 1, Bp) = x (B, d) transposed, column scales folded in; row d and the padded batch
// entries are 0.
template <typename T>
std::vector<T> scaled_x(const Spec& s, const T* x, const T* scales, int64_t B, int64_t Bp) {
  std::vector<T> xs(static_cast<size_t>((s.d + 1) * Bp), T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < s.d; ++j) xs[j * Bp + b] = scales[j] * x[b * s.d + j];
  return xs;
}

// The 16 entries of one step k of a slice, handed to f(lane, entry) in lane order.  16-bit entries are
// read four to a 64-bit load and split with shifts: loads, not arithmetic, are what these loops are
// short of (two loads per entry become one and a quarter).
template <class F>
inline void for_lanes(const uint16_t* ek, F&& f) {
  uint64_t q[4];
  std::memcpy(q, ek, sizeof q);
  for (int j = 0; j < 4; ++j) {
    f(4 * j, static_cast<uint32_t>(q[j] & 0xFFFF));
    f(4 * j + 1, static_cast<uint32_t>((q[j] >> 16) & 0xFFFF));
    f(4 * j + 2, static_cast<uint32_t>((q[j] >> 32) & 0xFFFF));
    f(4 * j + 3, static_cast<uint32_t>(q[j] >> 48));
  }
}
template <class F>
inline void for_lanes(const uint32_t* ek, F&& f) {
  for (int l = 0; l < C; ++l) f(l, ek[l]);
}

// The entries stream from memory (15 MB at the paper's size) and the hardware prefetcher alone left the
// loops stalled on them: fetch the line kPrefetch bytes ahead, once per 64-byte line.
constexpr int64_t kPrefetch = 2048;
template <typename E>
inline void prefetch_ahead(const E* e, int64_t k) {
  const char* at = reinterpret_cast<const char*>(e + k * C);
  if ((reinterpret_cast<uintptr_t>(at) & 63) < sizeof(E) * C) __builtin_prefetch(at + kPrefetch);
}

// ---- P theta, B = 1, slices [lo, hi): row l of a slice = sum over k (increasing) of xs2[entry(k, l)],
// written to its place in out.  One function over the whole range (the no-vectorize attribute keeps
// it from being inlined, so the call is made once per thread, not per slice).
// (Gathering a slice's 16 lanes with one AVX-512 or two AVX2 gather instructions was timed here and
// was no faster than this scalar loop on AMD EPYC (Zen 4): the scalar loop runs on every ISA.)
template <typename T, typename E>
LSCAPE_SCALAR_LOOP void matvec1(const Spec& s, const uint16_t* __restrict perm, const int64_t* __restrict sp,
                                const E* __restrict cols, const T* __restrict xs2, T* __restrict out, int64_t lo,
                                int64_t hi) {
  for (int64_t sl = lo; sl < hi; ++sl) {
    const E* e = cols + sp[sl];
    const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C;
    T acc[C] = {};
    for (int64_t k = 0; k < w; ++k) {
      prefetch_ahead(e, k);
      for_lanes(e + k * C, [&](int l, uint32_t x) { acc[l] += xs2[x]; });
    }
    if (p0 + C <= s.D) {
      for (int64_t l = 0; l < C; ++l) out[sell_row(perm, p0 + l)] = acc[l];
    } else {
      for (int64_t l = 0; l < s.D - p0; ++l) out[sell_row(perm, p0 + l)] = acc[l];
    }
  }
}

template <typename T, typename E>
void matvec(const Spec& s, const uint16_t* perm, const int64_t* sp, const E* cols, const T* scales, const T* x,
            T* out, int64_t B, int nthreads) {
  const int64_t Bp = padded_batch<T>(B), n_slices = sell_slices(s.D);
  const std::vector<T> xsv = B == 1 ? signed_x(s, x, scales) : scaled_x(s, x, scales, B, Bp);
  const T* xs = xsv.data();
  if (B == 1) {
#pragma omp parallel num_threads(nthreads)
    {
      int64_t lo, hi;
      my_range(n_slices, lo, hi);
      matvec1(s, perm, sp, cols, xs, out, lo, hi);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t sl = 0; sl < n_slices; ++sl) {
    const E* e = cols + sp[sl];
    const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C, nl = std::min(C, s.D - p0);
    // B > 1: kLanes lanes at a time, each lane's sums for V batch entries in a register over its whole
    // row (independent chains of adds).  Lanes >= nl read padding and are not written.
    using X = Block<T>;
    constexpr int64_t V = kV<T>;
    for (int64_t l0 = 0; l0 < nl; l0 += kLanes) {
      for (int64_t b0 = 0; b0 < B; b0 += V) {
        typename X::V a[kLanes];
        for (int j = 0; j < kLanes; ++j) a[j] = X::zero();
        const T* xb = xs + b0;
        for (int64_t k = 0; k < w; ++k) {
          const E* ek = e + k * C + l0;
          for (int j = 0; j < kLanes; ++j)
            a[j] = X::add(a[j], X::flip(X::load(xb + sell_col(ek[j]) * Bp), sell_neg(ek[j])));
        }
        alignas(32) T res[kLanes][V];
        for (int j = 0; j < kLanes; ++j) X::store(res[j], a[j]);
        for (int64_t j = 0; j < std::min<int64_t>(kLanes, nl - l0); ++j) {
          const int64_t row = sell_row(perm, p0 + l0 + j);
          for (int64_t b = 0; b < std::min(V, B - b0); ++b) out[(b0 + b) * s.D + row] = res[j][b];
        }
      }
    }
  }
}

// ---- P theta, B = 1, on the column-band copy (projection.h): slices [lo, hi), swept window by window and,
// inside a window, band by band; acc holds the running sums of the range's rows (slot order) between
// bands.  Each block runs as matvec1's slices do.
template <typename T, typename E>
LSCAPE_SCALAR_LOOP void matvec1_bands(const Spec& s, int64_t nb, int64_t W, const uint16_t* __restrict bperm,
                                      const uint16_t* __restrict bwidth, const int64_t* __restrict bstart,
                                      const E* __restrict cols, const T* __restrict xs2, T* __restrict out,
                                      T* __restrict acc, int64_t lo, int64_t hi) {
  const int64_t n_slices = sell_slices(s.D), spw = W / C;
  for (int64_t w = lo / spw; w * spw < hi; ++w) {
    const int64_t s0 = w * spw, ns = std::min(spw, n_slices - s0);
    const int64_t a = std::max(lo, s0) - s0, c = std::min(hi, s0 + ns) - s0;  // this range's slices of w
    std::fill(acc, acc + (c - a) * C, T(0));
    for (int64_t b = 0; b < nb; ++b) {
      const uint16_t* wb = bwidth + s0 * nb + b * ns;
      int64_t at = bstart[w * nb + b];
      for (int64_t sl = 0; sl < a; ++sl) at += wb[sl] * C;
      for (int64_t sl = a; sl < c; ++sl) {
        const int64_t wd = wb[sl];
        const E* e = cols + at;
        at += wd * C;
        T* as = acc + (sl - a) * C;
        T v[C];
        for (int64_t l = 0; l < C; ++l) v[l] = as[l];
        for (int64_t k = 0; k < wd; ++k) {
          prefetch_ahead(e, k);
          for_lanes(e + k * C, [&](int l, uint32_t x) { v[l] += xs2[x]; });
        }
        for (int64_t l = 0; l < C; ++l) as[l] = v[l];
      }
    }
    const int64_t r0 = w * W, q1 = std::min(c * C, s.D - r0);
    for (int64_t q = a * C; q < q1; ++q) out[r0 + bperm[r0 + q]] = acc[q - a * C];
  }
}

template <typename T, typename E>
void matvec_bands(const Spec& s, int64_t nb, int64_t W, const uint16_t* bperm, const uint16_t* bwidth,
                  const int64_t* bstart, const E* cols, const T* scales, const T* x, T* out, int nthreads) {
  const std::vector<T> xsv = signed_x(s, x, scales);
#pragma omp parallel num_threads(nthreads)
  {
    int64_t lo, hi;
    my_range(sell_slices(s.D), lo, hi);
    std::vector<T> acc(static_cast<size_t>(std::min(W / C, hi - lo) * C));
    matvec1_bands(s, nb, W, bperm, bwidth, bstart, cols, xsv.data(), out, acc.data(), lo, hi);
  }
}

// ---- P^T g ----------------------------------------------------------------------------------------
// P^T g, B = 1, slices [lo, hi): acc2[entry(k, l)] += g[row of lane l], acc2 holding the sums of the
// +g and of the -g entries of every column apart (2 (d + 1) numbers): no sign work per entry.  One
// function over the range, as matvec1.
template <typename T, typename E>
LSCAPE_SCALAR_LOOP void rmatvec1(const Spec& s, const uint16_t* __restrict perm, const int64_t* __restrict sp,
                                 const E* __restrict cols, const T* __restrict g, T* __restrict acc2, int64_t lo,
                                 int64_t hi) {
  for (int64_t sl = lo; sl < hi; ++sl) {
    const E* e = cols + sp[sl];
    const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C;
    T gv[C];  // in registers over the slice
    if (p0 + C <= s.D) {
      for (int64_t l = 0; l < C; ++l) gv[l] = g[sell_row(perm, p0 + l)];
    } else {
      for (int64_t l = 0; l < C; ++l) gv[l] = p0 + l < s.D ? g[sell_row(perm, p0 + l)] : T(0);
    }
    for (int64_t k = 0; k < w; ++k) {
      prefetch_ahead(e, k);
      for_lanes(e + k * C, [&](int l, uint32_t x) { acc2[x] += gv[l]; });
    }
  }
}

// P^T g, B > 1, slices [lo, hi): acc (d + 1, Bp) by column.  A slice's rows of g are copied once as
// +g and -g blocks (gs[(2 l + sign) * Bp + b]), so an entry adds one block of Bp to its column's row of
// acc with no sign work.  NB: the blocks of V in Bp, fixed at compile time (0: Bp / V at run time).
template <typename T, typename E, int NB>
void rmatvec_batch(const Spec& s, const uint16_t* perm, const int64_t* sp, const E* cols, const T* g, T* acc,
                   int64_t B, int64_t Bp, int64_t lo, int64_t hi) {
  using X = Block<T>;
  constexpr int64_t V = kV<T>;
  const int64_t nb = NB ? NB : Bp / V;
  std::vector<T> gsv(static_cast<size_t>(2 * C * Bp));
  T* gs = gsv.data();
  for (int64_t sl = lo; sl < hi; ++sl) {
    const E* e = cols + sp[sl];
    const int64_t w = (sp[sl + 1] - sp[sl]) / C, p0 = sl * C, nl = std::min(C, s.D - p0);
    if (w == 0) continue;
    for (int64_t l = 0; l < C; ++l) {
      const int64_t row = l < nl ? sell_row(perm, p0 + l) : -1;
      for (int64_t b = 0; b < Bp; ++b) {
        const T v = (row >= 0 && b < B) ? g[b * s.D + row] : T(0);
        gs[2 * l * Bp + b] = v;
        gs[(2 * l + 1) * Bp + b] = -v;
      }
    }
    for (int64_t k = 0; k < w; ++k)
      for_lanes(e + k * C, [&](int l, uint32_t x) {
        T* a = acc + static_cast<int64_t>(sell_col(x)) * Bp;
        const T* gl = gs + (2 * l + sell_neg(x)) * Bp;
        for (int64_t i = 0; i < nb; ++i) X::store(a + i * V, X::add(X::load(a + i * V), X::load(gl + i * V)));
      });
  }
}

// Threads for P^T g: each holds a private accumulator that it zeroes and that is reduced at the end,
// so a team larger than the entries warrant (or than 256 MB of accumulators) only adds work.
template <typename T>
int rmatvec_team(const Spec& s, int64_t entries, int64_t n_acc, int nthreads) {
  const int64_t acc_bytes = n_acc * static_cast<int64_t>(sizeof(T));
  int64_t team = std::min<int64_t>(nthreads, entries / (4 * (s.d + 1)));
  team = std::min<int64_t>(team, (INT64_C(256) << 20) / acc_bytes);
  return static_cast<int>(std::max<int64_t>(team, 1));
}

// The team's private accumulators around work(acc, lo, hi) (slices [lo, hi) into acc, by entry (B = 1:
// 2 (d + 1), +g and -g sums apart) or by column (B > 1: (d + 1) x Bp)), then their sum in thread order
// times the column scales into out (B, d).  `entries`: how many the work streams (sizes the team).
template <typename T, class Work>
void rmatvec_run(const Spec& s, int64_t entries, int64_t B, const T* scales, T* out, int nthreads, Work&& work) {
  const int64_t Bp = padded_batch<T>(B), n_acc = B == 1 ? 2 * (s.d + 1) : (s.d + 1) * Bp;
  const int team = rmatvec_team<T>(s, entries, n_acc, nthreads);
  std::vector<T> accs(static_cast<size_t>(team * n_acc));
#pragma omp parallel num_threads(team)
  {
    T* acc = accs.data() + thread_id() * n_acc;
    std::fill(acc, acc + n_acc, T(0));
    int64_t lo, hi;
    my_range(sell_slices(s.D), lo, hi);
    work(acc, lo, hi);
#pragma omp barrier
    int64_t j0, j1;
    my_range(s.d, j0, j1);
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t b = 0; b < B; ++b) {
        T sum = 0;
        for (int t = 0; t < team; ++t) {
          const T* a = accs.data() + t * n_acc;
          sum += B == 1 ? a[2 * j] - a[2 * j + 1] : a[j * Bp + b];
        }
        out[b * s.d + j] = scales[j] * sum;
      }
  }
}

template <typename T, typename E>
void rmatvec(const Spec& s, const uint16_t* perm, const int64_t* sp, const E* cols, const T* scales, const T* g,
             T* out, int64_t B, int nthreads) {
  const int64_t Bp = padded_batch<T>(B);
  rmatvec_run(s, sp[sell_slices(s.D)], B, scales, out, nthreads, [&](T* acc, int64_t lo, int64_t hi) {
    if (B == 1)
      rmatvec1(s, perm, sp, cols, g, acc, lo, hi);
    else if (Bp == kV<T>)
      rmatvec_batch<T, E, 1>(s, perm, sp, cols, g, acc, B, Bp, lo, hi);
    else if (Bp == 2 * kV<T>)
      rmatvec_batch<T, E, 2>(s, perm, sp, cols, g, acc, B, Bp, lo, hi);
    else
      rmatvec_batch<T, E, 0>(s, perm, sp, cols, g, acc, B, Bp, lo, hi);
  });
}

// P^T g, B = 1, on the column-band copy: slices [lo, hi) window by window and band by band, as
// matvec1_bands walks them (the walk is written out in both: one helper taking the per-window and per-block
// work as lambdas measured 10-20% slower for both products with GCC, restrict qualifiers and
// always_inline notwithstanding); a window's rows of g are read once into gw (slot order), and each band's
// blocks add into its part of acc2 (so that part, not all of it, is in use at a time).
template <typename T, typename E>
LSCAPE_SCALAR_LOOP void rmatvec1_bands(const Spec& s, int64_t nb, int64_t W, const uint16_t* __restrict bperm,
                                       const uint16_t* __restrict bwidth, const int64_t* __restrict bstart,
                                       const E* __restrict cols, const T* __restrict g, T* __restrict acc2,
                                       T* __restrict gw, int64_t lo, int64_t hi) {
  const int64_t n_slices = sell_slices(s.D), spw = W / C;
  for (int64_t w = lo / spw; w * spw < hi; ++w) {
    const int64_t s0 = w * spw, ns = std::min(spw, n_slices - s0);
    const int64_t a = std::max(lo, s0) - s0, c = std::min(hi, s0 + ns) - s0;
    const int64_t r0 = w * W, q1 = std::min(c * C, s.D - r0);
    for (int64_t q = a * C; q < q1; ++q) gw[q - a * C] = g[r0 + bperm[r0 + q]];
    for (int64_t q = std::max(q1, a * C); q < c * C; ++q) gw[q - a * C] = T(0);  // padding slots
    for (int64_t b = 0; b < nb; ++b) {
      const uint16_t* wb = bwidth + s0 * nb + b * ns;
      int64_t at = bstart[w * nb + b];
      for (int64_t sl = 0; sl < a; ++sl) at += wb[sl] * C;
      for (int64_t sl = a; sl < c; ++sl) {
        const int64_t wd = wb[sl];
        const E* e = cols + at;
        at += wd * C;
        T gv[C];
        for (int64_t l = 0; l < C; ++l) gv[l] = gw[(sl - a) * C + l];
        for (int64_t k = 0; k < wd; ++k) {
          prefetch_ahead(e, k);
          for_lanes(e + k * C, [&](int l, uint32_t x) { acc2[x] += gv[l]; });
        }
      }
    }
  }
}

template <typename T, typename E>
void rmatvec_bands(const Spec& s, int64_t nb, int64_t W, const uint16_t* bperm, const uint16_t* bwidth,
                   const int64_t* bstart, const E* cols, const T* scales, const T* g, T* out, int nthreads) {
  const int64_t n_windows = (sell_slices(s.D) + W / C - 1) / (W / C);
  rmatvec_run(s, bstart[n_windows * nb], 1, scales, out, nthreads, [&](T* acc2, int64_t lo, int64_t hi) {
    std::vector<T> gw(static_cast<size_t>(std::min(W / C, hi - lo) * C));
    rmatvec1_bands(s, nb, W, bperm, bwidth, bstart, cols, g, acc2, gw.data(), lo, hi);
  });
}

// f(entries) with the stored column entries typed as they are stored: 16-bit where d is narrow
// (sell_narrow), 32-bit else.  Every product below dispatches through it, once per call.
template <typename F>
void with_entries(const Spec& s, const void* cols, F&& f) {
  if (sell_narrow(s.d))
    f(static_cast<const uint16_t*>(cols));
  else
    f(static_cast<const uint32_t*>(cols));
}

}  // namespace

template <typename T>
void matvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                     const T* scales, const T* theta, T* out, int64_t B, int nthreads) {
  with_entries(s, cols, [&](auto e) { matvec(s, perm, slice_ptr, e, scales, theta, out, B, nthreads); });
}

template <typename T>
void rmatvec_sell_cpu(const Spec& s, const uint16_t* perm, const int64_t* slice_ptr, const void* cols,
                      const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  with_entries(s, cols, [&](auto e) { rmatvec(s, perm, slice_ptr, e, scales, g, out, B, nthreads); });
}

template <typename T>
void matvec_bands_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* bperm, const uint16_t* bwidth,
                      const int64_t* bstart, const void* bcols, const T* scales, const T* theta, T* out,
                      int nthreads) {
  with_entries(s, bcols, [&](auto e) {
    matvec_bands(s, nb, window, bperm, bwidth, bstart, e, scales, theta, out, nthreads);
  });
}

template <typename T>
void rmatvec_bands_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* bperm, const uint16_t* bwidth,
                       const int64_t* bstart, const void* bcols, const T* scales, const T* g, T* out, int nthreads) {
  with_entries(s, bcols, [&](auto e) {
    rmatvec_bands(s, nb, window, bperm, bwidth, bstart, e, scales, g, out, nthreads);
  });
}

LSCAPE_PROJ_SELL_INSTANTIATE(float)
LSCAPE_PROJ_SELL_INSTANTIATE(double)

}  // namespace LSCAPE_ISA
}  // namespace proj
}  // namespace lscape
