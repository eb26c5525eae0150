// CUDA kernels of the fused tiny-MLP ensembles: loss_grad_cuda and train_cuda of lscape/mlp.h, with the
// semantics that header states (layout, loss, optimizer rules, divergence, history).
//
// Two paths, chosen by (K, N) alone, so a model's results never depend on the batch it is in:
//  fixed    K and N known at compile time (the sizes in with_fixed(); 5x5 is the paper's): a model per
//           thread.  Params, grads and activations are fully unrolled arrays, so they live in registers
//           (what does not fit spills to L1-cached local memory); x and y are read with warp-uniform
//           __ldg (one transaction per warp per point).  A step is one pass over the points, forward
//           then backward per point, accumulating r * dz (the 2/P factor is applied once at the end).
//           Rows of the (M, D) arrays a warp touches (params, state, grad) move through a 32 x 32 shared
//           memory tile per warp, so global accesses are coalesced although each thread owns a row.
//  generic  any K <= 8, N <= 16: a model per warp, lanes over points (32 at a time).  The model's params
//           and grads sit in shared memory (read as broadcasts), each lane's activations and dz in its
//           own shared-memory column; every gradient entry is warp-summed per batch of points and added
//           by lane 0.  The update runs with lanes over parameters, coalesced.  Bounded resources: at
//           most ~36 KB of shared memory per warp and no local-memory arrays.
// A training step first computes every updated value without storing it (the check pass: loss, grads
// and updated params all finite), then, for the models that passed, computes them again and stores
// them (the apply pass); a failing model is marked diverged and frozen.  Both passes run the same code
// on the same inputs, so the stored values are the checked ones.
// Training runs all its steps inside the kernel; train_cuda splits long runs into launches of about
// kLaunchWork multiply-adds (state lives in global memory between them), so no launch runs for long.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "lscape/mlp.h"

namespace lscape {
namespace mlp {

namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kFixedWarps = 4;               // warps per block of the fixed-size kernels
constexpr int kTile = 33;                    // row stride of a 32 x 32 transpose tile (no bank conflicts)
constexpr int kGenericMaxWarps = 4;          // warps (models) per block of the generic kernels
constexpr size_t kGenericSmem = 48 * 1024;   // shared memory a generic block may use without opt-in
constexpr double kLaunchWork = 1e12;         // M * P * D * steps per train launch: well under a second

// Optimizer constants, computed once on the host: as kernel parameters they sit in constant memory and
// take no registers across the point loop.
struct Hyper {
  float lr, momentum, rho, one_m_rho, eps, one_m_beta1, beta2, one_m_beta2;
  double lr_d, beta1_d, beta2_d;  // adam's bias corrections are computed in double (mlp.h)
};

Hyper make_hyper(const OptConfig& o) {
  auto f = [](double v) { return static_cast<float>(v); };  // 1 - x in double first, as torch does
  return {f(o.lr), f(o.momentum), f(o.rho), f(1.0 - o.rho), f(o.eps), f(1.0 - o.beta1), f(o.beta2),
          f(1.0 - o.beta2), o.lr, o.beta1, o.beta2};
}

// Everything a kernel needs besides the spec; pointers are device pointers.
struct Args {
  int64_t M, P;
  float* params;
  float* state0;
  float* state1;
  uint8_t* diverged;
  const float* x;
  const float* y;
  float* loss;     // loss_grad
  float* grad;     // loss_grad, may be null
  float* history;  // train, may be null
  int64_t step0, i0, i1, record_every, n_rec;  // train: this launch runs steps i in [i0, i1)
  Hyper hp;  // train
  float Pf;          // float(P)
  float two_over_p;  // float(2 / P): dL/d(output) = two_over_p * r
};

// Run-time layout of a K x N model (mlp.h), for the generic kernels.
struct Dims {
  int K, N, D;
  int wk, bk;  // output layer's W and b
  __device__ int w(int l) const { return 2 * N + (l - 1) * (N * N + N); }  // hidden layer l in [1, K)
};

// Compile-time layout of a K x N model (mlp.h), for the fixed kernels.
template <int K, int N>
struct Fixed {
  static constexpr int W0 = 0, B0 = N;
  static constexpr int W(int l) { return 2 * N + (l - 1) * (N * N + N); }  // hidden layer l in [1, K)
  static constexpr int B(int l) { return W(l) + N * N; }
  static constexpr int WK = 2 * N + (K - 1) * (N * N + N), BK = WK + N, D = BK + 1;
};

// torch.relu: NaN stays NaN (so a NaN is never hidden from the divergence check), ReLU'(0) = 0.
__device__ __forceinline__ float relu(float z) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float h;  // one instruction instead of a compare and a select
  asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(h) : "f"(z));
  return h;
#else
  return z < 0.f ? 0.f : z;
#endif
}
__device__ __forceinline__ float qnan() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float relu_mask(float h) { return h > 0.f ? 1.f : 0.f; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;  // bitwise the same on every lane: each butterfly step adds the same pair
}

