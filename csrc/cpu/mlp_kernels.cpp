// CPU kernels of the tiny-MLP ensembles (mlp.h).  This file is compiled once per instruction set
// (LSCAPE_ISA = baseline | avx2 | avx512: 4, 8 or 16 models per vector); mlp.cpp picks one at run time
// (cpu_isa.h) and threads over blocks of models.
//
// One SIMD lane per model: a block's params, gradient and optimizer state are transposed to [D][lanes]
// and every operation is lane-wise, so no model's result depends on its neighbours (a diverged model
// in the same block changes nothing, bit for bit).  The data go through in chunks of kChunk points:
// each layer runs over the whole chunk, forward and then backward, with the chunk's activations and
// the block's gradient in L1; nothing of size P is stored, and a whole training run of a block stays
// in L1/L2.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "lscape/mlp.h"

namespace lscape {
namespace mlp {
namespace LSCAPE_ISA {

#include "mlp_kernels.inc"

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // one zmm register: 16 models per vector
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;  // SSE2 (or the target's 16-byte vectors)
#endif
typedef float V __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(kLanes * sizeof(float))));  // lane masks: 0 or -1

// Data points per chunk: running a layer over many independent points keeps both FMA pipes busy,
// where one point at a time waits on its chain of layers (1.1-1.8x slower, measured).
#ifndef LSCAPE_MLP_CHUNK
#define LSCAPE_MLP_CHUNK 16
#endif
constexpr int kChunk = LSCAPE_MLP_CHUNK;

inline V splat(float v) {
  V r;
  for (int i = 0; i < kLanes; ++i) r[i] = v;
  return r;
}
// Keeps v in a register: GCC otherwise reloads a value used several times as a memory operand of
// each use, and loads, not FMAs, become the limit.
inline void pin(V& v) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__AVX512F__)
  asm("" : "+v"(v));  // "x" names only the 16 legacy registers; "v" any of AVX-512's 32
#else
  asm("" : "+x"(v));
#endif
#endif
}
inline V keep(VI m, V a) { return reinterpret_cast<V>(m & reinterpret_cast<VI>(a)); }
inline V select(VI m, V a, V b) {
  return reinterpret_cast<V>((m & reinterpret_cast<VI>(a)) | (~m & reinterpret_cast<VI>(b)));
}
// max(z, 0) that lets NaN through, as torch.relu does.  MAXPS returns its second operand when either
// is NaN or both are zero, so max(0, z) is one instruction that keeps NaN (and -0, like the mask form).
inline V relu(V z) {
#if defined(__AVX512F__)
  return reinterpret_cast<V>(_mm512_max_ps(_mm512_setzero_ps(), reinterpret_cast<__m512>(z)));
#elif defined(__AVX2__)
  return reinterpret_cast<V>(_mm256_max_ps(_mm256_setzero_ps(), reinterpret_cast<__m256>(z)));
#else
  return reinterpret_cast<V>(~(z < V{}) & reinterpret_cast<VI>(z));
#endif
}
inline V vsqrt(V v) {
  V r;
  for (int i = 0; i < kLanes; ++i) r[i] = std::sqrt(v[i]);  // one sqrtps (no errno: -fno-math-errno)
  return r;
}

// Offsets of the layers in the flat layout of mlp.h.
template <int N>
constexpr int64_t hidden_offset(int l) { return 2 * N + int64_t(l - 1) * (N * N + N); }  // W_l, l >= 1
template <int N>
constexpr int64_t output_offset(int K) { return hidden_offset<N>(K); }

// Register tiles of the small matrix products below: outputs x points per tile (at most 12
// accumulators of the 16 vector registers; AVX-512 has 32, so its tiles hold about twice as many).
#if defined(__AVX512F__)
#ifndef LSCAPE_MLP_TILE
#define LSCAPE_MLP_TILE 2
#endif
constexpr int kRegScale = LSCAPE_MLP_TILE;
#else
constexpr int kRegScale = 1;
#endif
template <int N>
constexpr int kOutTile = N <= 6 ? N : 4;
template <int N>
constexpr int kPointTile = kRegScale * (kOutTile<N> >= 5 ? 2 : kOutTile<N> >= 3 ? 3 : 4);
template <int N>
constexpr int kInTile = kRegScale * (N <= 6 ? 2 : 3) > N ? N : kRegScale * (N <= 6 ? 2 : 3);

