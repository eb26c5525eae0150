// Nudged elastic band step: the contract every implementation (csrc/cpu/neb.cpp, csrc/cuda/neb.cu,
// python/lscape/reference/neb.py) keeps.  Plain C++ plus host/device inline helpers shared by the CPU
// and CUDA kernels, so the scalar decisions are written once.
//
// Layout: B bands of n images (n >= 3) of dimension D, all row-major and C-contiguous:
//   x (B, n, D) positions; e (B, n) energies; g (B, n, D) energy gradients at x (rows 0 and n-1 unread);
//   v (B, n, D) FIRE velocities (interior rows read and written); x_out (B, n, D) new positions (interior
//   rows written, endpoint rows never touched: the caller double-buffers x / x_out).
// Per band b: dt[b], a[b] (double) FIRE state; nsteps[b] (int32) FIRE's step counter, -1 = fresh band
// (ASE's "velocity is None"); status[b] (uint8) kRunning / kConverged / kDiverged; outputs fmax[b]
// (double) and imax[b] (int32).  work: scratch of work_size_cpu / work_size_cuda doubles, which the
// caller allocates (kernels allocate nothing).
//
// For every band with status kRunning on entry (others: x_out interior rows = x, nothing else changes):
//   imax = the first index of the largest energy among images 1..n-2 (the climbing image).
//   For each interior image i, with t+ = x[i+1] - x[i], t- = x[i] - x[i-1] and the improved tangent of
//   Henkelman & Jonsson (2000) exactly as ASE's ImprovedTangentMethod:
//     e[i+1] > e[i] > e[i-1]: tau = t+;   e[i+1] < e[i] < e[i-1]: tau = t-;
//     else, with dmax/dmin the larger/smaller of |e[i+1]-e[i]|, |e[i-1]-e[i]|:
//       tau = dmax t+ + dmin t-  if e[i+1] > e[i-1],  else  dmin t+ + dmax t-
//     tau^ = tau / |tau|  (tau unchanged when |tau| = 0);  f = -g[i]
//     climbing image (climb && i == imax):  F = f - 2 <f, tau^> tau^
//     other images:                         F = f - <f, tau^> tau^ + k (|t+| - |t-|) tau^
//   fmax = max_i |F_i| (Euclidean norm per image, climbing image included).
//   If any energy of the band or any F is not finite: status = kDiverged, fmax = NaN, nothing moves.
//   Else if fmax < fmax_tol: status = kConverged (ASE checks convergence before it steps), nothing moves.
//   Else one optimizer step on the band's interior images as one vector (sums run over all of them):
//     fire (ASE's FIRE): vf = <F, v>, F2 = |F|^2, v2 = |v|^2;
//       nsteps == -1:  v = 0, nsteps = 0                                     (first step)
//       vf > 0:        v = (1 - a) v + a F sqrt(v2 / F2);
//                      if nsteps > n_min: dt = min(dt * f_inc, dt_max), a *= f_a;  nsteps += 1
//       else:          v = 0; a = a_start; dt *= f_dec; nsteps = 0
//       v += dt F;  dr = dt v
//     descent: dr = lr F
//     |dr| > maxstep: dr *= maxstep / |dr|;   x_out = x + dr
// Bands never interact: a band's results do not depend on the others in the call.  Scalars and dot
// products accumulate in double; F, v and positions are stored in T (float or double).
#pragma once
#include <cmath>
#include <cstdint>

#include "lscape/hostdevice.h"

