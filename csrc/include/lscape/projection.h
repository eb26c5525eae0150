// The sparse +-1 projection P (D x d): its definition, shared by every backend, and the kernel API.
//
// Definition (mirrored by python/lscape/reference/projection.py; see docs in projection.py):
//   rows are cut into chunks of S = seg_rows rows (S a power of two fixed by D and the density);
//   the nonzeros of column j inside chunk c (a "segment") come from the random stream
//   stream_key(seed, j << 32 | c): starting at the chunk's first row, draw k gives the gap
//   g_k = floor(log2(u_k) / log2(1 - p)) (u_k uniform in (0, 1]) to the next nonzero row, and the top
//   bit of the draw is the sign.  Geometric gaps are memoryless, so restarting at every chunk keeps each
//   entry independently nonzero with probability p, while every chunk can be generated on its own.
//   Column j's nonzeros are +-1/sqrt(n_j) with n_j its count; an empty column stays zero.
//
// Kernels are pure functions on buffers: pointers, sizes, a thread count (CPU) or stream (CUDA).  This
// header is the family's one contract: the CPU API, the CUDA API and the shared definition.
#pragma once
#include <cstdint>

#include "lscape/rng.h"

namespace lscape {
namespace proj {

struct Spec {
  int64_t D;          // rows (1 <= D < 2^31)
  int64_t d;          // columns (1 <= d <= D)
  uint64_t seed;
  float cinv;         // float32(1 / log2(1 - density)); <= 0, and -0 when density is 1
  int64_t seg_rows;   // S: rows per chunk, a power of two <= 2^24
  int64_t n_chunks;   // ceil(D / S)
};

LS_HD uint64_t segment_key(const Spec& s, int64_t col, int64_t chunk) {
  return rng::stream_key(s.seed, (static_cast<uint64_t>(col) << 32) | static_cast<uint64_t>(chunk));
}

// The gap encoded by one draw: rows skipped before the next nonzero, capped at smax = float(S) (a gap
// of S always ends the segment; S <= 2^24 is exact in float32, and capping in float keeps huge gaps of
// tiny densities from overflowing the integer).  Branch-free so that loops of draws vectorise.
LS_HD uint32_t draw_gap(uint32_t h, float cinv, float smax) {
  const float t = rng::fmul(rng::log2_approx(rng::uniform24(h)), cinv);
  return static_cast<uint32_t>(static_cast<int32_t>(t < smax ? t : smax));
}

// Walks one segment's nonzeros in increasing row order.  Sign bit 1 means -1.
struct SegmentCursor {
  uint64_t key;
  uint32_t k;      // next draw
  uint32_t pos;    // first row the next nonzero may occupy
  uint32_t end;    // one past the chunk's last row
  float smax;
  float cinv;

  LS_HD SegmentCursor(const Spec& s, int64_t col, int64_t chunk)
      : key(segment_key(s, col, chunk)),
        k(0),
        pos(static_cast<uint32_t>(chunk * s.seg_rows)),
        end(static_cast<uint32_t>((chunk + 1) * s.seg_rows < s.D ? (chunk + 1) * s.seg_rows : s.D)),
        smax(static_cast<float>(s.seg_rows)),
        cinv(s.cinv) {}

