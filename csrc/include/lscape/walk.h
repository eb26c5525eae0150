// One step of the random / gradient walks (python/lscape/probes/walks.py), fused: the contract every
// implementation keeps, and the per-coordinate arithmetic as host/device helpers written once.
//
// Layout: W walkers of dimension D, row-major and C-contiguous.  For walker w (stream key keys[w], as
// walks._walker_keys gives it) and step tag `tag` (s + 1 for step s):
//   k      = mix64(keys[w] ^ mix64(tag + kGolden64))                       (walks._draws' key)
//   r_j    = T(double(draw32(k, j)) + 0.5) * 2^-32) * bound_j             (walks._step_sizes, in T)
//   step_j = 0 if stopped[w];  else -r_j where g_j > 0 and r_j elsewhere   (gradient walks)
//                              else  r_j where up_j   and -r_j elsewhere   (random walks)
//   x_out  = x + step                                                       (one IEEE addition in T)
// The numpy reference computes the same values one pass at a time; the kernel gives them bit for bit.
#pragma once
#include <cstdint>

#include "lscape/hostdevice.h"
#include "lscape/rng.h"

namespace lscape {
namespace walk {

// The key of walker stream `key`'s draws under `tag`.
LS_HD uint64_t tag_key(uint64_t key, uint64_t tag) { return rng::mix64(key ^ rng::mix64(tag + rng::kGolden64)); }

// Step size j of the draws with key `k`: (h + 0.5) 2^-32 is exact in double, then one rounding to T.
// h + 0.5 goes through int32 (h - 2^31, exact) so the conversion vectorises on every ISA.
template <typename T>
LS_HD T step_size(uint64_t k, uint32_t j, T bound) {
  const uint32_t h = rng::draw32(k, j);
  const double hp = static_cast<double>(static_cast<int32_t>(h ^ 0x80000000u)) + 2147483648.5;
  return static_cast<T>(hp * 2.3283064365386962890625e-10) * bound;
}

// Bosman's mask: down where the gradient component is positive, up where it is <= 0.
template <typename T>
LS_HD T gradient_step(T r, T g) { return g > T(0) ? -r : r; }

// The CPU kernel (csrc/cpu/walk.cpp), T = float or double.  keys (W,); bound (D,); exactly one of g (W, D)
// (gradient walks) and up (W, D) (random walks) is non-null; stopped (W,) may be null (none stopped).
// x_out may alias x.  nt: threads.
template <typename T>
void step_cpu(int64_t W, int64_t D, const uint64_t* keys, uint64_t tag, const T* bound, const T* g,
              const uint8_t* up, const uint8_t* stopped, const T* x, T* x_out, int nt);

}  // namespace walk
}  // namespace lscape
