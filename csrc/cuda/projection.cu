// CUDA kernels of the projection family: the API of lscape/projection.h, the same semantics and
// storage layout as the CPU kernels (lscape/projection.h).
//
// Building block: a segment is handled by a "group" of G lanes of one warp (G a power of two, 1..32).
//  * Stored segments: the G lanes stride over the segment's packed indices.
//  * Regenerated segments: the G lanes walk the segment cooperatively.  Draw k's gap does not depend on
//    where the walk is, only on k, so lane l computes the gap of draw k + l (by calling next() on a copy
//    of the cursor set to k + l, row 0 and no end, so only the header's generator is used), a scan of
//    (gap + 1) over the group gives every lane its row, r_l = pos + sum_{i <= l}(gap_i + 1) - 1, which is
//    exactly the row SegmentCursor::next() returns at its (l + 1)-th call from (pos, k).  Rows increase
//    with l, so the lanes with r < end are a prefix and those are the nonzeros; when all G are valid the
//    walk continues from pos = r_{G-1} + 1, k += G.  G = 1 runs SegmentCursor::next() itself.
//    Overflow: pos < 2^31 and the scan is at most 32 (2^24 + 1) < 2^30, so r fits in uint32.
// G, and the other launch shapes, come from the expected nonzeros per segment (density * S); they only
// change speed (and, for rmatvec, the order of a float sum), never which nonzeros are visited.
//
// Kernels (all 256-thread blocks unless said, grid-stride loops, int64 indices):
//  count    group per segment (segment order c*d + j); seg_counts written by the group's first lane,
//           col_counts zeroed on the stream then summed with 64-bit integer atomics (exact, so the
//           result is deterministic).
//  fill     group per segment; lane l writes nonzero n + l of its round, so the writes are coalesced.
//  matvec   (a) block per (chunk, tile of b): the chunk's rows of out, for a tile of b, accumulate in
//               shared memory (shared atomics) over all d segments of the chunk, then are written out
//               once, coalesced; no memset, no global atomics.  Used when a tile of S rows fits.
//           (b) otherwise: out zeroed on the stream, group per segment (stored: per segment part), and
//               global atomicAdd per nonzero and b.
//  rmatvec  team of W = Q * G lanes per (column, tile of b): Q subgroups of G lanes take the chunks
//           c = q, q + Q, ..., each lane accumulates its nonzeros in registers (a tile of up to 8 b),
//           then a fixed-order reduction (shuffles, then shared memory across warps) and one plain store:
//           deterministic, no atomics.  Only when d * tiles is too small to fill the GPU are the chunks
//           further split into K slices whose scaled partial sums are atomically added into a zeroed out
//           (then the float sum order, and so the last bits, may vary from run to run).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "lscape/projection.h"