// ---- optimizer ----------------------------------------------------------------------------------

struct AdamStep {
  float step_size, bc2;
};

template <int Opt>
__device__ __forceinline__ AdamStep adam_step(const Hyper& h, int64_t t) {
  if (Opt != kAdam) return {0.f, 0.f};
  const double td = static_cast<double>(t);
  return {static_cast<float>(h.lr_d / (1.0 - pow(h.beta1_d, td))), static_cast<float>(sqrt(1.0 - pow(h.beta2_d, td)))};
}

// One parameter's update (mlp.h): advances s0, s1 in place and returns the new parameter.
template <int Opt>
__device__ __forceinline__ float opt_step(const Hyper& h, const AdamStep& as, float p, float g, float& s0, float& s1) {
  if (Opt == kSgd) {
    s0 = h.momentum * s0 + g;
    return p - h.lr * s0;
  }
  if (Opt == kAdadelta) {
    s0 = h.rho * s0 + h.one_m_rho * g * g;
    const float delta = sqrtf(s1 + h.eps) / sqrtf(s0 + h.eps) * g;
    s1 = h.rho * s1 + h.one_m_rho * delta * delta;
    return p - h.lr * delta;
  }
  s0 = s0 + h.one_m_beta1 * (g - s0);
  s1 = h.beta2 * s1 + h.one_m_beta2 * g * g;
  return p - as.step_size * (s0 / (sqrtf(s1) / as.bc2 + h.eps));
}

// NaN into history[j - 1] for every recorded step i in [from, to) (i + 1 = j * record_every).
__device__ void nan_history(float* hrow, int64_t from, int64_t to, int64_t re) {
  if (!hrow) return;
  for (int64_t j = (from + re) / re; j <= to / re; ++j) hrow[j - 1] = qnan();
}

// ---- fixed path: a model per thread -------------------------------------------------------------

// Warp-cooperative copy of columns [k0, k0 + 32) of the warp's model rows mbase + r (r < rows) of A
// (row length D) into t[r * kTile + c], coalesced; each thread then reads its own row t[lane * kTile + c].
__device__ __forceinline__ void tile_load(float* t, const float* A, int64_t mbase, int rows, int D, int k0,
                                          int lane) {
  __syncwarp();  // everyone is done with the previous contents
  if (k0 + lane < D) {
    const float* a = A + mbase * D + k0 + lane;
    for (int r = 0; r < rows; ++r) t[r * kTile + lane] = a[static_cast<int64_t>(r) * D];
  }
  __syncwarp();
}

// The reverse, for the rows whose bit is set in `rows`.
__device__ __forceinline__ void tile_store(const float* t, float* A, int64_t mbase, unsigned rows, int D, int k0,
                                           int lane) {
  __syncwarp();  // the tile is complete
  if (k0 + lane < D) {
    float* a = A + mbase * D + k0 + lane;
    for (unsigned b = rows; b; b &= b - 1) {
      const int r = __ffs(b) - 1;
      a[static_cast<int64_t>(r) * D] = t[r * kTile + lane];
    }
  }
}

