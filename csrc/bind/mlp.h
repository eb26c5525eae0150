// The tiny-MLP ensemble family's binding (mlp.h), written once for both modules: B is the backend
// (csrc/bind/common.h).  Python names: mlp_loss_grad, mlp_train.
#pragma once
#include <utility>

#include "bind/pybind.h"

namespace lscape::bind {

template <class B>
void bind_mlp(py::module_& m) {
  m.def("mlp_loss_grad", [](int K, int N, int64_t M, int64_t P, uintptr_t params, uintptr_t x, uintptr_t y,
                            uintptr_t loss, uintptr_t grad, Tail<B> tail) {
    const mlp::Spec s = mlp_spec(K, N, M, P);
    if (M == 0) return;
    for (auto [a, name] : {std::pair{params, "params"}, {x, "x"}, {y, "y"}, {loss, "loss"}}) need(a, name, "mlp");
    check(B::loss_grad(s, M, ptr<const float>(params), P, ptr<const float>(x), ptr<const float>(y),
                       ptr<float>(loss), ptr<float>(grad), tail),
          B::kModule, "mlp_loss_grad");
  }, "loss (M,) and, when grad is not 0, grad (M, D) of M models on P points (float32)", py::arg("K"),
     py::arg("N"), py::arg("M"), py::arg("P"), py::arg("params"), py::arg("x"), py::arg("y"), py::arg("loss"),
     py::arg("grad"), py::arg(B::kTail), nogil);

  m.def("mlp_train", [](int K, int N, const OptTuple& opt, int64_t M, int64_t P, uintptr_t params,
                        uintptr_t state0, uintptr_t state1, uintptr_t diverged, uintptr_t x, uintptr_t y,
                        int64_t step0, int64_t steps, int64_t record_every, uintptr_t history, Tail<B> tail) {
    const mlp::Spec s = mlp_spec(K, N, M, P);
    const mlp::OptConfig o = to_opt(opt);
    if (steps < 0) throw std::invalid_argument("mlp: steps must be >= 0");
    if (record_every < 1) throw std::invalid_argument("mlp: record_every must be >= 1");
    if (step0 < 0) throw std::invalid_argument("mlp: step0 must be >= 0");
    if (M == 0 || steps == 0) return;
    for (auto [a, name] : {std::pair{params, "params"}, {state0, "state0"}, {diverged, "diverged"}, {x, "x"}, {y, "y"}})
      need(a, name, "mlp");
    if (o.kind != mlp::kSgd) need(state1, "state1", "mlp");
    check(B::train(s, o, M, ptr<float>(params), ptr<float>(state0), ptr<float>(state1), ptr<uint8_t>(diverged), P,
                   ptr<const float>(x), ptr<const float>(y), step0, steps, record_every, ptr<float>(history), tail),
          B::kModule, "mlp_train");
  }, "`steps` fused training steps of M models in place (float32; mlp.h)", py::arg("K"), py::arg("N"),
     py::arg("opt"), py::arg("M"), py::arg("P"), py::arg("params"), py::arg("state0"), py::arg("state1"),
     py::arg("diverged"), py::arg("x"), py::arg("y"), py::arg("step0"), py::arg("steps"), py::arg("record_every"),
     py::arg("history"), py::arg(B::kTail), nogil);
}

}  // namespace lscape::bind