namespace lscape {
namespace proj {

namespace {

constexpr int kThreads = 256;                   // block size of every kernel except matvec (a)
constexpr int64_t kTargetLanes = int64_t(1) << 19;   // lanes worth launching: about 2x a full H100
constexpr int64_t kMinDeterministicLanes = int64_t(1) << 16;  // below this rmatvec splits columns
constexpr int64_t kMaxBlocks = int64_t(1) << 20;     // grid cap; grid-stride loops cover the rest
constexpr int kMaxRmatvecTile = 8;              // b values accumulated in registers per rmatvec team
constexpr size_t kSmemOneTile = 48 * 1024;      // matvec (a): most shared memory for one b
constexpr size_t kSmemMultiTile = 24 * 1024;    // ... and for a tile of several b
constexpr int64_t kMinChunkBlocks = 256;        // matvec (a) only with at least this many blocks

// ---- lane groups ----------------------------------------------------------------------------------

struct Group {
  unsigned mask;  // the group's lanes within the warp
  int lane;       // this thread's lane within the group
  int size;       // G
};

// Groups of G consecutive lanes (G a power of two <= 32) tile each warp.
__device__ __forceinline__ Group make_group(int G) {
  const int wl = static_cast<int>(threadIdx.x & 31u);
  Group g;
  g.size = G;
  g.lane = wl & (G - 1);
  g.mask = G >= 32 ? 0xFFFFFFFFu : (((1u << G) - 1u) << (wl & ~(G - 1)));
  return g;
}

// Regenerate segment (col, chunk) with the group's lanes; calls f(row, neg, n) on the lane holding
// the segment's n-th nonzero (each nonzero exactly once).  Returns the segment's count on every lane.
// Must be called by all lanes of the group together.
template <class F>
__device__ __forceinline__ uint32_t walk_implicit(const Spec& s, int64_t col, int64_t chunk, const Group& g,
                                                  F&& f) {
  SegmentCursor cur(s, col, chunk);
  uint32_t n = 0;
  if (g.size == 1) {
    uint32_t row, neg;
    while (cur.next(row, neg)) f(row, neg, n++);
    return n;
  }
  const uint32_t lane = static_cast<uint32_t>(g.lane);
  for (;;) {
    // Draw cur.k + lane through the cursor itself, from row 0 with no end: its row is the gap.
    SegmentCursor probe = cur;
    probe.k = cur.k + lane;
    probe.pos = 0u;
    probe.end = 0xFFFFFFFFu;
    uint32_t gap = 0u, neg = 0u;
    probe.next(gap, neg);  // always true: a gap is at most S <= 2^24
    uint32_t step = gap + 1u;
    for (int off = 1; off < g.size; off <<= 1) {
      const uint32_t t = __shfl_up_sync(g.mask, step, off, g.size);
      if (g.lane >= off) step += t;
    }
    const uint32_t r = cur.pos + step - 1u;
    const bool valid = r < cur.end;
    const int nv = __popc(__ballot_sync(g.mask, valid) & g.mask);
    if (valid) f(r, neg, n + lane);
    n += static_cast<uint32_t>(nv);
    if (nv < g.size) return n;
    cur.pos = __shfl_sync(g.mask, r, g.size - 1, g.size) + 1u;
    cur.k += static_cast<uint32_t>(g.size);
  }
}

// Stored nonzeros indices[q0 .. q1), strided over the group's lanes: f(row, neg, q).
template <class F>
__device__ __forceinline__ void walk_stored(const int32_t* __restrict__ indices, int64_t q0, int64_t q1,
                                            const Group& g, F&& f) {
#pragma unroll 4
  for (int64_t q = q0 + g.lane; q < q1; q += g.size) {
    const uint32_t u = static_cast<uint32_t>(__ldg(indices + q));
    f(u & 0x7FFFFFFFu, u >> 31, static_cast<uint32_t>(q));
  }
}

// [q0, q1) of stored segment (col, chunk) in `indices`.
__device__ __forceinline__ void stored_range(const Spec& s, const int32_t* __restrict__ seg_start,
                                             const int64_t* __restrict__ chunk_ptr, int64_t col, int64_t chunk,
                                             int64_t& q0, int64_t& q1) {
  const int64_t base = chunk_ptr[chunk];
  const int32_t* ss = seg_start + chunk * (s.d + 1) + col;
  q0 = base + ss[0];
  q1 = base + ss[1];
}

// Segment (col, chunk)'s nonzeros, f(row, neg, n) on the group's lanes: regenerated from the seed (kImplicit,
// walk_implicit) or read from the stored `indices` (walk_stored).  Called by all lanes of the group together.
template <bool kImplicit, class F>
__device__ __forceinline__ void walk_segment(const Spec& s, const int32_t* __restrict__ seg_start,
                                             const int64_t* __restrict__ chunk_ptr,
                                             const int32_t* __restrict__ indices, int64_t col, int64_t chunk,
                                             const Group& g, F&& f) {
  if (kImplicit) {
    walk_implicit(s, col, chunk, g, f);
  } else {
    int64_t q0, q1;
    stored_range(s, seg_start, chunk_ptr, col, chunk, q0, q1);
    walk_stored(indices, q0, q1, g, f);
  }
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename T>
__device__ __forceinline__ T signed_value(T v, uint32_t neg) { return neg ? -v : v; }

// ---- count / fill ---------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
count_kernel(const Spec s, uint32_t* __restrict__ seg_counts, int64_t* __restrict__ col_counts, int G) {
  const Group g = make_group(G);
  const int64_t nseg = s.n_chunks * s.d;
  const int64_t stride = grid_threads() / G;
  for (int64_t sid = global_thread() / G; sid < nseg; sid += stride) {
    const int64_t c = sid / s.d, j = sid - c * s.d;
    const uint32_t n = walk_implicit(s, j, c, g, [](uint32_t, uint32_t, uint32_t) {});
    if (g.lane == 0) {
      if (seg_counts) seg_counts[sid] = n;
      atomicAdd(reinterpret_cast<unsigned long long*>(col_counts + j), static_cast<unsigned long long>(n));
    }
  }
}

__global__ void __launch_bounds__(kThreads)
fill_kernel(const Spec s, const int32_t* __restrict__ seg_start, const int64_t* __restrict__ chunk_ptr,
            int32_t* __restrict__ indices, int G) {
  const Group g = make_group(G);
  const int64_t nseg = s.n_chunks * s.d;
  const int64_t stride = grid_threads() / G;
  for (int64_t sid = global_thread() / G; sid < nseg; sid += stride) {
    const int64_t c = sid / s.d, j = sid - c * s.d;
    int32_t* out = indices + chunk_ptr[c] + seg_start[c * (s.d + 1) + j];
    walk_implicit(s, j, c, g, [&](uint32_t row, uint32_t neg, uint32_t n) { out[n] = pack_index(row, neg); });
  }
}

// ---- matvec: out (B, D) = theta (B, d) P^T ----------------------------------------------------------

// (a) Block per (chunk, tile of TBm b values); blockDim.x a multiple of G; dynamic shared memory holds
// TBm * S values of T.  Writes every row of the chunk for the tile's b, so out needs no zeroing.
template <typename T, bool kImplicit>
__global__ void __launch_bounds__(kThreads)
matvec_chunk_kernel(const Spec s, const int32_t* __restrict__ seg_start, const int64_t* __restrict__ chunk_ptr,
                    const int32_t* __restrict__ indices, const T* __restrict__ scales,
                    const T* __restrict__ theta, T* __restrict__ out, int64_t B, int G, int TBm) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* acc = reinterpret_cast<T*>(smem_raw);
  const Group g = make_group(G);
  const int groups = static_cast<int>(blockDim.x) / G;
  const int group = static_cast<int>(threadIdx.x) / G;
  const int64_t d = s.d, D = s.D;
  const int64_t ntiles = (B + TBm - 1) / TBm;
  const int64_t nitems = s.n_chunks * ntiles;
  for (int64_t item = blockIdx.x; item < nitems; item += gridDim.x) {  // uniform over the block
    const int64_t tile = item / s.n_chunks, c = item - tile * s.n_chunks;
    const int64_t b0 = tile * TBm;
    const int nb = static_cast<int>(min(static_cast<int64_t>(TBm), B - b0));
    const int64_t r0 = c * s.seg_rows;
    const int nr = static_cast<int>(min(s.seg_rows, D - r0));  // rows of this chunk (>= 1)
    const int nacc = nb * nr;
    for (int i = static_cast<int>(threadIdx.x); i < nacc; i += static_cast<int>(blockDim.x)) acc[i] = T(0);
    __syncthreads();
    for (int64_t j = group; j < d; j += groups) {  // uniform over the group
      const T sc = scales[j];
      const T* th = theta + b0 * d + j;
      const T v0 = sc * th[0];
      auto emit = [&](uint32_t row, uint32_t neg, uint32_t) {
        T* a = acc + (static_cast<int64_t>(row) - r0);
        atomicAdd(a, signed_value(v0, neg));
        for (int t = 1; t < nb; ++t) atomicAdd(a + t * nr, signed_value(sc * __ldg(th + t * d), neg));
      };
      walk_segment<kImplicit>(s, seg_start, chunk_ptr, indices, j, c, g, emit);
    }
    __syncthreads();
    for (int i = static_cast<int>(threadIdx.x); i < nacc; i += static_cast<int>(blockDim.x)) {
      const int t = i / nr, rr = i - t * nr;
      out[(b0 + t) * D + r0 + rr] = acc[i];
    }
    __syncthreads();  // acc is reused by the next item
  }
}

// (b) Group per (segment, part): stored segments are cut into P parts of about equal length (P = 1 for
// regenerated ones).  out must be zeroed first.
template <typename T, bool kImplicit>
__global__ void __launch_bounds__(kThreads)
matvec_atomic_kernel(const Spec s, const int32_t* __restrict__ seg_start, const int64_t* __restrict__ chunk_ptr,
                     const int32_t* __restrict__ indices, const T* __restrict__ scales,
                     const T* __restrict__ theta, T* __restrict__ out, int64_t B, int G, int64_t P) {
  const Group g = make_group(G);
  const int64_t d = s.d, D = s.D;
  const int64_t nitems = s.n_chunks * d * P;
  const int64_t stride = grid_threads() / G;
  for (int64_t item = global_thread() / G; item < nitems; item += stride) {  // uniform over the group
    const int64_t sid = item / P, part = item - sid * P;
    const int64_t c = sid / d, j = sid - c * d;
    const T sc = scales[j];
    const T v0 = sc * theta[j];
    auto emit = [&](uint32_t row, uint32_t neg, uint32_t) {
      atomicAdd(out + row, signed_value(v0, neg));
      for (int64_t b = 1; b < B; ++b) atomicAdd(out + b * D + row, signed_value(sc * __ldg(theta + b * d + j), neg));
    };
    if (kImplicit) {
      walk_implicit(s, j, c, g, emit);
    } else {
      int64_t q0, q1;
      stored_range(s, seg_start, chunk_ptr, j, c, q0, q1);
      const int64_t len = q1 - q0;
      walk_stored(indices, q0 + len * part / P, q0 + len * (part + 1) / P, g, emit);
    }
  }
}

// ---- rmatvec: out (B, d) = g (B, D) P -------------------------------------------------------------

// Team of W = Q * G lanes (W <= kThreads, a power of two) per item (tile of TB b values, slice of
// chunks, column), items ordered column fastest.  K = 1: one slice, out written with plain stores.
// K > 1: out must be zeroed first; each slice's scaled partial sum is atomically added.
template <typename T, int TB, bool kImplicit>
__global__ void __launch_bounds__(kThreads)
rmatvec_kernel(const Spec s, const int32_t* __restrict__ seg_start, const int64_t* __restrict__ chunk_ptr,
               const int32_t* __restrict__ indices, const T* __restrict__ scales, const T* __restrict__ gin,
               T* __restrict__ out, int64_t B, int G, int Q, int64_t K) {
  __shared__ T red[kThreads / 32][TB];
  const int W = G * Q;
  const int tid = static_cast<int>(threadIdx.x);
  const int teams = kThreads / W;          // teams per block
  const int team = tid / W;                // this thread's team in the block
  const int tl = tid - team * W;           // lane in the team
  const int q = tl / G;                    // subgroup in the team
  const Group g = make_group(G);
  const int ww = W < 32 ? W : 32;          // the team's lanes within one warp
  const int wl = tid & 31;
  const unsigned tmask = ww >= 32 ? 0xFFFFFFFFu : (((1u << ww) - 1u) << (wl & ~(ww - 1)));
  const int64_t d = s.d, D = s.D;
  const int64_t ntiles = (B + TB - 1) / TB;
  const int64_t nitems = d * K * ntiles;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * teams; base < nitems;
       base += static_cast<int64_t>(gridDim.x) * teams) {  // uniform over the block
    const int64_t item = base + team;
    const bool active = item < nitems;
    T acc[TB];
#pragma unroll
    for (int t = 0; t < TB; ++t) acc[t] = T(0);
    int64_t j = 0, b0 = 0;
    int nb = 0;
    if (active) {
      j = item % d;
      const int64_t rest = item / d;
      const int64_t slice = rest % K, tile = rest / K;
      b0 = tile * TB;
      nb = static_cast<int>(min(static_cast<int64_t>(TB), B - b0));
      const int64_t c_lo = s.n_chunks * slice / K, c_hi = s.n_chunks * (slice + 1) / K;
      const T* gb = gin + b0 * D;
      auto emit = [&](uint32_t row, uint32_t neg, uint32_t) {
#pragma unroll
        for (int t = 0; t < TB; ++t)
          if (t < nb) acc[t] += signed_value(__ldg(gb + t * D + row), neg);
      };
      for (int64_t c = c_lo + q; c < c_hi; c += Q) {  // uniform over the subgroup
        walk_segment<kImplicit>(s, seg_start, chunk_ptr, indices, j, c, g, emit);
      }
    }
    // Fixed-order reduction over the team.
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      T v = acc[t];
      for (int off = ww >> 1; off > 0; off >>= 1) v += __shfl_down_sync(tmask, v, off, ww);
      acc[t] = v;
    }
    if (W > 32) {  // uniform over the block
      if (wl == 0) {
#pragma unroll
        for (int t = 0; t < TB; ++t) red[tid >> 5][t] = acc[t];
      }
      __syncthreads();
      if (tl == 0) {
        const int w0 = tid >> 5, nw = W >> 5;
#pragma unroll
        for (int t = 0; t < TB; ++t) {
          T v = red[w0][t];
          for (int w = 1; w < nw; ++w) v += red[w0 + w][t];
          acc[t] = v;
        }
      }
      __syncthreads();  // red is reused by the next item
    }
    if (active && tl == 0) {
      const T sc = scales[j];
#pragma unroll
      for (int t = 0; t < TB; ++t) {
        if (t < nb) {
          T* o = out + (b0 + t) * d + j;
          if (K == 1)
            *o = sc * acc[t];
          else
            atomicAdd(o, sc * acc[t]);
        }
      }
    }
  }
}

// ---- launch shapes ----------------------------------------------------------------------------------

const char* last_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* memset_async(void* p, size_t bytes, cudaStream_t st) {
  if (bytes == 0) return nullptr;
  const cudaError_t e = cudaMemsetAsync(p, 0, bytes, st);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: it is reported here
    return cudaGetErrorString(e);
  }
  return nullptr;
}