template <int D>
__device__ __forceinline__ void rows_to_regs(float (&v)[D], float* t, const float* A, int64_t mbase, int rows,
                                             int lane) {
#pragma unroll
  for (int c = 0; c < D; c += 32) {
    tile_load(t, A, mbase, rows, D, c, lane);
#pragma unroll
    for (int j = 0; j < 32; ++j)
      if (c + j < D) v[c + j] = t[lane * kTile + j];
  }
}

template <int D>
__device__ __forceinline__ void regs_to_rows(const float (&v)[D], float* t, float* A, int64_t mbase,
                                             unsigned rows, int lane) {
#pragma unroll
  for (int c = 0; c < D; c += 32) {
    __syncwarp();  // the previous tile_store has read t
#pragma unroll
    for (int j = 0; j < 32; ++j)
      if (c + j < D) t[lane * kTile + j] = v[c + j];
    tile_store(t, A, mbase, rows, D, c, lane);
  }
}

// One point: forward, and with kGrad the backward pass adding r * d(output)/d(params) into g.
// Returns the residual r = f(x) - y.
template <int K, int N, bool kGrad>
__device__ __forceinline__ float fixed_point(const float (&p)[Fixed<K, N>::D], float (&g)[Fixed<K, N>::D],
                                             float x, float y) {
  using F = Fixed<K, N>;
  float h[K][N];  // post-ReLU activations of the hidden layers
#pragma unroll
  for (int j = 0; j < N; ++j) h[0][j] = relu(fmaf(p[F::W0 + j], x, p[F::B0 + j]));
#pragma unroll
  for (int l = 1; l < K; ++l) {
#pragma unroll
    for (int o = 0; o < N; ++o) {
      float z = p[F::B(l) + o];
#pragma unroll
      for (int i = 0; i < N; ++i) z = fmaf(p[F::W(l) + o * N + i], h[l - 1][i], z);
      h[l][o] = relu(z);
    }
  }
  float out = p[F::BK];
#pragma unroll
  for (int i = 0; i < N; ++i) out = fmaf(p[F::WK + i], h[K - 1][i], out);
  const float r = out - y;
  if (!kGrad) return r;

  float dz[N];  // r * dL/d(pre-activation) of the layer being visited
  g[F::BK] += r;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    g[F::WK + i] = fmaf(r, h[K - 1][i], g[F::WK + i]);
    dz[i] = (r * p[F::WK + i]) * relu_mask(h[K - 1][i]);
  }
