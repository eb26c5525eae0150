// CPU kernels of the projection family.  This file is compiled twice, once per instruction set
// (LSCAPE_ISA = baseline | avx2); projection.cpp picks one at run time.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lscape/projection.h"
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

namespace lscape {
namespace proj {
namespace LSCAPE_ISA {

namespace {

#ifdef LSCAPE_OPENMP
inline int thread_id() { return omp_get_thread_num(); }
inline int team_size() { return omp_get_num_threads(); }
#else
inline int thread_id() { return 0; }
inline int team_size() { return 1; }
#endif

inline int64_t chunk_end(const Spec& s, int64_t c) { return std::min((c + 1) * s.seg_rows, s.D); }

// Calls emit(row, neg) for every nonzero of segment (col, chunk), in row order; returns the count.
// Draws are made kBlock at a time in a loop the compiler vectorises (the hash, log2 and gap are
// independent per draw), then consumed serially: the same sequence SegmentCursor walks.
constexpr int kBlock = 8;

template <class Emit>
inline uint32_t walk_segment(const Spec& s, int64_t col, int64_t chunk, Emit&& emit) {
  const uint64_t key = segment_key(s, col, chunk);
  const float smax = static_cast<float>(s.seg_rows);
  const float cinv = s.cinv;
  const uint32_t end = static_cast<uint32_t>(chunk_end(s, chunk));
  uint32_t pos = static_cast<uint32_t>(chunk * s.seg_rows);
  uint32_t n = 0;
  uint32_t gap[kBlock], sgn[kBlock];
  for (uint32_t k = 0;; k += kBlock) {
    for (int i = 0; i < kBlock; ++i) {
      const uint32_t h = rng::draw32(key, k + static_cast<uint32_t>(i));
      gap[i] = draw_gap(h, cinv, smax);
      sgn[i] = h >> 31;
    }
    for (int i = 0; i < kBlock; ++i) {
      const uint32_t r = pos + gap[i];
      if (r >= end) return n;
      emit(r, sgn[i]);
      ++n;
      pos = r + 1;
    }
  }
}

template <typename T>
inline T signed_value(T v, uint32_t neg) { return neg ? -v : v; }

// Even split of [0, n) among the team: this thread's [lo, hi).
inline void my_range(int64_t n, int64_t& lo, int64_t& hi) {
  const int64_t t = thread_id(), T = team_size();
  lo = n * t / T;
  hi = n * (t + 1) / T;
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    const int64_t r0 = c * s.seg_rows, r1 = chunk_end(s, c);
    for (int64_t b = 0; b < B; ++b) std::fill(out + b * s.D + r0, out + b * s.D + r1, T(0));
    if (B == 1) {
      for (int64_t j = 0; j < s.d; ++j) {
        const T v = xsp[j];
        for_segment(j, c, [&](uint32_t row, uint32_t neg) { out[row] += signed_value(v, neg); });
      }
    } else {
      for (int64_t j = 0; j < s.d; ++j) {
        const T* v = xsp + j * B;
        for_segment(j, c, [&](uint32_t row, uint32_t neg) {
          for (int64_t b = 0; b < B; ++b) out[b * s.D + row] += signed_value(v[b], neg);
        });
      }
    }
  }
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
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      for (int64_t j = j0; j < j1; ++j) {
        T* a = acc.data() + (j - j0) * B;
        if (B == 1) {
          T sum = 0;
          for_segment(j, c, [&](uint32_t row, uint32_t neg) { sum += signed_value(g[row], neg); });
          a[0] += sum;
        } else {
          for_segment(j, c, [&](uint32_t row, uint32_t neg) {
            for (int64_t b = 0; b < B; ++b) a[b] += signed_value(g[b * s.D + row], neg);
          });
        }
      }
    }
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t b = 0; b < B; ++b) out[b * s.d + j] = scales[j] * acc[(j - j0) * B + b];
  }
}

// Stored segments: iterate a segment's packed indices.
struct StoredSegments {
  const Spec& s;
  const int32_t* seg_start;
  const int64_t* chunk_ptr;
  const int32_t* indices;
  template <class Emit>
  inline void operator()(int64_t j, int64_t c, Emit&& emit) const {
    const int32_t* base = indices + chunk_ptr[c];
    const int32_t* seg = seg_start + c * (s.d + 1);
    for (int32_t q = seg[j]; q < seg[j + 1]; ++q) {
      const uint32_t u = static_cast<uint32_t>(base[q]);
      emit(u & 0x7FFFFFFFu, u >> 31);
    }
  }
};

// Regenerated segments.
struct ImplicitSegments {
  const Spec& s;
  template <class Emit>
  inline void operator()(int64_t j, int64_t c, Emit&& emit) const {
    walk_segment(s, j, c, emit);
  }
};

}  // namespace

void count_cpu(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, int nthreads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t j = 0; j < s.d; ++j) {
    int64_t total = 0;
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      const uint32_t n = walk_segment(s, j, c, [](uint32_t, uint32_t) {});
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
      walk_segment(s, j, c, [&](uint32_t row, uint32_t neg) { *out++ = pack_index(row, neg); });
    }
  }
}

template <typename T>
void matvec_indices_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                        const int32_t* indices, const T* scales, const T* theta, T* out, int64_t B,
                        int nthreads) {
  matvec_driver(s, scales, theta, out, B, nthreads, StoredSegments{s, seg_start, chunk_ptr, indices});
}

template <typename T>
void rmatvec_indices_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                         const int32_t* indices, const T* scales, const T* g, T* out, int64_t B,
                         int nthreads) {
  rmatvec_driver(s, scales, g, out, B, nthreads, StoredSegments{s, seg_start, chunk_ptr, indices});
}

template <typename T>
void matvec_implicit_cpu(const Spec& s, const T* scales, const T* theta, T* out, int64_t B, int nthreads) {
  matvec_driver(s, scales, theta, out, B, nthreads, ImplicitSegments{s});
}

template <typename T>
void rmatvec_implicit_cpu(const Spec& s, const T* scales, const T* g, T* out, int64_t B, int nthreads) {
  rmatvec_driver(s, scales, g, out, B, nthreads, ImplicitSegments{s});
}

#define LSCAPE_INSTANTIATE(T)                                                                          \
  template void matvec_indices_cpu<T>(const Spec&, const int32_t*, const int64_t*, const int32_t*,     \
                                      const T*, const T*, T*, int64_t, int);                           \
  template void rmatvec_indices_cpu<T>(const Spec&, const int32_t*, const int64_t*, const int32_t*,    \
                                       const T*, const T*, T*, int64_t, int);                          \
  template void matvec_implicit_cpu<T>(const Spec&, const T*, const T*, T*, int64_t, int);             \
  template void rmatvec_implicit_cpu<T>(const Spec&, const T*, const T*, T*, int64_t, int);
LSCAPE_INSTANTIATE(float)
LSCAPE_INSTANTIATE(double)
#undef LSCAPE_INSTANTIATE

}  // namespace LSCAPE_ISA
}  // namespace proj
}  // namespace lscape