unsigned grid_for(int64_t items, int64_t items_per_block) {
  const int64_t b = (items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

// Expected nonzeros per segment: density * rows of a chunk, density = 1 - 2^(1 / cinv).
double segment_mean(const Spec& s) {
  double p = 1.0;
  if (s.cinv < 0.0f) p = 1.0 - std::exp2(1.0 / static_cast<double>(s.cinv));
  if (!(p > 0.0)) p = 0.0;
  if (p > 1.0) p = 1.0;
  return p * static_cast<double>(std::min(s.seg_rows, s.D));
}

// The largest power of two <= x, in [1, cap].
int pow2_at_most(double x, int cap) {
  int v = 1;
  while (v < cap && 2.0 * v <= x) v *= 2;
  return v;
}

// Lanes per segment when segments are independent items: about one round of work per lane, widened
// while there are too few lanes to fill the GPU.
int group_size(const Spec& s, int64_t nseg, bool implicit) {
  const double m = segment_mean(s) + (implicit ? 1.0 : 0.0);  // draws (implicit) or entries (stored)
  int G = pow2_at_most(m, 32);
  while (G < 32 && nseg < kTargetLanes / G) G *= 2;
  return G;
}

bool valid_shape(const Spec& s) { return s.D > 0 && s.d > 0 && s.n_chunks > 0 && s.seg_rows > 0; }

}  // namespace

// ---- API -------------------------------------------------------------------------------------------

const char* count_cuda(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (s.d > 0 && col_counts) {
    if (const char* e = memset_async(col_counts, static_cast<size_t>(s.d) * sizeof(int64_t), st)) return e;
  }
  if (!valid_shape(s) || !col_counts) return nullptr;
  const int64_t nseg = s.n_chunks * s.d;
  const int G = group_size(s, nseg, true);
  count_kernel<<<grid_for(nseg, kThreads / G), kThreads, 0, st>>>(s, seg_counts, col_counts, G);
  return last_error();
}

const char* fill_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
                      void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (!valid_shape(s)) return nullptr;
  const int64_t nseg = s.n_chunks * s.d;
  const int G = group_size(s, nseg, true);
  fill_kernel<<<grid_for(nseg, kThreads / G), kThreads, 0, st>>>(s, seg_start, chunk_ptr, indices, G);
  return last_error();
}