#pragma unroll
  for (int l = K - 1; l >= 1; --l) {
    float dn[N];
#pragma unroll
    for (int i = 0; i < N; ++i) dn[i] = 0.f;
#pragma unroll
    for (int o = 0; o < N; ++o) {
      g[F::B(l) + o] += dz[o];
#pragma unroll
      for (int i = 0; i < N; ++i) {
        g[F::W(l) + o * N + i] = fmaf(dz[o], h[l - 1][i], g[F::W(l) + o * N + i]);
        dn[i] = fmaf(dz[o], p[F::W(l) + o * N + i], dn[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) dz[i] = dn[i] * relu_mask(h[l - 1][i]);
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    g[F::W0 + j] = fmaf(dz[j], x, g[F::W0 + j]);
    g[F::B0 + j] += dz[j];
  }
  return r;
}

// Sum over the points of r^2 (returned) and, with kGrad, of r * d(output)/d(params) added into g.
template <int K, int N, bool kGrad>
__device__ __forceinline__ float fixed_pass(const float (&p)[Fixed<K, N>::D], float (&g)[Fixed<K, N>::D],
                                            const Args& a) {
  float lsum = 0.f;
  float xn = __ldg(a.x), yn = __ldg(a.y);
  for (int64_t q = 0; q < a.P; ++q) {
    const float xq = xn, yq = yn;
    if (q + 1 < a.P) {  // fetch the next point while this one computes
      xn = __ldg(a.x + q + 1);
      yn = __ldg(a.y + q + 1);
    }
    const float r = fixed_point<K, N, kGrad>(p, g, xq, yq);
    lsum = fmaf(r, r, lsum);
  }
  return lsum;
}

template <int K, int N, bool kGrad>
__global__ void __launch_bounds__(kFixedWarps * 32) loss_grad_fixed(const Args a) {
  constexpr int D = Fixed<K, N>::D;
  __shared__ float tiles[kFixedWarps][32 * kTile];
  const int lane = static_cast<int>(threadIdx.x & 31u), warp = static_cast<int>(threadIdx.x >> 5);
  const int64_t mbase = (static_cast<int64_t>(blockIdx.x) * kFixedWarps + warp) * 32;
  if (mbase >= a.M) return;  // the whole warp
  const int rows = static_cast<int>(std::min<int64_t>(32, a.M - mbase));
  const unsigned valid_rows = rows == 32 ? kFull : (1u << rows) - 1u;
  float* t = tiles[warp];
  float p[D], g[D];
  rows_to_regs(p, t, a.params, mbase, rows, lane);
#pragma unroll
  for (int k = 0; k < D; ++k) g[k] = 0.f;
  const float lsum = fixed_pass<K, N, kGrad>(p, g, a);
  if (lane < rows) a.loss[mbase + lane] = lsum / a.Pf;
  if (kGrad) {
#pragma unroll
    for (int k = 0; k < D; ++k) g[k] *= a.two_over_p;
    regs_to_rows(g, t, a.grad, mbase, valid_rows, lane);
  }
}

// Calls f(k, s0, s1) for every parameter k < D of this lane's row, with the row's optimizer state
// staged through the warp's shared tiles (coalesced).  With kStore, what f leaves in s0/s1 is written
// back for the rows in `store`; the check and apply passes of a step share this sweep.
template <int D, bool kTwo, bool kStore, class F>
__device__ __forceinline__ void state_sweep(float* t0, float* t1, const Args& a, int64_t mbase, int rows,
                                            unsigned store, int lane, F&& f) {
#pragma unroll
  for (int c = 0; c < D; c += 32) {
    tile_load(t0, a.state0, mbase, rows, D, c, lane);
    if (kTwo) tile_load(t1, a.state1, mbase, rows, D, c, lane);
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      if (c + j < D) {
        float s0 = t0[lane * kTile + j], s1 = kTwo ? t1[lane * kTile + j] : 0.f;
        f(c + j, s0, s1);
        if (kStore) {
          t0[lane * kTile + j] = s0;
          if (kTwo) t1[lane * kTile + j] = s1;
        }
      }
    }
    if (kStore) {
      tile_store(t0, a.state0, mbase, store, D, c, lane);
      if (kTwo) tile_store(t1, a.state1, mbase, store, D, c, lane);
    }
  }
}

template <int K, int N, int Opt>
__global__ void __launch_bounds__(kFixedWarps * 32) train_fixed(const Args a) {
  constexpr int D = Fixed<K, N>::D;
  constexpr bool kTwo = Opt != kSgd;  // a second state array
  __shared__ float tiles[kFixedWarps][kTwo ? 2 : 1][32 * kTile];
  const int lane = static_cast<int>(threadIdx.x & 31u), warp = static_cast<int>(threadIdx.x >> 5);
  const int64_t mbase = (static_cast<int64_t>(blockIdx.x) * kFixedWarps + warp) * 32;
  if (mbase >= a.M) return;  // the whole warp
  const int rows = static_cast<int>(std::min<int64_t>(32, a.M - mbase));
  const int64_t m = mbase + lane;
  const bool valid = lane < rows;
  float* t0 = tiles[warp][0];
  float* t1 = tiles[warp][kTwo ? 1 : 0];
  float* hrow = (a.history && valid) ? a.history + m * a.n_rec : nullptr;
  bool frozen = !valid || a.diverged[m] != 0;
  const unsigned live = __ballot_sync(kFull, !frozen);  // rows this launch may change
  const int64_t re = a.record_every;

  float p[D];
  rows_to_regs(p, t0, a.params, mbase, rows, lane);
  for (int64_t i = a.i0; i < a.i1; ++i) {
    if (__all_sync(kFull, frozen)) {
      nan_history(hrow, i, a.i1, re);
      break;
    }
    float g[D];
#pragma unroll
    for (int k = 0; k < D; ++k) g[k] = 0.f;
    float lsum = 0.f;
    if (!frozen) lsum = fixed_pass<K, N, true>(p, g, a);
    const float loss = lsum / a.Pf;
    bool ok = !frozen && isfinite(loss);
#pragma unroll
    for (int k = 0; k < D; ++k) {
      g[k] *= a.two_over_p;
      ok &= isfinite(g[k]);
    }
    const AdamStep as = adam_step<Opt>(a.hp, a.step0 + i + 1);
    // Check pass: every updated parameter finite.
    if (__any_sync(kFull, ok))
      state_sweep<D, kTwo, false>(t0, t1, a, mbase, rows, 0u, lane, [&](int k, float& s0, float& s1) {
        ok &= isfinite(opt_step<Opt>(a.hp, as, p[k], g[k], s0, s1));
      });
    // Apply pass, for the rows that passed.
    const unsigned applied = __ballot_sync(kFull, ok);
    if (applied)
      state_sweep<D, kTwo, true>(t0, t1, a, mbase, rows, applied, lane, [&](int k, float& s0, float& s1) {
        const float pn = opt_step<Opt>(a.hp, as, p[k], g[k], s0, s1);
        if (ok) p[k] = pn;
      });
    if (!frozen && !ok) {
      a.diverged[m] = 1;
      frozen = true;
    }
    if (hrow && (i + 1) % re == 0) hrow[(i + 1) / re - 1] = ok ? loss : qnan();
  }
  regs_to_rows(p, t0, a.params, mbase, live, lane);
}

// ---- generic path: a model per warp ------------------------------------------------------------

// Shared-memory floats per warp: params, grads, then per-lane columns of activations (K * N) and of
// two dz buffers (N each).
__host__ __device__ inline int generic_floats(int K, int N, int D) { return 2 * D + 32 * N * (K + 2); }

// One batch of points, one per lane (`active` lanes hold point p < P, others x = y = 0): forward and,
// with kGrad, backward, adding the warp sums of r * d(output)/d(params) into grd (by lane 0).  act, dz0
// and dz1 point at this lane's column (element e at [e * 32]).  Returns r (0 on inactive lanes).
template <bool kGrad>
__device__ float generic_batch(const Dims& L, const float* prm, float* grd, float* act, float* dz0, float* dz1,
                               float x, float y, bool active, int lane) {
  const int K = L.K, N = L.N;
  for (int j = 0; j < N; ++j) act[j * 32] = relu(fmaf(prm[j], x, prm[N + j]));
  for (int l = 1; l < K; ++l) {
    const float* W = prm + L.w(l);
    const float* hin = act + (l - 1) * N * 32;
    float* hout = act + l * N * 32;
    for (int o = 0; o < N; ++o) {
      float z = W[N * N + o];
      for (int i = 0; i < N; ++i) z = fmaf(W[o * N + i], hin[i * 32], z);
      hout[o * 32] = relu(z);
    }
  }
  const float* hK = act + (K - 1) * N * 32;
  float out = prm[L.bk];
  for (int i = 0; i < N; ++i) out = fmaf(prm[L.wk + i], hK[i * 32], out);
  const float r = active ? out - y : 0.f;
  if (!kGrad) return r;

  // Inactive lanes add exact zeros (not 0 * something that might be inf).
  auto add = [&](int k, float c) {
    const float s = warp_sum(active ? c : 0.f);
    if (lane == 0) grd[k] += s;
  };
  add(L.bk, r);
  for (int i = 0; i < N; ++i) {
    const float h = hK[i * 32];
    add(L.wk + i, r * h);
    dz0[i * 32] = (r * prm[L.wk + i]) * relu_mask(h);
  }
  float* dz = dz0;
  float* dn = dz1;
  for (int l = K - 1; l >= 1; --l) {
    const int w = L.w(l);
    const float* W = prm + w;
    const float* hin = act + (l - 1) * N * 32;
    for (int o = 0; o < N; ++o) {
      const float d = dz[o * 32];
      add(w + N * N + o, d);
      for (int i = 0; i < N; ++i) add(w + o * N + i, d * hin[i * 32]);
    }
    for (int i = 0; i < N; ++i) {
      float s = 0.f;
      for (int o = 0; o < N; ++o) s = fmaf(dz[o * 32], W[o * N + i], s);
      dn[i * 32] = s * relu_mask(hin[i * 32]);
    }
    float* tmp = dz;
    dz = dn;
    dn = tmp;
  }
  for (int j = 0; j < N; ++j) {
    const float d = dz[j * 32];
    add(j, d * x);
    add(N + j, d);
  }
  return r;
}

// The warp's model m: its shared-memory slices.
struct Slices {
  float *prm, *grd, *act, *dz0, *dz1;
};

__device__ __forceinline__ Slices generic_slices(const Dims& L, int warp, int lane) {
  extern __shared__ float smem[];
  float* base = smem + static_cast<size_t>(warp) * generic_floats(L.K, L.N, L.D);
  Slices s;
  s.prm = base;
  s.grd = base + L.D;
  s.act = s.grd + L.D + lane;
  s.dz0 = s.act + 32 * L.N * L.K;
  s.dz1 = s.dz0 + 32 * L.N;
  return s;
}

// Sum over the points of r^2 on every lane; with kGrad, sum of r * d(output)/d(params) in grd.
template <bool kGrad>
__device__ float generic_pass(const Dims& L, const Slices& s, const Args& a, int lane) {
  for (int k = lane; k < L.D; k += 32) s.grd[k] = 0.f;
  __syncwarp();
  float lsum = 0.f;
  for (int64_t q0 = 0; q0 < a.P; q0 += 32) {
    const int64_t q = q0 + lane;
    const bool active = q < a.P;
    const float x = active ? __ldg(a.x + q) : 0.f, y = active ? __ldg(a.y + q) : 0.f;
    const float r = generic_batch<kGrad>(L, s.prm, s.grd, s.act, s.dz0, s.dz1, x, y, active, lane);
    lsum = fmaf(r, r, lsum);
  }
  __syncwarp();  // lane 0's grd visible to all
  return warp_sum(lsum);
}

__global__ void __launch_bounds__(kGenericMaxWarps * 32) loss_grad_generic(const Args a, const Dims L) {
  const int lane = static_cast<int>(threadIdx.x & 31u), warp = static_cast<int>(threadIdx.x >> 5);
  const int64_t m = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (m >= a.M) return;  // the whole warp
  const Slices s = generic_slices(L, warp, lane);
  const int D = L.D;
  for (int k = lane; k < D; k += 32) s.prm[k] = a.params[m * D + k];
  __syncwarp();
  const float lsum = a.grad ? generic_pass<true>(L, s, a, lane) : generic_pass<false>(L, s, a, lane);
  if (lane == 0) a.loss[m] = lsum / a.Pf;
  if (a.grad)
    for (int k = lane; k < D; k += 32) a.grad[m * D + k] = s.grd[k] * a.two_over_p;
}

template <int Opt>
__global__ void __launch_bounds__(kGenericMaxWarps * 32) train_generic(const Args a, const Dims L) {
  const int lane = static_cast<int>(threadIdx.x & 31u), warp = static_cast<int>(threadIdx.x >> 5);
  const int64_t m = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (m >= a.M) return;  // the whole warp
  const int D = L.D;
  const int64_t re = a.record_every;
  float* hrow = a.history ? a.history + m * a.n_rec : nullptr;
  if (a.diverged[m]) {
    if (lane == 0) nan_history(hrow, a.i0, a.i1, re);
    return;
  }
  const Slices s = generic_slices(L, warp, lane);
  float* pg = a.params + m * D;
  float* s0g = a.state0 + m * D;
  float* s1g = Opt == kSgd ? nullptr : a.state1 + m * D;
  for (int k = lane; k < D; k += 32) s.prm[k] = pg[k];
  __syncwarp();
  for (int64_t i = a.i0; i < a.i1; ++i) {
    const float loss = generic_pass<true>(L, s, a, lane) / a.Pf;
    const AdamStep as = adam_step<Opt>(a.hp, a.step0 + i + 1);
    bool ok = isfinite(loss);
    for (int k = lane; k < D; k += 32) {  // check pass
      const float g = s.grd[k] * a.two_over_p;
      float s0 = s0g[k], s1 = Opt == kSgd ? 0.f : s1g[k];
      ok = ok && isfinite(g) && isfinite(opt_step<Opt>(a.hp, as, s.prm[k], g, s0, s1));
    }
    ok = __all_sync(kFull, ok);
    if (ok) {  // apply pass
      for (int k = lane; k < D; k += 32) {
        const float g = s.grd[k] * a.two_over_p;
        float s0 = s0g[k], s1 = Opt == kSgd ? 0.f : s1g[k];
        s.prm[k] = opt_step<Opt>(a.hp, as, s.prm[k], g, s0, s1);
        s0g[k] = s0;
        if (Opt != kSgd) s1g[k] = s1;
      }
    }
    __syncwarp();  // the new params visible to all
    if (lane == 0 && hrow && (i + 1) % re == 0) hrow[(i + 1) / re - 1] = ok ? loss : qnan();
    if (!ok) {
      if (lane == 0) {
        a.diverged[m] = 1;
        nan_history(hrow, i + 1, a.i1, re);
      }
      break;
    }
  }
  for (int k = lane; k < D; k += 32) pg[k] = s.prm[k];
}

// ---- launches -----------------------------------------------------------------------------------

const char* last_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls f(Int<K>, Int<N>) when (K, N) has a fixed-size kernel; false otherwise.  Each entry compiles
// four fully unrolled kernels, so only the sizes that carry big runs are listed.
template <class F>
bool with_fixed(const Spec& s, F&& f) {
  if (s.K == 5 && s.N == 5) return f(Int<5>{}, Int<5>{}), true;
  return false;
}

struct GenericShape {
  Dims L;
  int warps;  // per block
  size_t smem;
  unsigned blocks;
};

GenericShape generic_shape(const Spec& s, int64_t M) {
  GenericShape g;
  g.L.K = s.K;
  g.L.N = s.N;
  g.L.D = static_cast<int>(dim(s));
  g.L.wk = 2 * s.N + (s.K - 1) * (s.N * s.N + s.N);
  g.L.bk = g.L.wk + s.N;
  const size_t per_warp = sizeof(float) * static_cast<size_t>(generic_floats(s.K, s.N, g.L.D));
  g.warps = static_cast<int>(std::max<size_t>(1, std::min<size_t>(kGenericMaxWarps, kGenericSmem / per_warp)));
  g.smem = per_warp * static_cast<size_t>(g.warps);
  g.blocks = static_cast<unsigned>((M + g.warps - 1) / g.warps);
  return g;
}

// One train launch: the fixed kernel when (K, N) has one, else the generic one.
template <int Opt>
void launch_train(const Spec& s, const Args& a, const GenericShape& g, cudaStream_t st) {
  const bool fixed = with_fixed(s, [&](auto K, auto N) {
    const unsigned blocks = static_cast<unsigned>((a.M + 32 * kFixedWarps - 1) / (32 * kFixedWarps));
    train_fixed<decltype(K)::value, decltype(N)::value, Opt><<<blocks, 32 * kFixedWarps, 0, st>>>(a);
  });
  if (!fixed) train_generic<Opt><<<g.blocks, 32 * g.warps, g.smem, st>>>(a, g.L);
}

bool valid(const Spec& s, int64_t M, int64_t P) {
  return s.K >= 1 && s.K <= kMaxDepth && s.N >= 1 && s.N <= kMaxWidth && M >= 0 && P >= 1;
}

constexpr const char* kBadArgs = "lscape::mlp: invalid sizes (need 1 <= K <= 8, 1 <= N <= 16, M >= 0, P >= 1)";

}  // namespace

