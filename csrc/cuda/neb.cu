// CUDA kernels of the NEB step: step_cuda of lscape/neb.h, the same phases as the CPU kernel
// (csrc/cpu/neb.cpp) and the same scalar helpers (tangent_weights, force_coef, band_step).
//
// Phases, all asynchronous on the caller's stream:
//  force   per interior image of a running band: the climbing image (a scan of the band's energies), the
//          improved tangent's weights, the sums |tau|^2, <-g, tau>, |t+|^2, |t-|^2 (first pass over the
//          row), the force coefficient, then F = coef tau - g into x_out's row and the sums |F|^2, <F, v>,
//          |v|^2 (second pass) into work[(b n + i) 3 + 0..2].
//            D <= kChunk: one team per image, a warp (D <= kWarpMaxD) or a block, both passes in one
//                         kernel (force_kernel); no scratch.
//            D >  kChunk: the row is cut into C = ceil(D / kChunk) chunks of kChunk elements, a block per
//                         (image, chunk): tangent_kernel writes each chunk's four partial sums, force_split_kernel
//                         adds up its image's partials (fixed order) and writes its chunk's F and three partial
//                         sums, reduce_kernel adds those up (fixed order) into work.  The partial sums live in
//                         work after its B n 3 per-image sums (neb.h work_size_cuda).
//  band    thread per band: finiteness, fmax, convergence, then band_step; the band's scalars c1, c2, s go to
//          its unused row-0 slot of work, as on the CPU.
//  update  elementwise over the interior rows: v = c1 v + c2 F, x_out = x + s v (fire), x_out = x + s F
//          (descent), or x_out = x for bands not running after the band phase.
// Sums accumulate in double, per thread then across the team in a fixed order, of products rounded to float
// as the reference's are ((u * w).sum(dtype=float64)), so the kernel tracks the float32 reference closely even
// where F is a small difference of large terms.  Which path, team and chunking runs depends on D alone,
// never on B or n, so a band's results are bitwise the same whatever other bands share the call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "lscape/neb.h"

