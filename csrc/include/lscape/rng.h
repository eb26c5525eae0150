// Counter-based random numbers shared by the CPU and CUDA kernels.
//
// Every random number a kernel needs is a pure function of (seed, stream, counter), so the same seed
// gives the same numbers on every backend, in any order of evaluation.  The numpy mirror lives in
// python/lscape/reference/rng.py and must stay bit-identical to this file.
//
// Floating-point steps use only IEEE-rounded +, -, *, / (never fused, never library transcendental
// functions): host code is compiled with -ffp-contract=off and device code uses the explicit __f*_rn
// intrinsics, so results agree bit for bit with numpy float32 arithmetic.
#pragma once
#include <cstdint>

#include "lscape/hostdevice.h"

namespace lscape {
namespace rng {

constexpr uint64_t kGolden64 = 0x9E3779B97F4A7C15ull;
constexpr uint32_t kGolden32 = 0x9E3779B9u;

// SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
LS_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// "lowbias32" (C. Wellons' hash-prospector, constants 21f0aaad / 735a2d97): a bijective 32-bit mixer.
LS_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x;
}

// The 64-bit key of stream `stream` under `seed`; each stream is an independent sequence of draws.
LS_HD uint64_t stream_key(uint64_t seed, uint64_t stream) {
  return mix64(mix64(seed + kGolden64) ^ mix64(stream));
}

// Draw number `counter` of the stream with key `key`: 32 random bits.
LS_HD uint32_t draw32(uint64_t key, uint32_t counter) {
  const uint32_t lo = static_cast<uint32_t>(key);
  const uint32_t hi = static_cast<uint32_t>(key >> 32);
  return mix32(mix32(lo + counter * kGolden32) ^ hi);
}

// ---- float32 arithmetic that rounds the same everywhere -----------------------------------------
#if defined(__CUDA_ARCH__)
LS_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
LS_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
LS_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
LS_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
LS_HD uint32_t f2u(float f) { return __float_as_uint(f); }
LS_HD float u2f(uint32_t u) { return __uint_as_float(u); }
#else
LS_HD float fadd(float a, float b) { return a + b; }
LS_HD float fsub(float a, float b) { return a - b; }
LS_HD float fmul(float a, float b) { return a * b; }
LS_HD float fdiv(float a, float b) { return a / b; }
LS_HD uint32_t f2u(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }
LS_HD float u2f(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
#endif

// A uniform number in [2^-24, 1] from the low 24 bits of h; exact in float32 (never 0).
LS_HD float uniform24(uint32_t h) {
  return fmul(static_cast<float>(static_cast<int32_t>((h & 0xFFFFFFu) + 1u)), 5.9604644775390625e-08f);
}

// log2(u) for normal positive float32 u: absolute error below 1e-6 on [2^-24, 1] (mostly the final
// rounding of e + s p).
// u = 2^e m with m in [sqrt(1/2), sqrt(2)); log2 m = (2/ln 2) atanh(s), s = (m-1)/(m+1), |s| < 0.172,
// summed as an odd series to s^9 (the next term is below 1e-9).
LS_HD float log2_approx(float u) {
  const uint32_t bits = f2u(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  float m = u2f((bits & 0x007FFFFFu) | 0x3F800000u);
  // Branch-free (so loops of draws vectorise): halving m, or multiplying by 1, is exact.
  const bool big = m > 1.41421353816986083984375f;  // float32(sqrt 2)
  m = fmul(m, big ? 0.5f : 1.0f);
  e += big ? 1 : 0;
  const float s = fdiv(fsub(m, 1.0f), fadd(m, 1.0f));
  const float z = fmul(s, s);
  float p = 0.32059889797532520f;               // 2 / (9 ln 2)
  p = fadd(0.41219858311113240f, fmul(z, p));   // 2 / (7 ln 2)
  p = fadd(0.57707801635558530f, fmul(z, p));   // 2 / (5 ln 2)
  p = fadd(0.96179669392597560f, fmul(z, p));   // 2 / (3 ln 2)
  p = fadd(2.88539008177792680f, fmul(z, p));   // 2 / ln 2
  return fadd(static_cast<float>(e), fmul(s, p));
}

}  // namespace rng
}  // namespace lscape