// Out[p][j] = epi(p, j, sum_k In[p][k] * Wt[k * sk + j * sj]) for points p < C and outputs j < N
// (In, Out rows of N): a layer's forward (Wt = W^T) or its backward (Wt = W).
template <int N, int PT, int JT, class Epi>
inline void product_tile(const V* In, const V* Wt, int64_t sk, int64_t sj, int p0, int j0, Epi& epi) {
  V acc[PT][JT] = {};
  for (int k = 0; k < N; ++k) {
    V v[PT];
    for (int p = 0; p < PT; ++p) v[p] = In[(p0 + p) * N + k];
    for (int j = 0; j < JT; ++j) {
      V w = Wt[k * sk + (j0 + j) * sj];
      pin(w);
      for (int p = 0; p < PT; ++p) acc[p][j] += v[p] * w;
    }
  }
  for (int p = 0; p < PT; ++p)
    for (int j = 0; j < JT; ++j) epi(p0 + p, j0 + j, acc[p][j]);
}
template <int N, int PT, class Epi>
inline void product_row(const V* In, const V* Wt, int64_t sk, int64_t sj, int p0, Epi& epi) {
  constexpr int JT = kOutTile<N>, JF = N / JT * JT;
  for (int j0 = 0; j0 < JF; j0 += JT) product_tile<N, PT, JT>(In, Wt, sk, sj, p0, j0, epi);
  if constexpr (JF < N) product_tile<N, PT, N - JF>(In, Wt, sk, sj, p0, JF, epi);
}
template <int N, class Epi>
inline void product(int C, const V* In, const V* Wt, int64_t sk, int64_t sj, Epi&& epi) {
  constexpr int PT = kPointTile<N>;
  int p0 = 0;
  for (; p0 + PT <= C; p0 += PT) product_row<N, PT>(In, Wt, sk, sj, p0, epi);
  for (; p0 < C; ++p0) product_row<N, 1>(In, Wt, sk, sj, p0, epi);
}

// G[o][i] += sum_p Dz[p][o] * H[p][i]: a weight gradient, accumulated in registers over the chunk.
template <int N, int OT, int IT>
inline void outer_tile(int C, const V* Dz, const V* H, V* G, int o0, int i0) {
  V acc[OT][IT] = {};
  for (int p = 0; p < C; ++p)
    for (int o = 0; o < OT; ++o)
      for (int i = 0; i < IT; ++i) acc[o][i] += Dz[p * N + o0 + o] * H[p * N + i0 + i];
  for (int o = 0; o < OT; ++o)
    for (int i = 0; i < IT; ++i) G[(o0 + o) * N + i0 + i] += acc[o][i];
}
template <int N, int OT>
inline void outer_row(int C, const V* Dz, const V* H, V* G, int o0) {
  constexpr int IT = kInTile<N>, IF = N / IT * IT;
  for (int i0 = 0; i0 < IF; i0 += IT) outer_tile<N, OT, IT>(C, Dz, H, G, o0, i0);
  if constexpr (IF < N) outer_tile<N, OT, N - IF>(C, Dz, H, G, o0, IF);
}
template <int N>
inline void outer(int C, const V* Dz, const V* H, V* G) {
  constexpr int OT = kOutTile<N>, OF = N / OT * OT;
  for (int o0 = 0; o0 < OF; o0 += OT) outer_row<N, OT>(C, Dz, H, G, o0);
  if constexpr (OF < N) outer_row<N, N - OF>(C, Dz, H, G, OF);
}

// b[o] += sum_p Dz[p][o]
template <int N>
inline void column_sums(int C, const V* Dz, V* b) {
  V acc[N] = {};
  for (int p = 0; p < C; ++p)
    for (int o = 0; o < N; ++o) acc[o] += Dz[p * N + o];
  for (int o = 0; o < N; ++o) b[o] += acc[o];
}