namespace lscape {
namespace neb {

namespace {

constexpr int kThreads = 256;                    // block size of every kernel
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int64_t kWarpMaxD = 1024;              // force phase: a warp per image up to this D, else a block
constexpr int64_t kChunk = kCudaChunk;           // force phase: longer rows are split into chunks of this
constexpr int kUpdatePer = 8;                    // update: elements per thread of a row tile (D >= kThreads)
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid cap; grid-stride loops cover the rest

unsigned grid_for(int64_t items, int64_t items_per_block) {
  const int64_t b = (items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

const char* last_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Band b and image i (1 .. n - 2) of interior row r, m = n - 2 interior images per band.
__device__ __forceinline__ void split_row(int64_t r, int64_t m, int64_t& b, int64_t& i) {
  b = r / m;
  i = 1 + (r - b * m);
}

// The climbing image: the first index of the largest energy among images 1 .. n - 2 (as the CPU scans).
__device__ __forceinline__ int32_t band_imax(const float* __restrict__ eb, int64_t n) {
  int32_t best = 1;
  double top = static_cast<double>(eb[1]);
  for (int64_t i = 2; i < n - 1; ++i) {
    const double ei = static_cast<double>(eb[i]);
    if (ei > top) best = static_cast<int32_t>(i), top = ei;
  }
  return best;
}

// Sums v[0 .. N) over a team of kTeam threads (a warp, or the whole block when kTeam == kThreads); every
// thread of the team gets the same totals.  All threads of the team must call it together; `red` is the
// block's shared array of kWarps * N doubles (unused for warps).
template <int kTeam, int N>
__device__ __forceinline__ void team_sum(double (&v)[N], double* red) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_xor_sync(kFull, v[k], o);
  }
  if (kTeam == 32) return;
  const int w = static_cast<int>(threadIdx.x) >> 5;
  if ((threadIdx.x & 31u) == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) red[w * N + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    double s = 0.0;
    for (int u = 0; u < kWarps; ++u) s += red[u * N + k];
    v[k] = s;
  }
  __syncthreads();  // red is reused by the next call
}

// One interior image's rows.
struct Rows {
  const float* __restrict__ xm;  // x[i - 1]
  const float* __restrict__ x0;  // x[i]
  const float* __restrict__ xp;  // x[i + 1]
  const float* __restrict__ g;   // g[i]
  const float* __restrict__ v;   // v[i]
  float* __restrict__ F;         // x_out[i]
};

__device__ __forceinline__ Rows rows_of(const float* x, const float* g, const float* v, float* x_out, int64_t b,
                                        int64_t i, int64_t n, int64_t D) {
  const int64_t o = (b * n + i) * D;
  return {x + o - D, x + o, x + o + D, g + o, v + o, x_out + o};
}

// This thread's share of the tangent sums over elements j0 + lane, j0 + lane + step, ... < j1:
// out += (|tau|^2, <-g, tau>, |t+|^2, |t-|^2).
__device__ __forceinline__ void tangent_part(const Rows& r, int64_t j0, int64_t j1, int64_t step, float wp,
                                             float wm, double (&out)[4]) {
  for (int64_t j = j0; j < j1; j += step) {
    const float x0 = r.x0[j];
    const float tp = r.xp[j] - x0, tm = x0 - r.xm[j];
    const float tau = wp * tp + wm * tm;
    out[0] += static_cast<double>(tau * tau);
    out[1] -= static_cast<double>(r.g[j] * tau);
    out[2] += static_cast<double>(tp * tp);
    out[3] += static_cast<double>(tm * tm);
  }
}

// The same elements: F = coef tau - g into r.F, out += (|F|^2, <F, v>, |v|^2).
__device__ __forceinline__ void force_part(const Rows& r, int64_t j0, int64_t j1, int64_t step, float wp,
                                           float wm, float coef, double (&out)[3]) {
  for (int64_t j = j0; j < j1; j += step) {
    const float x0 = r.x0[j];
    const float tau = wp * (r.xp[j] - x0) + wm * (x0 - r.xm[j]);
    const float F = coef * tau - r.g[j];
    r.F[j] = F;
    const float v = r.v[j];
    out[0] += static_cast<double>(F * F);
    out[1] += static_cast<double>(F * v);
    out[2] += static_cast<double>(v * v);
  }
}

// Everything the force-phase kernels read.
struct ForceArgs {
  Config c;
  int64_t B, n, D;
  const float* x;
  const float* e;
  const float* g;
  const float* v;
  float* x_out;
  const uint8_t* status;
  int32_t* imax;
  double* work;
  double* part4;  // split path: (rows, C, 4) tangent partial sums
  double* part3;  // split path: (rows, C, 3) force partial sums
  int64_t C;      // split path: chunks per row
};

// Rows of at most kChunk elements: a team of kTeam threads per interior image, both passes.
template <int kTeam>
__global__ void __launch_bounds__(kThreads, 4) force_kernel(const ForceArgs a) {
  __shared__ double red[kWarps * 4];
  constexpr int kTeamsPerBlock = kThreads / kTeam;
  const int lane = static_cast<int>(threadIdx.x) % kTeam;
  const int64_t m = a.n - 2, rows = a.B * m;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTeamsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + threadIdx.x / kTeam; r < rows;
       r += stride) {  // uniform over the team
    int64_t b, i;
    split_row(r, m, b, i);
    if (a.status[b] != kRunning) continue;
    const float* eb = a.e + b * a.n;
    const int32_t best = band_imax(eb, a.n);
    if (i == 1 && lane == 0) a.imax[b] = best;
    double wp, wm;
    tangent_weights(eb[i - 1], eb[i], eb[i + 1], &wp, &wm);
    const float wpf = static_cast<float>(wp), wmf = static_cast<float>(wm);
    const Rows rr = rows_of(a.x, a.g, a.v, a.x_out, b, i, a.n, a.D);
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    tangent_part(rr, lane, a.D, kTeam, wpf, wmf, t);
    team_sum<kTeam>(t, red);
    const bool climbing = a.c.climb && i == best;
    const float coef = static_cast<float>(force_coef(a.c, climbing, t[0], t[1], sqrt(t[2]), sqrt(t[3])));
    double f[3] = {0.0, 0.0, 0.0};
    force_part(rr, lane, a.D, kTeam, wpf, wmf, coef, f);
    team_sum<kTeam>(f, red);
    if (lane == 0) {
      double* w = a.work + (b * a.n + i) * 3;
      w[0] = f[0], w[1] = f[1], w[2] = f[2];
    }
  }
}

// Split path: what a block needs to know of its (interior image, chunk) item; false when the band is
// not running.
struct ChunkItem {
  int64_t r, chunk, b, i, j0, j1;
  float wp, wm;  // tangent weights, rounded as the other paths round them
  Rows rows;
};

__device__ __forceinline__ bool chunk_item(const ForceArgs& a, int64_t item, int64_t m, ChunkItem& it) {
  it.r = item / a.C;
  it.chunk = item - it.r * a.C;
  split_row(it.r, m, it.b, it.i);
  if (a.status[it.b] != kRunning) return false;
  const float* eb = a.e + it.b * a.n;
  double wp, wm;
  tangent_weights(eb[it.i - 1], eb[it.i], eb[it.i + 1], &wp, &wm);
  it.wp = static_cast<float>(wp), it.wm = static_cast<float>(wm);
  it.rows = rows_of(a.x, a.g, a.v, a.x_out, it.b, it.i, a.n, a.D);
  it.j0 = it.chunk * kChunk, it.j1 = min(a.D, it.j0 + kChunk);
  return true;
}

// The split path's passes: a block per (interior image, chunk) item of a running band, in turn:
// body(item, it), it the item's ChunkItem.
template <class Body>
__device__ __forceinline__ void for_chunk_items(const ForceArgs& a, Body&& body) {
  const int64_t m = a.n - 2, items = a.B * m * a.C;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {  // uniform over the block
    ChunkItem it;
    if (chunk_item(a, item, m, it)) body(item, it);
  }
}

// Split path, first pass: a block per (interior image, chunk), the chunk's tangent partial sums.
__global__ void __launch_bounds__(kThreads) tangent_kernel(const ForceArgs a) {
  __shared__ double red[kWarps * 4];
  for_chunk_items(a, [&](int64_t item, const ChunkItem& it) {
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    tangent_part(it.rows, it.j0 + threadIdx.x, it.j1, kThreads, it.wp, it.wm, t);
    team_sum<kThreads>(t, red);
    if (threadIdx.x == 0) {
      double* p = a.part4 + item * 4;
      p[0] = t[0], p[1] = t[1], p[2] = t[2], p[3] = t[3];
    }
  });
}

// Split path, second pass: a block per (interior image, chunk): the image's tangent sums from all its
// chunks' partials, then the chunk's F and force partial sums.
__global__ void __launch_bounds__(kThreads) force_split_kernel(const ForceArgs a) {
  __shared__ double red[kWarps * 4];
  for_chunk_items(a, [&](int64_t item, const ChunkItem& it) {
    const int64_t r = it.r, b = it.b, i = it.i;
    const int32_t best = band_imax(a.e + b * a.n, a.n);
    if (i == 1 && it.chunk == 0 && threadIdx.x == 0) a.imax[b] = best;
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    const double* p = a.part4 + r * a.C * 4;
    for (int64_t k = threadIdx.x; k < a.C; k += kThreads) {
      t[0] += p[k * 4], t[1] += p[k * 4 + 1], t[2] += p[k * 4 + 2], t[3] += p[k * 4 + 3];
    }
    team_sum<kThreads>(t, red);
    const bool climbing = a.c.climb && i == best;
    const float coef = static_cast<float>(force_coef(a.c, climbing, t[0], t[1], sqrt(t[2]), sqrt(t[3])));
    double f[3] = {0.0, 0.0, 0.0};
    force_part(it.rows, it.j0 + threadIdx.x, it.j1, kThreads, it.wp, it.wm, coef, f);
    team_sum<kThreads>(f, red);
    if (threadIdx.x == 0) {
      double* q = a.part3 + item * 3;
      q[0] = f[0], q[1] = f[1], q[2] = f[2];
    }
  });
}

// Split path: a warp per interior image adds up its chunks' force partial sums into work.
__global__ void __launch_bounds__(kThreads) reduce_kernel(const ForceArgs a) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t m = a.n - 2, rows = a.B * m;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); r < rows; r += stride) {
    int64_t b, i;
    split_row(r, m, b, i);
    if (a.status[b] != kRunning) continue;  // uniform over the warp
    double f[3] = {0.0, 0.0, 0.0};
    const double* q = a.part3 + r * a.C * 3;
    for (int64_t k = lane; k < a.C; k += 32) f[0] += q[k * 3], f[1] += q[k * 3 + 1], f[2] += q[k * 3 + 2];
    team_sum<32>(f, nullptr);
    if (lane == 0) {
      double* w = a.work + (b * a.n + i) * 3;
      w[0] = f[0], w[1] = f[1], w[2] = f[2];
    }
  }
}