namespace {

template <typename T, bool kImplicit>
const char* matvec_launch(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                          const int32_t* indices, const T* scales, const T* theta, T* out, int64_t B,
                          cudaStream_t st) {
  if (B <= 0 || s.D <= 0) return nullptr;
  if (s.d <= 0 || s.n_chunks <= 0 || s.seg_rows <= 0)
    return memset_async(out, static_cast<size_t>(B) * static_cast<size_t>(s.D) * sizeof(T), st);
  const int64_t nseg = s.n_chunks * s.d;
  const double m = segment_mean(s);
  const size_t row_bytes = static_cast<size_t>(s.seg_rows) * sizeof(T);

  // (a) shared-memory accumulation per chunk, when a chunk's rows fit and the chunks cover all rows.
  if (row_bytes <= kSmemOneTile && s.n_chunks * s.seg_rows >= s.D) {
    const int64_t tbm = std::max<int64_t>(1, std::min<int64_t>(B, static_cast<int64_t>(kSmemMultiTile / row_bytes)));
    const int64_t ntiles = (B + tbm - 1) / tbm;
    if (s.n_chunks * ntiles >= kMinChunkBlocks) {
      const int G = pow2_at_most(m + (kImplicit ? 1.0 : 0.0), 32);
      // Enough groups for the block's d segments of a chunk, between 2 warps and kThreads.
      int threads = G;
      while (threads < kThreads && threads < 64) threads *= 2;
      while (threads < kThreads && static_cast<int64_t>(threads / G) < s.d) threads *= 2;
      const size_t smem = static_cast<size_t>(tbm) * row_bytes;
      matvec_chunk_kernel<T, kImplicit><<<grid_for(s.n_chunks * ntiles, 1), threads, smem, st>>>(
          s, seg_start, chunk_ptr, indices, scales, theta, out, B, G, static_cast<int>(tbm));
      return last_error();
    }
  }

  // (b) global atomics.
  if (const char* e = memset_async(out, static_cast<size_t>(B) * static_cast<size_t>(s.D) * sizeof(T), st))
    return e;
  const int G = group_size(s, nseg, kImplicit);
  int64_t P = 1;
  if (!kImplicit) {
    // Cut long stored segments while the GPU is not yet full and each lane keeps >= 8 entries.
    while (P < (int64_t(1) << 20) && nseg < kTargetLanes / (G * P) && m >= 16.0 * G * P) P *= 2;
  }
  matvec_atomic_kernel<T, kImplicit><<<grid_for(nseg * P, kThreads / G), kThreads, 0, st>>>(
      s, seg_start, chunk_ptr, indices, scales, theta, out, B, G, P);
  return last_error();
}

template <typename T, int TB, bool kImplicit>
void rmatvec_launch_tb(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                       const int32_t* indices, const T* scales, const T* g, T* out, int64_t B, int G, int Q,
                       int64_t K, cudaStream_t st) {
  const int64_t ntiles = (B + TB - 1) / TB;
  const int W = G * Q;
  rmatvec_kernel<T, TB, kImplicit><<<grid_for(s.d * K * ntiles, kThreads / W), kThreads, 0, st>>>(
      s, seg_start, chunk_ptr, indices, scales, g, out, B, G, Q, K);
}

template <typename T, bool kImplicit>
const char* rmatvec_launch(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                           const int32_t* indices, const T* scales, const T* g, T* out, int64_t B,
                           cudaStream_t st) {
  if (B <= 0 || s.d <= 0) return nullptr;
  const int TB = B == 1 ? 1 : B == 2 ? 2 : B <= 4 ? 4 : kMaxRmatvecTile;
  const int64_t items = s.d * ((B + TB - 1) / TB);
  const int64_t n_chunks = std::max<int64_t>(0, s.n_chunks);
  // Lanes per segment, then subgroups over chunks, widened while the GPU is not full.
  int G = pow2_at_most(segment_mean(s) + (kImplicit ? 1.0 : 0.0), 32);
  int Q = 1;
  while (G * Q < kThreads && items < kTargetLanes / (G * Q)) {
    if (Q < n_chunks)
      Q *= 2;
    else if (G < 32)
      G *= 2;
    else
      break;
  }
  // Too few columns to fill the GPU deterministically: split the chunks into K slices.
  int64_t K = 1;
  if (items < kMinDeterministicLanes / (G * Q) && n_chunks > Q) {
    const int64_t lanes = items * G * Q;
    K = std::min((kTargetLanes + lanes - 1) / lanes, std::max<int64_t>(1, n_chunks / Q));
  }
  if (K > 1) {
    if (const char* e = memset_async(out, static_cast<size_t>(B) * static_cast<size_t>(s.d) * sizeof(T), st))
      return e;
  }
  switch (TB) {
    case 1: rmatvec_launch_tb<T, 1, kImplicit>(s, seg_start, chunk_ptr, indices, scales, g, out, B, G, Q, K, st); break;
    case 2: rmatvec_launch_tb<T, 2, kImplicit>(s, seg_start, chunk_ptr, indices, scales, g, out, B, G, Q, K, st); break;
    case 4: rmatvec_launch_tb<T, 4, kImplicit>(s, seg_start, chunk_ptr, indices, scales, g, out, B, G, Q, K, st); break;
    default: rmatvec_launch_tb<T, kMaxRmatvecTile, kImplicit>(s, seg_start, chunk_ptr, indices, scales, g, out, B, G, Q, K, st); break;
  }
  return last_error();
}

}  // namespace