// One chunk of C <= kChunk points through the block: forward layer by layer over all points, then
// (kGrad) backward, adding to G; returns the sum of squared residuals.  H holds K x kChunk x N
// activations, Dz 2 x kChunk x N gradients; dscale = 2/P turns residuals into dL/d(output).
template <int N, bool kGrad>
V chunk(int K, int C, const V* W, V* G, const float* x, const float* y, V dscale, V* H, V* Dz) {
  for (int p = 0; p < C; ++p) {
    const V xv = splat(x[p]);
    for (int o = 0; o < N; ++o) H[p * N + o] = relu(W[o] * xv + W[N + o]);
  }
  for (int l = 1; l < K; ++l) {
    const V* Wl = W + hidden_offset<N>(l);
    V* Hn = H + l * kChunk * N;
    product<N>(C, Hn - kChunk * N, Wl, 1, N,
               [&](int p, int o, V z) { Hn[p * N + o] = relu(z + Wl[N * N + o]); });
  }
  const V* Hl = H + (K - 1) * kChunk * N;
  const V* WK = W + output_offset<N>(K);
  V r[kChunk], loss = {};
  for (int p = 0; p < C; ++p) {
    V z = WK[N];
    for (int i = 0; i < N; ++i) z += WK[i] * Hl[p * N + i];
    r[p] = z - y[p];
    loss += r[p] * r[p];
  }
  if constexpr (!kGrad) return loss;

  // Output layer; then Dz[p][i] = dL/d(pre-activation) of unit i of the layer walked back through.
  V* GK = G + output_offset<N>(K);
  V gw[N] = {}, gb = {};
  for (int p = 0; p < C; ++p) {
    const V d = r[p] * dscale;
    gb += d;
    for (int i = 0; i < N; ++i) {
      gw[i] += d * Hl[p * N + i];
      Dz[p * N + i] = keep(Hl[p * N + i] > V{}, WK[i] * d);  // ReLU'(0) = 0
    }
  }
  for (int i = 0; i < N; ++i) GK[i] += gw[i];
  GK[N] += gb;
  V* Dn = Dz + kChunk * N;
  for (int l = K - 1; l >= 1; --l) {
    const V* Wl = W + hidden_offset<N>(l);
    V* Gl = G + hidden_offset<N>(l);
    const V* Hp = H + (l - 1) * kChunk * N;  // this layer's input
    outer<N>(C, Dz, Hp, Gl);
    column_sums<N>(C, Dz, Gl + N * N);
    product<N>(C, Dz, Wl, N, 1,
               [&](int p, int i, V dh) { Dn[p * N + i] = keep(Hp[p * N + i] > V{}, dh); });
    std::swap(Dz, Dn);
  }
  V g0[N] = {};
  for (int p = 0; p < C; ++p) {
    const V xv = splat(x[p]);
    for (int o = 0; o < N; ++o) g0[o] += Dz[p * N + o] * xv;
  }
  for (int o = 0; o < N; ++o) G[o] += g0[o];
  column_sums<N>(C, Dz, G + N);
  return loss;
}

// Activations and gradients of one chunk, per block.
inline int64_t chunk_size(const Spec& s) { return int64_t(s.K + 2) * kChunk * s.N; }

// Loss (lane-wise mean over the data) of the block W ([D] vectors) and, when kGrad, its gradient G.
template <int N, bool kGrad>
V loss_grad(int K, int64_t D, const V* W, V* G, int64_t P, const float* x, const float* y, V* work) {
  if (kGrad) std::fill(G, G + D, V{});
  const V dscale = splat(static_cast<float>(2.0 / static_cast<double>(P)));
  V* Dz = work + int64_t(K) * kChunk * N;
  V loss = {};
  for (int64_t p = 0; p < P; p += kChunk)
    loss += chunk<N, kGrad>(K, static_cast<int>(std::min<int64_t>(kChunk, P - p)), W, G, x + p, y + p,
                            dscale, work, Dz);
  return loss / splat(static_cast<float>(P));
}