// Thread per band: divergence, fmax, convergence and the optimizer scalars (into work's row-0 slot).
__global__ void __launch_bounds__(kThreads)
band_kernel(const Config c, int64_t B, int64_t n, const float* __restrict__ e, double* __restrict__ dt,
            double* __restrict__ a, int32_t* __restrict__ nsteps, uint8_t* __restrict__ status,
            double* __restrict__ fmax, double* __restrict__ work) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B; b += stride) {
    if (status[b] != kRunning) continue;
    const float* eb = e + b * n;
    bool finite = true;
    double F2 = 0.0, vf = 0.0, v2 = 0.0, F2max = 0.0;
    for (int64_t i = 0; i < n; ++i) finite = finite && isfinite(static_cast<double>(eb[i]));
    for (int64_t i = 1; i < n - 1; ++i) {
      const double* w = work + (b * n + i) * 3;
      finite = finite && isfinite(w[0]);
      F2 += w[0], vf += w[1], v2 += w[2];
      F2max = w[0] > F2max ? w[0] : F2max;
    }
    if (!finite) {
      status[b] = kDiverged;
      fmax[b] = __longlong_as_double(0x7FF8000000000000LL);  // quiet NaN
      continue;
    }
    const double fm = sqrt(F2max);
    fmax[b] = fm;
    if (fm < c.fmax_tol) {
      status[b] = kConverged;
      continue;
    }
    double* w0 = work + b * n * 3;
    band_step(c, vf, F2, v2, dt + b, a + b, nsteps + b, w0, w0 + 1, w0 + 2);
  }
}

