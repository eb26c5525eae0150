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

// f(entry) for each entry of slot p's row in the SELL layout, in increasing column order (a row's
// padding, column d, follows its entries).
template <typename E, class F>
inline void for_slot(const Spec& s, const int64_t* slice_ptr, const E* cols, int64_t p, F&& f) {
  const int64_t sl = p / kSellC, w = (slice_ptr[sl + 1] - slice_ptr[sl]) / kSellC;
  const E* e = cols + slice_ptr[sl] + p % kSellC;
  for (int64_t k = 0; k < w; ++k) {
    const uint32_t x = e[k * kSellC];
    if (sell_col(x) == static_cast<uint32_t>(s.d)) break;
    f(x);
  }
}

template <typename E>
void bands_plan(const Spec& s, int64_t nb, int64_t W, const uint16_t* perm, const int64_t* slice_ptr, const E* cols,
                uint16_t* bperm, int32_t* widths, int nthreads) {
  const int64_t n_slices = sell_slices(s.D), spw = W / kSellC, n_windows = (n_slices + spw - 1) / spw;
  std::vector<int32_t> cnt(static_cast<size_t>(s.D * nb), 0);  // row r's count in band b at r * nb + b
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.D; ++p) {
      int32_t* c = cnt.data() + sell_row(perm, p) * nb;
      for_slot(s, slice_ptr, cols, p, [&](uint32_t x) { ++c[sell_band(sell_col(x), nb, s.d)]; });
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_windows; ++w) {
      const int64_t r0 = w * W, nr = std::min(W, s.D - r0), s0 = w * spw, ns = std::min(spw, n_slices - s0);
      const int32_t* cw = cnt.data() + r0 * nb;
      uint16_t* pw = bperm + r0;
      for (int64_t q = 0; q < nr; ++q) pw[q] = static_cast<uint16_t>(q);
      std::sort(pw, pw + nr, [&](uint16_t a, uint16_t b) {
        for (int64_t j = 0; j < nb; ++j)
          if (cw[a * nb + j] != cw[b * nb + j]) return cw[a * nb + j] > cw[b * nb + j];
        return a < b;
      });
      for (int64_t q = nr; q < ns * kSellC; ++q) pw[q] = 0;  // padding slots (the last slice only)
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t sl = 0; sl < ns; ++sl) {
          int32_t m = 0;
          for (int64_t q = sl * kSellC; q < std::min((sl + 1) * kSellC, nr); ++q) m = std::max(m, cw[pw[q] * nb + b]);
          widths[s0 * nb + b * ns + sl] = m;
        }
    }
  }
}

template <typename E>
void bands_fill(const Spec& s, int64_t nb, int64_t W, const uint16_t* perm, const int64_t* slice_ptr, const E* cols,
                const uint16_t* bperm, const int64_t* band_ptr, E* bcols, int nthreads) {
  const int64_t n_slices = sell_slices(s.D), spw = W / kSellC;
  const E pad = sell_pack<E>(static_cast<uint32_t>(s.d), 0);
  std::vector<int32_t> slot(static_cast<size_t>(s.D));  // every row's slot in the band copy
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<int64_t> next(static_cast<size_t>(nb));  // entries of the row written so far, per band
#pragma omp for schedule(static)
    for (int64_t q = 0; q < s.D; ++q) slot[(q & ~(W - 1)) + bperm[q]] = static_cast<int32_t>(q);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < band_ptr[n_slices * nb]; ++i) bcols[i] = pad;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.D; ++p) {  // rows are disjoint: no two threads write one block entry
      const int64_t q = slot[sell_row(perm, p)], s0 = q / W * spw, ns = std::min(spw, n_slices - s0);
      const int64_t* at = band_ptr + s0 * nb + (q / kSellC - s0);
      std::fill(next.begin(), next.end(), 0);
      for_slot(s, slice_ptr, cols, p, [&](uint32_t x) {
        const int64_t b = sell_band(sell_col(x), nb, s.d);
        bcols[at[b * ns] + next[b]++ * kSellC + q % kSellC] = static_cast<E>(x);
      });
    }
  }
}

}  // namespace

void sell_bands_plan_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* perm, const int64_t* slice_ptr,
                         const void* cols, uint16_t* bperm, int32_t* widths, int nthreads) {
  if (sell_narrow(s.d))
    bands_plan(s, nb, window, perm, slice_ptr, static_cast<const uint16_t*>(cols), bperm, widths, nthreads);
  else
    bands_plan(s, nb, window, perm, slice_ptr, static_cast<const uint32_t*>(cols), bperm, widths, nthreads);
}

void sell_bands_fill_cpu(const Spec& s, int64_t nb, int64_t window, const uint16_t* perm, const int64_t* slice_ptr,
                         const void* cols, const uint16_t* bperm, const int64_t* band_ptr, void* bcols,
                         int nthreads) {
  if (sell_narrow(s.d))
    bands_fill(s, nb, window, perm, slice_ptr, static_cast<const uint16_t*>(cols), bperm, band_ptr,
               static_cast<uint16_t*>(bcols), nthreads);
  else
    bands_fill(s, nb, window, perm, slice_ptr, static_cast<const uint32_t*>(cols), bperm, band_ptr,
               static_cast<uint32_t*>(bcols), nthreads);
}

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
