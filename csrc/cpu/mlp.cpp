// The tiny-MLP ensemble kernels on the CPU (mlp.h): run-time choice between the baseline, AVX2 and
// AVX-512 builds of mlp_kernels.cpp (cpu_isa.h), and OpenMP threads over blocks of models (a block is one
// model per SIMD lane; models never interact, so blocks need no synchronisation).
#include <algorithm>
#include <stdexcept>

#include "lscape/cpu_isa.h"
#include "lscape/mlp.h"

namespace lscape {
namespace mlp {

namespace baseline {
#include "mlp_kernels.inc"
}
namespace avx2 {
#include "mlp_kernels.inc"
}
namespace avx512 {
#include "mlp_kernels.inc"
}

namespace {

void check_spec(const Spec& s) {
  if (s.K < 1 || s.K > kMaxDepth || s.N < 1 || s.N > kMaxWidth)
    throw std::invalid_argument("mlp spec: K must be in [1, 8] and N in [1, 16]");
}

// Calls f(m0, count) for every block of models, on up to `threads` threads.
template <class F>
void for_blocks(int64_t M, int threads, F&& f) {
  const int L = LSCAPE_ISA_DISPATCH(block_lanes);
  const int64_t nb = (M + L - 1) / L;
  const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nb)));
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t b = 0; b < nb; ++b) f(b * L, static_cast<int>(std::min<int64_t>(L, M - b * L)));
}

}  // namespace

void loss_grad_cpu(const Spec& s, int64_t M, const float* params, int64_t P, const float* x,
                   const float* y, float* loss, float* grad, int threads) {
  check_spec(s);
  const int64_t D = dim(s);
  for_blocks(M, threads, [&](int64_t m0, int count) {
    LSCAPE_ISA_DISPATCH(loss_grad_block, s, count, params + m0 * D, P, x, y, loss + m0,
                    grad ? grad + m0 * D : nullptr);
  });
}

void train_cpu(const Spec& s, const OptConfig& opt, int64_t M, float* params, float* state0, float* state1,
               uint8_t* diverged, int64_t P, const float* x, const float* y, int64_t step0, int64_t steps,
               int64_t record_every, float* history, int threads) {
  check_spec(s);
  if (steps <= 0) return;
  const int64_t D = dim(s), n_rec = steps / record_every;
  for_blocks(M, threads, [&](int64_t m0, int count) {
    LSCAPE_ISA_DISPATCH(train_block, s, opt, count, params + m0 * D, state0 + m0 * D,
                    state1 ? state1 + m0 * D : nullptr, diverged + m0, P, x, y, step0, steps, record_every,
                    history ? history + m0 * n_rec : nullptr);
  });
}


}  // namespace mlp
}  // namespace lscape