// ---- transposes between the caller's rows (count, D) and the block's [D][lanes] -------------------
void load_block(const float* src, int count, int64_t D, V* dst) {
  for (int64_t j = 0; j < D; ++j) {
    V v = {};  // padding lanes hold zeros: finite, never written back
    for (int m = 0; m < count; ++m) v[m] = src[m * D + j];
    dst[j] = v;
  }
}
void store_block(const V* src, int count, int64_t D, float* dst) {
  for (int64_t j = 0; j < D; ++j)
    for (int m = 0; m < count; ++m) dst[m * D + j] = src[j][m];
}

// Per-thread scratch, kept between calls: 4 [D] arrays (params, grad, state0, state1), then the
// chunk's work space.
V* scratch(const Spec& s) {
  thread_local std::vector<V> buf;
  const size_t n = static_cast<size_t>(4 * dim(s) + chunk_size(s));
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---- optimizers: one step of one entry, lane-wise, in place on (p, s0, s1) ----------------------------
struct Sgd {
  V mom, lr;
  void operator()(V& p, V& s0, V&, V g) const {
    s0 = mom * s0 + g;
    p -= lr * s0;
  }
};
struct Adadelta {
  V rho, one_m_rho, eps, lr;
  void operator()(V& p, V& s0, V& s1, V g) const {
    s0 = rho * s0 + one_m_rho * g * g;
    const V delta = vsqrt(s1 + eps) / vsqrt(s0 + eps) * g;
    s1 = rho * s1 + one_m_rho * delta * delta;
    p -= lr * delta;
  }
};
struct Adam {
  V one_m_b1, b2, one_m_b2, eps, step_size, bc2;
  void operator()(V& p, V& s0, V& s1, V g) const {
    s0 += one_m_b1 * (g - s0);
    s1 = b2 * s1 + one_m_b2 * g * g;
    p -= step_size * (s0 / (vsqrt(s1) / bc2 + eps));
  }
};

// Applies one optimizer step to the lanes in `active` whose loss, gradient and updated params are all
// finite; returns those lanes.  A first pass only checks (x * 0 is NaN exactly when x is not finite),
// a second one recomputes and stores, so a rejected step leaves no trace.
template <class Opt>
VI apply_step(const Opt& opt, int64_t D, V* W, V* S0, V* S1, const V* G, V loss, VI active) {
  V bad = loss * V{};
  for (int64_t j = 0; j < D; ++j) {
    V p = W[j], s0 = S0[j], s1 = S1[j];
    opt(p, s0, s1, G[j]);
    bad += G[j] * V{} + p * V{};
  }
  const VI ok = active & (bad == V{});
  for (int64_t j = 0; j < D; ++j) {
    V p = W[j], s0 = S0[j], s1 = S1[j];
    opt(p, s0, s1, G[j]);
    W[j] = select(ok, p, W[j]);
    S0[j] = select(ok, s0, S0[j]);
    S1[j] = select(ok, s1, S1[j]);
  }
  return ok;
}

// The optimizer of step t (1-based): Adam's bias corrections in double, as mlp.h states.
template <class F>
void with_optimizer(const OptConfig& c, int64_t t, F&& f) {
  auto k = [](double v) { return splat(static_cast<float>(v)); };
  if (c.kind == kSgd) {
    f(Sgd{k(c.momentum), k(c.lr)});
  } else if (c.kind == kAdadelta) {
    f(Adadelta{k(c.rho), k(1.0 - c.rho), k(c.eps), k(c.lr)});
  } else {
    const double tt = static_cast<double>(t);
    const double step_size = c.lr / (1.0 - std::pow(c.beta1, tt));
    const double bc2 = std::sqrt(1.0 - std::pow(c.beta2, tt));
    f(Adam{k(1.0 - c.beta1), k(c.beta2), k(1.0 - c.beta2), k(c.eps), k(step_size), k(bc2)});
  }
}

template <int N>
void loss_grad_n(const Spec& s, int count, const float* params, int64_t P, const float* x,
                 const float* y, float* loss, float* grad) {
  const int64_t D = dim(s);
  V* W = scratch(s);
  V *G = W + D, *work = W + 4 * D;
  load_block(params, count, D, W);
  const V l = grad ? loss_grad<N, true>(s.K, D, W, G, P, x, y, work)
                   : loss_grad<N, false>(s.K, D, W, G, P, x, y, work);
  for (int m = 0; m < count; ++m) loss[m] = l[m];
  if (grad) store_block(G, count, D, grad);
}

template <int N>
void train_n(const Spec& s, const OptConfig& opt, int count, float* params, float* state0, float* state1,
             uint8_t* diverged, int64_t P, const float* x, const float* y, int64_t step0, int64_t steps,
             int64_t record_every, float* history) {
  const int64_t D = dim(s), n_rec = steps / record_every;
  V* W = scratch(s);
  V *G = W + D, *S0 = G + D, *S1 = S0 + D, *work = S1 + D;
  load_block(params, count, D, W);
  load_block(state0, count, D, S0);
  if (state1)
    load_block(state1, count, D, S1);
  else
    std::fill(S1, S1 + D, V{});
  VI active = {};  // lanes still training: real models not diverged
  for (int m = 0; m < count; ++m) active[m] = diverged[m] ? 0 : -1;

  const V nan = splat(std::numeric_limits<float>::quiet_NaN());
  int64_t i = 0;
  for (; i < steps; ++i) {
    bool any = false;
    for (int m = 0; m < count; ++m) any |= active[m] != 0;
    if (!any) break;
    const V loss = loss_grad<N, true>(s.K, D, W, G, P, x, y, work);
    with_optimizer(opt, step0 + i + 1,
                   [&](const auto& o) { active = apply_step(o, D, W, S0, S1, G, loss, active); });
    if (history && (i + 1) % record_every == 0) {
      const V h = select(active, loss, nan);
      for (int m = 0; m < count; ++m) history[m * n_rec + (i + 1) / record_every - 1] = h[m];
    }
  }
  if (history)  // every lane diverged before step i: the records from there on are NaN
    for (int64_t r = i / record_every + 1; r <= n_rec; ++r)
      for (int m = 0; m < count; ++m) history[m * n_rec + r - 1] = nan[0];

  store_block(W, count, D, params);
  store_block(S0, count, D, state0);
  if (state1) store_block(S1, count, D, state1);
  for (int m = 0; m < count; ++m) diverged[m] = active[m] ? 0 : 1;
}

// Run-time N -> the kernels specialised for it (the register tiles need N at compile time).
template <int... I>
constexpr auto loss_grad_table(std::integer_sequence<int, I...>) {
  return std::array<decltype(&loss_grad_n<1>), sizeof...(I)>{&loss_grad_n<I + 1>...};
}
template <int... I>
constexpr auto train_table(std::integer_sequence<int, I...>) {
  return std::array<decltype(&train_n<1>), sizeof...(I)>{&train_n<I + 1>...};
}
constexpr auto kLossGrad = loss_grad_table(std::make_integer_sequence<int, kMaxWidth>{});
constexpr auto kTrain = train_table(std::make_integer_sequence<int, kMaxWidth>{});

}  // namespace

int block_lanes() { return kLanes; }

void loss_grad_block(const Spec& s, int count, const float* params, int64_t P, const float* x,
                     const float* y, float* loss, float* grad) {
  kLossGrad[s.N - 1](s, count, params, P, x, y, loss, grad);
}

void train_block(const Spec& s, const OptConfig& opt, int count, float* params, float* state0,
                 float* state1, uint8_t* diverged, int64_t P, const float* x, const float* y, int64_t step0,
                 int64_t steps, int64_t record_every, float* history) {
  kTrain[s.N - 1](s, opt, count, params, state0, state1, diverged, P, x, y, step0, steps, record_every,
                  history);
}

}  // namespace LSCAPE_ISA
}  // namespace mlp
}  // namespace lscape