const char* loss_grad_cuda(const Spec& s, int64_t M, const float* params, int64_t P, const float* x,
                           const float* y, float* loss, float* grad, void* stream) {
  if (!valid(s, M, P)) return kBadArgs;
  if (M == 0) return nullptr;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  Args a{};
  a.M = M;
  a.P = P;
  a.params = const_cast<float*>(params);  // read only
  a.x = x;
  a.y = y;
  a.loss = loss;
  a.grad = grad;
  a.Pf = static_cast<float>(P);
  a.two_over_p = static_cast<float>(2.0 / static_cast<double>(P));
  const bool fixed = with_fixed(s, [&](auto K, auto N) {
    constexpr int Kv = decltype(K)::value, Nv = decltype(N)::value;
    const unsigned blocks = static_cast<unsigned>((M + 32 * kFixedWarps - 1) / (32 * kFixedWarps));
    if (grad)
      loss_grad_fixed<Kv, Nv, true><<<blocks, 32 * kFixedWarps, 0, st>>>(a);
    else
      loss_grad_fixed<Kv, Nv, false><<<blocks, 32 * kFixedWarps, 0, st>>>(a);
  });
  if (!fixed) {
    const GenericShape g = generic_shape(s, M);
    loss_grad_generic<<<g.blocks, 32 * g.warps, g.smem, st>>>(a, g.L);
  }
  return last_error();
}

