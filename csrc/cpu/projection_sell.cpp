// The SELL-C-sigma layout of the stored projection (projection.h), built from its segments: plain
// loops, compiled once (building runs once per P; the products are in projection_sell_kernels.cpp).
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "lscape/projection.h"

namespace lscape {
namespace proj {

namespace {

inline int64_t chunk_end(const Spec& s, int64_t c) { return std::min((c + 1) * s.seg_rows, s.D); }

// f(row, col, neg) for every nonzero of chunk c, columns in increasing order (rows within a column too).
template <class F>
inline void for_chunk(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, const int32_t* indices,
                      int64_t c, F&& f) {
  const int32_t* seg = seg_start + c * (s.d + 1);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(indices + chunk_ptr[c]);
  for (int64_t j = 0; j < s.d; ++j)
    for (int32_t q = seg[j]; q < seg[j + 1]; ++q) f(base[q] & 0x7FFFFFFFu, static_cast<uint32_t>(j), base[q] >> 31);
}

template <typename E>
void fill(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, const int32_t* indices,
          const uint16_t* perm, const int64_t* slice_ptr, E* cols, int nthreads) {
  const int64_t n_slices = sell_slices(s.D);
  const E pad = sell_pack<E>(static_cast<uint32_t>(s.d), 0);
  std::vector<int32_t> slot(static_cast<size_t>(s.D));  // the slot of every row
  std::vector<int32_t> next(static_cast<size_t>(s.D), 0);  // entries of the row written so far
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.D; ++p) slot[sell_row(perm, p)] = static_cast<int32_t>(p);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < slice_ptr[n_slices]; ++i) cols[i] = pad;
    // chunks hold disjoint rows, so no two threads write one row; a row's entries arrive in increasing
    // column order.
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      for_chunk(s, seg_start, chunk_ptr, indices, c, [&](uint32_t row, uint32_t col, uint32_t neg) {
        const int64_t p = slot[row];
        const int64_t at = slice_ptr[p / kSellC] + next[row]++ * kSellC + p % kSellC;
        cols[at] = sell_pack<E>(col, neg);
      });
    }
  }
}

}  // namespace

void sell_plan_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, const int32_t* indices,
                   uint16_t* perm, int32_t* widths, int nthreads) {
  const int64_t n_slices = sell_slices(s.D), n_windows = (s.D + kSellSigma - 1) / kSellSigma;
  std::vector<int32_t> len(static_cast<size_t>(s.D), 0);
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < s.n_chunks; ++c)
      for_chunk(s, seg_start, chunk_ptr, indices, c, [&](uint32_t row, uint32_t, uint32_t) { ++len[row]; });
#pragma omp for schedule(static)
    for (int64_t w = 0; w < n_windows; ++w) {
      const int64_t r0 = w * kSellSigma, r1 = std::min(r0 + kSellSigma, s.D);
      uint16_t* pw = perm + r0;
      std::iota(pw, pw + (r1 - r0), uint16_t{0});
      std::stable_sort(pw, pw + (r1 - r0), [&](uint16_t a, uint16_t b) { return len[r0 + a] > len[r0 + b]; });
    }
#pragma omp for schedule(static)
    for (int64_t sl = 0; sl < n_slices; ++sl) {
      int32_t w = 0;
      for (int64_t p = sl * kSellC; p < std::min((sl + 1) * kSellC, s.D); ++p) w = std::max(w, len[sell_row(perm, p)]);
      widths[sl] = w;
    }
  }
  for (int64_t p = s.D; p < n_slices * kSellC; ++p) perm[p] = 0;  // padding slots
}

void sell_fill_cpu(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, const int32_t* indices,
                   const uint16_t* perm, const int64_t* slice_ptr, void* cols, int nthreads) {
  if (sell_narrow(s.d))
    fill(s, seg_start, chunk_ptr, indices, perm, slice_ptr, static_cast<uint16_t*>(cols), nthreads);
  else
    fill(s, seg_start, chunk_ptr, indices, perm, slice_ptr, static_cast<uint32_t*>(cols), nthreads);
}

}  // namespace proj
}  // namespace lscape
