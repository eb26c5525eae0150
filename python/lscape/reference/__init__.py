"""Pure torch/numpy implementations of every kernel: the CPU fallback and the test oracle."""