const char* train_cuda(const Spec& s, const OptConfig& opt, int64_t M, float* params, float* state0,
                       float* state1, uint8_t* diverged, int64_t P, const float* x, const float* y,
                       int64_t step0, int64_t steps, int64_t record_every, float* history, void* stream) {
  if (!valid(s, M, P) || steps < 0 || record_every < 1 || opt.kind < kSgd || opt.kind > kAdam)
    return "lscape::mlp: invalid arguments";
  if (M == 0 || steps == 0) return nullptr;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  Args a{};
  a.M = M;
  a.P = P;
  a.params = params;
  a.state0 = state0;
  a.state1 = state1;
  a.diverged = diverged;
  a.x = x;
  a.y = y;
  a.history = history;
  a.step0 = step0;
  a.record_every = record_every;
  a.n_rec = steps / record_every;
  a.hp = make_hyper(opt);
  a.Pf = static_cast<float>(P);
  a.two_over_p = static_cast<float>(2.0 / static_cast<double>(P));
  const double work = static_cast<double>(M) * static_cast<double>(P) * static_cast<double>(dim(s));
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(std::min(kLaunchWork / work, 1e18)));
  const GenericShape g = generic_shape(s, M);
  for (a.i0 = 0; a.i0 < steps; a.i0 += chunk) {
    a.i1 = std::min(steps, a.i0 + chunk);
    switch (opt.kind) {
      case kSgd: launch_train<kSgd>(s, a, g, st); break;
      case kAdadelta: launch_train<kAdadelta>(s, a, g, st); break;
      default: launch_train<kAdam>(s, a, g, st); break;
    }
    if (const char* e = last_error()) return e;
  }
  return nullptr;
}

}  // namespace mlp
}  // namespace lscape