// Elementwise update of the interior rows.  A block item is a tile of kUpdatePer * L elements of each of
// kThreads / L rows, L = the lanes per row (a power of two, min(kThreads, D rounded up)).
__global__ void __launch_bounds__(kThreads)
update_kernel(int method, int64_t B, int64_t n, int64_t D, const float* __restrict__ x, float* __restrict__ v,
              float* __restrict__ x_out, const uint8_t* __restrict__ status, const double* __restrict__ work,
              int L, int per) {
  const int64_t m = n - 2, rows = B * m;
  const int rpb = kThreads / L;
  const int64_t tile_len = static_cast<int64_t>(L) * per;
  const int64_t tiles = (D + tile_len - 1) / tile_len, groups = (rows + rpb - 1) / rpb;
  const int64_t items = groups * tiles;
  const int sub = static_cast<int>(threadIdx.x) / L, lane = static_cast<int>(threadIdx.x) % L;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t grp = item / tiles, tile = item - grp * tiles;
    const int64_t r = grp * rpb + sub;
    if (r >= rows) continue;
    int64_t b, i;
    split_row(r, m, b, i);
    const int64_t o = (b * n + i) * D;
    const float* xi = x + o;
    float* xo = x_out + o;
    const int64_t j0 = tile * tile_len + lane, j1 = min(D, (tile + 1) * tile_len);
    if (status[b] != kRunning) {
      for (int64_t j = j0; j < j1; j += L) xo[j] = xi[j];
      continue;
    }
    const double* w0 = work + b * n * 3;
    const float s = static_cast<float>(w0[2]);
    if (method == kFire) {
      const float c1 = static_cast<float>(w0[0]), c2 = static_cast<float>(w0[1]);
      float* vi = v + o;
      for (int64_t j = j0; j < j1; j += L) {
        const float vn = c1 * vi[j] + c2 * xo[j];
        vi[j] = vn;
        xo[j] = xi[j] + s * vn;
      }
    } else {
      for (int64_t j = j0; j < j1; j += L) xo[j] = xi[j] + s * xo[j];
    }
  }
}

}  // namespace

const char* step_cuda(const Config& c, int64_t B, int64_t n, int64_t D, const float* x, const float* e,
                      const float* g, float* v, float* x_out, double* dt, double* a, int32_t* nsteps,
                      uint8_t* status, double* fmax, int32_t* imax, double* work, void* stream) {
  if (B < 0 || n < 3 || D < 1 || (c.method != kFire && c.method != kDescent))
    return "lscape::neb: invalid arguments (need B >= 0, n >= 3, D >= 1, method 0 or 1)";
  if (B == 0) return nullptr;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t rows = B * (n - 2);
  ForceArgs fa{c, B, n, D, x, e, g, v, x_out, status, imax, work, nullptr, nullptr, 1};

  // Force phase.
  if (D <= kChunk) {
    if (D <= kWarpMaxD)
      force_kernel<32><<<grid_for(rows, kWarps), kThreads, 0, st>>>(fa);
    else
      force_kernel<kThreads><<<grid_for(rows, 1), kThreads, 0, st>>>(fa);
    if (const char* err = last_error()) return err;
  } else {
    fa.C = (D + kChunk - 1) / kChunk;
    const int64_t items = rows * fa.C;
    fa.part4 = work + B * n * 3;
    fa.part3 = fa.part4 + items * 4;
    tangent_kernel<<<grid_for(items, 1), kThreads, 0, st>>>(fa);
    force_split_kernel<<<grid_for(items, 1), kThreads, 0, st>>>(fa);
    reduce_kernel<<<grid_for(rows, kWarps), kThreads, 0, st>>>(fa);
    if (const char* err = last_error()) return err;
  }

  // Band phase.
  band_kernel<<<grid_for(B, kThreads), kThreads, 0, st>>>(c, B, n, e, dt, a, nsteps, status, fmax, work);
  if (const char* err = last_error()) return err;

  // Update phase.
  int L = 1;
  while (L < kThreads && L < D) L *= 2;
  const int per = D >= kThreads ? kUpdatePer : 1;
  const int64_t tile_len = static_cast<int64_t>(L) * per;
  const int64_t items = (rows + kThreads / L - 1) / (kThreads / L) * ((D + tile_len - 1) / tile_len);
  update_kernel<<<grid_for(items, 1), kThreads, 0, st>>>(c.method, B, n, D, x, v, x_out, status, work, L, per);
  return last_error();
}

}  // namespace neb
}  // namespace lscape