// projection.h's entry points, P theta (matvec) and P^T g (rmatvec), each on the stored indices and implicit
// (no indices: nonzeros regenerated from the seed): one definition for both products, x being theta or g.
#define LSCAPE_PRODUCT_ENTRIES(product)                                                                       \
  template <typename T>                                                                                     \
  const char* product##_indices_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,     \
                                     const int32_t* indices, const T* scales, const T* x, T* out, int64_t B,\
                                     void* stream) {                                                        \
    return product##_launch<T, false>(s, seg_start, chunk_ptr, indices, scales, x, out, B,                  \
                                      static_cast<cudaStream_t>(stream));                                   \
  }                                                                                                         \
  template <typename T>                                                                                     \
  const char* product##_implicit_cuda(const Spec& s, const T* scales, const T* x, T* out, int64_t B,        \
                                      void* stream) {                                                       \
    return product##_launch<T, true>(s, nullptr, nullptr, nullptr, scales, x, out, B,                       \
                                     static_cast<cudaStream_t>(stream));                                    \
  }
LSCAPE_PRODUCT_ENTRIES(matvec)
LSCAPE_PRODUCT_ENTRIES(rmatvec)
#undef LSCAPE_PRODUCT_ENTRIES

namespace {
// What a runtime query gives, or 0 where it fails (no driver, no device), its error cleared.
int or_zero(cudaError_t (*query)(int*)) {
  int v = 0;
  if (query(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}
}  // namespace

int cuda_runtime_version() { return or_zero(cudaRuntimeGetVersion); }

int cuda_device_count() { return or_zero(cudaGetDeviceCount); }

#define LSCAPE_INSTANTIATE(T)                                                                          \
  template const char* matvec_indices_cuda<T>(const Spec&, const int32_t*, const int64_t*, const int32_t*, \
                                              const T*, const T*, T*, int64_t, void*);                 \
  template const char* rmatvec_indices_cuda<T>(const Spec&, const int32_t*, const int64_t*,            \
                                               const int32_t*, const T*, const T*, T*, int64_t, void*); \
  template const char* matvec_implicit_cuda<T>(const Spec&, const T*, const T*, T*, int64_t, void*);   \
  template const char* rmatvec_implicit_cuda<T>(const Spec&, const T*, const T*, T*, int64_t, void*);
LSCAPE_INSTANTIATE(float)
LSCAPE_INSTANTIATE(double)
#undef LSCAPE_INSTANTIATE

}  // namespace proj
}  // namespace lscape