  LS_HD bool next(uint32_t& row, uint32_t& neg) {
    const uint32_t h = rng::draw32(key, k++);
    const uint32_t r = pos + draw_gap(h, cinv, smax);  // pos < 2^31, gap <= 2^24: no overflow
    if (r >= end) return false;
    row = r;
    neg = h >> 31;
    pos = r + 1;
    return true;
  }
};

// Row index with the sign folded into bit 31.
LS_HD int32_t pack_index(uint32_t row, uint32_t neg) { return static_cast<int32_t>(row | (neg << 31)); }

// ---- storage layout of the "indices" kind -------------------------------------------------------
// indices: packed rows (pack_index), chunk-major, then column, then increasing row.
// chunk_ptr[c] (int64, n_chunks + 1 entries): offset in `indices` of chunk c's first nonzero.
// seg_start[c * (d + 1) + j] (int32, n_chunks x (d + 1)): offset of segment (j, c) from chunk_ptr[c];
//   entry j = d is the chunk's total, so segment (j, c) holds seg_start[.. j + 1] - seg_start[.. j].
// (Offsets relative to the chunk keep 4 bytes per segment; a chunk must hold fewer than 2^31 nonzeros.)

// ---- SELL-C-sigma layout of the "indices" kind on the CPU (Kreutzer et al. 2014) ------------------
// The same nonzeros, re-laid row-major so that P theta gathers from the d-vector (in L1) and writes each
// output row once, and P^T g streams rows into a d-sized accumulator:
//   rows are taken in windows of kSellSigma rows and, inside each window, sorted by their nonzero count
//   (descending; ties keep row order); the sorted order, cut into slices of kSellC consecutive "slots",
//   is stored as perm[p] (uint16, one per slot p < n_slices * C): slot p holds row
//   (p & ~(kSellSigma - 1)) + perm[p].  Slots p >= D are padding (only in the last slice).
//   slice s (slots s*C .. s*C + C - 1) has width w_s = its longest row; its entries are column-major:
//   entry (k, l) (k < w_s, lane l < C) at cols[slice_ptr[s] + k * C + l] is the k-th nonzero (in
//   increasing column order) of slot s*C + l's row, as column << 1 | sign (uint16, "narrow", when
//   d <= kSellNarrowMaxD; else uint32, "wide").  With the sign in the low bit an entry indexes a signed
//   copy of the vector, [+x_0, -x_0, +x_1, -x_1, ...], so the inner loops spend nothing on signs.  A row
//   shorter than w_s is padded with column d, sign 0: products read a zero there (their copies of x
//   have d + 1 entries, the last one 0).
//   slice_ptr (int64, n_slices + 1 entries): offsets of the slices in `cols`, in entries.
// C and sigma do not depend on the instruction set, so every ISA build reads the same buffers.  (The CPU
// kernels run a slice's 16 lanes as 16 scalar chains: AVX-512 / AVX2 gathers were no faster on Zen 4.)
constexpr int64_t kSellC = 16;
constexpr int64_t kSellSigma = 1024;   // a power of two, a multiple of kSellC, <= 65536
constexpr int64_t kSellNarrowMaxD = 32767;

LS_HD int64_t sell_slices(int64_t D) { return (D + kSellC - 1) / kSellC; }
LS_HD bool sell_narrow(int64_t d) { return d <= kSellNarrowMaxD; }
// The row that slot p holds (p < D).
LS_HD int64_t sell_row(const uint16_t* perm, int64_t p) { return (p & ~(kSellSigma - 1)) + perm[p]; }
// One entry's column and sign (1 = negative), either width.
LS_HD uint32_t sell_col(uint32_t e) { return e >> 1; }
LS_HD uint32_t sell_neg(uint32_t e) { return e & 1u; }
template <typename E>
LS_HD E sell_pack(uint32_t col, uint32_t neg) { return static_cast<E>(col << 1 | neg); }

// ---- the column-band copy, for one-vector products on the CPU (built on first use, projection.py) --
// P theta (B = 1) reads the signed vector at random: above d ~ 2,000 (16 KB) it no longer fits L1 next to
// the entry stream, and its misses, not the arithmetic, set the time (at the paper's d = 9,000, 72 KB).
// The band copy holds the same entries once more, laid out so that the product reads one band of
// columns at a time:
//   columns are cut into nb bands, column j in band sell_band(j, nb, d) = j nb / d (increasing with j);
//   rows are taken in windows of W rows (W a power of two, a multiple of C, <= 65536) and, inside each,
//   sorted by their counts per band: band 0's descending, then band 1's, ..., then row (so slices of C
//   rows have like counts in every band and padding stays low); slot p of window w = p / W holds row
//   w W + bperm[p], as sell_row does for sigma windows;
//   a window's slices are stored band after band: block (w, b, s) (slice s of the ns_w slices of window
//   w, band b) is block number w spw nb + b ns_w + s in storage order (spw = W / C) and holds that
//   slice's entries in band b, column-major over the C lanes exactly as a SELL slice does (same entry
//   format and padding), bwidth[block] (uint16) entries per lane; bstart[w nb + b] (int64) is where the
//   (window, band) group's first block starts, so a block's offset is its group's start plus C times the
//   widths before it in the group.
// The product keeps each row's running sum between bands, and the bands come in increasing column order,
// so a row is still summed in increasing column order: results are bit-identical to the SELL kernel's.
// Threads take contiguous slice ranges, not windows, so any W balances them.  P^T g (B = 1) runs on it
// too: each band adds into its part of the accumulator (1.1-1.15x faster at the paper's size).
// (Made the layout of every product, this was tried and not kept: B > 1 and P^T g got 1.2-1.6x slower.)
LS_HD int64_t sell_band(uint32_t col, int64_t nb, int64_t d) { return static_cast<int64_t>(col) * nb / d; }

// ---- CPU kernels ---------------------------------------------------------------------------------
#include "lscape/projection_cpu_api.inc"

// ---- CUDA kernels (csrc/cuda/projection.cu) -------------------------------------------------------
// Plain C++: no CUDA or pybind11 types.  Pointers are device pointers; `stream` is a cudaStream_t.  Each
// returns nullptr on success or a static error string (a CUDA launch error).  Same semantics and
// storage layout as the CPU kernels.
const char* count_cuda(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, void* stream);
const char* fill_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
                      void* stream);
template <typename T>
const char* matvec_indices_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                                const int32_t* indices, const T* scales, const T* theta, T* out, int64_t B,
                                void* stream);
template <typename T>
const char* rmatvec_indices_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                                 const int32_t* indices, const T* scales, const T* g, T* out, int64_t B,
                                 void* stream);
template <typename T>
const char* matvec_implicit_cuda(const Spec& s, const T* scales, const T* theta, T* out, int64_t B,
                                 void* stream);
template <typename T>
const char* rmatvec_implicit_cuda(const Spec& s, const T* scales, const T* g, T* out, int64_t B,
                                  void* stream);

// Driver-visible facts for `lscape info`: runtime version and device count (0 on error).
int cuda_runtime_version();
int cuda_device_count();

}  // namespace proj
}  // namespace lscape