namespace lscape {
namespace neb {

enum Status : uint8_t { kRunning = 0, kConverged = 1, kDiverged = 2 };
enum Method : int { kFire = 0, kDescent = 1 };

struct Config {
  double k;         // spring constant
  int climb;        // 0 or 1
  int method;       // Method
  double fmax_tol;  // convergence threshold on fmax
  double maxstep;   // largest step norm per band
  double lr;        // descent step size
  double dt_max;    // FIRE (ASE's names and defaults: dtmax 1.0, Nmin 5, finc 1.1, fdec 0.5, astart 0.1,
  int n_min;        //       fa 0.99)
  double f_inc;
  double f_dec;
  double a_start;
  double f_a;
};

// Weights (wp, wm) of t+ and t- in the improved tangent of image i from its energies and its neighbours'.
LS_HD void tangent_weights(double e_prev, double e_i, double e_next, double* wp, double* wm) {
  if (e_next > e_i && e_i > e_prev) {
    *wp = 1.0, *wm = 0.0;
  } else if (e_next < e_i && e_i < e_prev) {
    *wp = 0.0, *wm = 1.0;
  } else {
    const double dn = fabs(e_next - e_i), dp = fabs(e_prev - e_i);
    const double dmax = dn > dp ? dn : dp, dmin = dn > dp ? dp : dn;
    if (e_next > e_prev) {
      *wp = dmax, *wm = dmin;
    } else {
      *wp = dmin, *wm = dmax;
    }
  }
}

// Coefficient of the raw tangent tau = wp t+ + wm t- in F = f + coef * tau, given tt = |tau|^2,
// ftau = <f, tau>, and the spring lengths |t+|, |t-|.
LS_HD double force_coef(const Config& c, bool climbing, double tt, double ftau, double len_p,
                            double len_m) {
  const double inv = tt > 0.0 ? 1.0 / sqrt(tt) : 1.0;
  const double ft = ftau * inv;  // <f, tau^>
  const double beta = climbing ? -2.0 * ft : c.k * (len_p - len_m) - ft;
  return beta * inv;
}

// The optimizer step of one band from the sums vf = <F, v>, F2 = |F|^2, v2 = |v|^2 (mutates the band's
// FIRE state).  The new velocity is c1 v + c2 F and the move is s * (new velocity) for fire, s * F for
// descent (c1, c2 unused).
LS_HD void band_step(const Config& c, double vf, double F2, double v2, double* dt, double* a,
                         int32_t* nsteps, double* c1, double* c2, double* s) {
  if (c.method == kDescent) {
    const double norm = c.lr * sqrt(F2);
    *s = norm > c.maxstep ? c.lr * (c.maxstep / norm) : c.lr;
    *c1 = 0.0, *c2 = 0.0;
    return;
  }
  double k1 = 0.0, k2 = 0.0;  // v = k1 v + k2 F before the dt F kick
  if (*nsteps < 0) {
    *nsteps = 0;
  } else if (vf > 0.0) {
    k1 = 1.0 - *a;
    k2 = *a * sqrt(v2) / sqrt(F2);
    if (*nsteps > c.n_min) {
      *dt = *dt * c.f_inc < c.dt_max ? *dt * c.f_inc : c.dt_max;
      *a *= c.f_a;
    }
    *nsteps += 1;
  } else {
    *a = c.a_start;
    *dt *= c.f_dec;
    *nsteps = 0;
  }
  k2 += *dt;
  // |new v|^2 from the sums (k1, k2 >= 0 and vf > 0 whenever k1 != 0: no cancellation).
  const double vnew2 = k1 * k1 * v2 + 2.0 * k1 * k2 * vf + k2 * k2 * F2;
  const double norm = *dt * sqrt(vnew2);
  *s = norm > c.maxstep ? *dt * (c.maxstep / norm) : *dt;
  *c1 = k1, *c2 = k2;
}

// CUDA rows longer than this are reduced in chunks of it (a block per chunk), with partial sums in work.
constexpr int64_t kCudaChunk = 8192;

// Doubles of scratch `work` each kernel needs: per image 3 sums (row 0 of a band holds its step
// scalars); the CUDA kernel adds 7 partial sums per interior image and chunk when D > kCudaChunk.
inline int64_t work_size_cpu(int64_t B, int64_t n, int64_t /*D*/) { return B * n * 3; }
inline int64_t work_size_cuda(int64_t B, int64_t n, int64_t D) {
  const int64_t chunks = D > kCudaChunk ? (D + kCudaChunk - 1) / kCudaChunk : 0;
  return B * n * 3 + B * (n - 2) * chunks * 7;
}

// CPU: one NEB step for all B bands (see the header comment), OpenMP over bands and images.
template <typename T>
void step_cpu(const Config& c, int64_t B, int64_t n, int64_t D, const T* x, const T* e, const T* g, T* v,
              T* x_out, double* dt, double* a, int32_t* nsteps, uint8_t* status, double* fmax,
              int32_t* imax, double* work, int threads);

// CUDA: the same on device pointers (float only), asynchronous on `stream` (a cudaStream_t); nullptr on
// success, else a static error string.
const char* step_cuda(const Config& c, int64_t B, int64_t n, int64_t D, const float* x, const float* e,
                      const float* g, float* v, float* x_out, double* dt, double* a, int32_t* nsteps,
                      uint8_t* status, double* fmax, int32_t* imax, double* work, void* stream);

}  // namespace neb
}  // namespace lscape
