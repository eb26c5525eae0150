// Fused tiny-MLP ensembles: the contract every implementation (csrc/cpu/mlp.cpp, csrc/cuda/mlp.cu,
// python/lscape/reference/mlp.py) keeps.  Plain C++: no CUDA or pybind11 types cross this header.
//
// Network K x N: one input, K hidden ReLU layers of N units, one linear output unit.
// Flat parameter layout of one model (D = 2N + (K-1)(N^2+N) + N + 1; 136 for 5x5), which is exactly
// torch.nn.Sequential(Linear(1,N), ReLU, Linear(N,N), ReLU, ..., Linear(N,1)).parameters() flattened:
//   layer 0:        W0 (N x 1), b0 (N)
//   layer l=1..K-1: Wl (N x N, row-major [out][in]), bl (N)
//   output:         WK (1 x N), bK (1)
// Loss of model m on data (x_p, y_p), p < P:  L_m = (1/P) sum_p (f_m(x_p) - y_p)^2  (torch's MSELoss).
// ReLU'(0) = 0 (as torch autograd).
//
// Training, per model and step t = step0 + i + 1 (1-based, i < steps), with g = dL/dparams at the params
// before the step, and s0/s1 the optimizer state (M x D each, zero before the first step):
//   sgd:      s0 = momentum*s0 + g;                          p -= lr*s0
//   adadelta: s0 = rho*s0 + (1-rho)*g*g;  delta = sqrt(s1 + eps)/sqrt(s0 + eps)*g;
//             s1 = rho*s1 + (1-rho)*delta*delta;             p -= lr*delta
//   adam:     s0 = s0 + (1-beta1)*(g - s0);  s1 = beta2*s1 + (1-beta2)*g*g;
//             step_size = (float)(lr / (1 - beta1^t)), bc2 = (float)sqrt(1 - beta2^t)   (in double)
//             p -= step_size * s0 / (sqrt(s1)/bc2 + eps)
// (torch.optim.SGD(momentum, dampening=0), Adadelta and Adam (amsgrad=False) with weight_decay=0.)
// Divergence: a step whose loss or any gradient entry or any updated parameter is not finite is not
// applied; the model is marked diverged[m] = 1 and is frozen (params and state unchanged) from then on.
// Models already marked diverged on entry are not touched.  Models never interact, so a model's
// results do not depend on which other models are in the batch.
// History: for i = 0..steps-1, when (i+1) % record_every == 0, history[m * n_rec + (i+1)/record_every - 1]
// = the loss evaluated in step i (params before its update); NaN for a model that is diverged by then
// (including the step that diverged).  n_rec = steps / record_every.  history may be null.
#pragma once
#include <cstdint>

namespace lscape {
namespace mlp {

constexpr int kMaxDepth = 8;   // K in [1, kMaxDepth]
constexpr int kMaxWidth = 16;  // N in [1, kMaxWidth]

struct Spec {
  int K;  // hidden layers
  int N;  // units per hidden layer
};

inline int64_t dim(const Spec& s) {
  return 2 * int64_t(s.N) + int64_t(s.K - 1) * (int64_t(s.N) * s.N + s.N) + s.N + 1;
}

enum OptKind : int { kSgd = 0, kAdadelta = 1, kAdam = 2 };

// Hyper-parameters in double, as torch.optim holds them: a kernel rounds each constant it uses to float
// once, computing 1 - rho, 1 - beta1 and 1 - beta2 in double first (as torch's Python scalars are).
struct OptConfig {
  int kind;  // OptKind
  double lr;
  double momentum;  // sgd
  double rho;       // adadelta
  double eps;       // adadelta, adam
  double beta1;     // adam
  double beta2;     // adam
};

// params (M, D), x and y (P,) -> loss (M,) and, when grad is not null, grad (M, D).  float32.
void loss_grad_cpu(const Spec& s, int64_t M, const float* params, int64_t P, const float* x,
                   const float* y, float* loss, float* grad, int threads);

// `steps` fused training steps of all M models, in place on params (M, D), state0 and state1 (M, D;
// state1 unused, may be null, for sgd), diverged (M, uint8).  See the header comment for the rules.
void train_cpu(const Spec& s, const OptConfig& opt, int64_t M, float* params, float* state0, float* state1,
               uint8_t* diverged, int64_t P, const float* x, const float* y, int64_t step0, int64_t steps,
               int64_t record_every, float* history, int threads);

// The same on a CUDA device: device pointers, `stream` a cudaStream_t; nullptr on success, else a static
// error string (a CUDA launch error).
const char* loss_grad_cuda(const Spec& s, int64_t M, const float* params, int64_t P, const float* x,
                           const float* y, float* loss, float* grad, void* stream);
const char* train_cuda(const Spec& s, const OptConfig& opt, int64_t M, float* params, float* state0,
                       float* state1, uint8_t* diverged, int64_t P, const float* x, const float* y,
                       int64_t step0, int64_t steps, int64_t record_every, float* history, void* stream);

}  // namespace mlp
}  // namespace lscape
