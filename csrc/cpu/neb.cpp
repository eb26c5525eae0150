// The NEB step on the CPU (neb.h), in three phases inside one OpenMP team:
//   1. per interior image (all bands' images shared out among threads): the improved tangent and the
//      NEB force F, written into the image's row of x_out, and its sums |F|^2, <F, v>, |v|^2;
//   2. per band: convergence / divergence and the FIRE (or descent) scalars;
//   3. per interior image: v and x_out from F (still in x_out's row) and those scalars.
// Parallel over images rather than bands, so one band of a large D uses every thread.  Sums accumulate
// in T over blocks of kBlock elements (so they vectorise) and across blocks in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "lscape/neb.h"

namespace lscape {
namespace neb {

namespace {

constexpr int64_t kBlock = 256;

// Pass A over one image: raw tangent sums tt = |tau|^2, ftau = <-g, tau>, |t+|^2, |t-|^2.
template <typename T>
void tangent_sums(int64_t D, const T* xm, const T* x0, const T* xp, const T* g, T wp, T wm, double out[4]) {
  double tt = 0, ftau = 0, pp = 0, mm = 0;
  for (int64_t j0 = 0; j0 < D; j0 += kBlock) {
    const int64_t j1 = std::min(D, j0 + kBlock);
    T btt = 0, bft = 0, bpp = 0, bmm = 0;
#pragma omp simd reduction(+ : btt, bft, bpp, bmm)
    for (int64_t j = j0; j < j1; ++j) {
      const T tp = xp[j] - x0[j], tm = x0[j] - xm[j];
      const T tau = wp * tp + wm * tm;
      btt += tau * tau;
      bft -= g[j] * tau;
      bpp += tp * tp;
      bmm += tm * tm;
    }
    tt += btt, ftau += bft, pp += bpp, mm += bmm;
  }
  out[0] = tt, out[1] = ftau, out[2] = pp, out[3] = mm;
}

// Pass B over one image: F = -g + coef * tau into F_out, and the sums |F|^2, <F, v>, |v|^2.
template <typename T>
void force_row(int64_t D, const T* xm, const T* x0, const T* xp, const T* g, const T* v, T wp, T wm, T coef,
               T* F_out, double out[3]) {
  double F2 = 0, Fv = 0, v2 = 0;
  for (int64_t j0 = 0; j0 < D; j0 += kBlock) {
    const int64_t j1 = std::min(D, j0 + kBlock);
    T bF2 = 0, bFv = 0, bv2 = 0;
#pragma omp simd reduction(+ : bF2, bFv, bv2)
    for (int64_t j = j0; j < j1; ++j) {
      const T tau = wp * (xp[j] - x0[j]) + wm * (x0[j] - xm[j]);
      const T F = coef * tau - g[j];
      F_out[j] = F;
      bF2 += F * F;
      bFv += F * v[j];
      bv2 += v[j] * v[j];
    }
    F2 += bF2, Fv += bFv, v2 += bv2;
  }
  out[0] = F2, out[1] = Fv, out[2] = v2;
}

}  // namespace

template <typename T>
void step_cpu(const Config& c, int64_t B, int64_t n, int64_t D, const T* x, const T* e, const T* g, T* v,
              T* x_out, double* dt, double* a, int32_t* nsteps, uint8_t* status, double* fmax,
              int32_t* imax, double* work, int threads) {
  const int64_t m = n - 2, rows = B * m;
  const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, std::max<int64_t>(B, rows))));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto row = [&](int64_t b, int64_t i) { return (b * n + i) * D; };
#pragma omp parallel num_threads(team)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (status[b] != kRunning) continue;
      const T* eb = e + b * n;
      int32_t best = 1;
      for (int64_t i = 2; i < n - 1; ++i)
        if (static_cast<double>(eb[i]) > static_cast<double>(eb[best])) best = static_cast<int32_t>(i);
      imax[b] = best;
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / m, i = 1 + r % m;
      if (status[b] != kRunning) continue;
      const T* eb = e + b * n;
      double wp, wm, sums[4];
      tangent_weights(eb[i - 1], eb[i], eb[i + 1], &wp, &wm);
      const T *xm = x + row(b, i - 1), *x0 = x + row(b, i), *xp = x + row(b, i + 1), *gi = g + row(b, i);
      tangent_sums(D, xm, x0, xp, gi, T(wp), T(wm), sums);
      const bool climbing = c.climb && i == imax[b];
      const double coef = force_coef(c, climbing, sums[0], sums[1], std::sqrt(sums[2]), std::sqrt(sums[3]));
      force_row(D, xm, x0, xp, gi, v + row(b, i), T(wp), T(wm), T(coef), x_out + row(b, i),
                work + (b * n + i) * 3);
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (status[b] != kRunning) continue;
      const T* eb = e + b * n;
      bool finite = true;
      double F2 = 0, vf = 0, v2 = 0, F2max = 0;
      for (int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(static_cast<double>(eb[i]));
      for (int64_t i = 1; i < n - 1; ++i) {
        const double* w = work + (b * n + i) * 3;
        finite = finite && std::isfinite(w[0]);
        F2 += w[0], vf += w[1], v2 += w[2];
        F2max = std::max(F2max, w[0]);
      }
      if (!finite) {
        status[b] = kDiverged, fmax[b] = nan;
        continue;
      }
      fmax[b] = std::sqrt(F2max);
      if (fmax[b] < c.fmax_tol) {
        status[b] = kConverged;
        continue;
      }
      // The band's scalars go to its (unused) row-0 slot of the workspace.
      double* w0 = work + b * n * 3;
      band_step(c, vf, F2, v2, dt + b, a + b, nsteps + b, w0, w0 + 1, w0 + 2);
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / m, i = 1 + r % m;
      const T* xi = x + row(b, i);
      T* xo = x_out + row(b, i);
      if (status[b] != kRunning) {
        std::copy(xi, xi + D, xo);
        continue;
      }
      const double* w0 = work + b * n * 3;
      const T c1 = T(w0[0]), c2 = T(w0[1]), s = T(w0[2]);
      if (c.method == kFire) {
        T* vi = v + row(b, i);
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          const T vn = c1 * vi[j] + c2 * xo[j];
          vi[j] = vn;
          xo[j] = xi[j] + s * vn;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) xo[j] = xi[j] + s * xo[j];
      }
    }
  }
}

template void step_cpu<float>(const Config&, int64_t, int64_t, int64_t, const float*, const float*, const float*,
                              float*, float*, double*, double*, int32_t*, uint8_t*, double*, int32_t*, double*,
                              int);
template void step_cpu<double>(const Config&, int64_t, int64_t, int64_t, const double*, const double*,
                               const double*, double*, double*, double*, double*, int32_t*, uint8_t*, double*,
                               int32_t*, double*, int);

}  // namespace neb
}  // namespace lscape
