#!/usr/bin/env bash
# cibuildwheel's before-all on Linux (pyproject.toml [tool.cibuildwheel.linux]): inside the manylinux_2_28
# image (AlmaLinux 8), nvcc and the static CUDA runtime of CUDA 13.0 from NVIDIA's RHEL 8 repository.
# Only the compiler, the runtime's headers and static library and CCCL: no driver, no shared libraries
# that a wheel could pick up.
set -euo pipefail
case "$(uname -m)" in
  x86_64) repo=x86_64 ;;
  aarch64) repo=sbsa ;;
  *) echo "cibw_install_cuda.sh: no CUDA repository for $(uname -m)" >&2; exit 1 ;;
esac
curl -fsSL -o /etc/yum.repos.d/cuda-rhel8.repo \
  "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/${repo}/cuda-rhel8.repo"
dnf install -y cuda-nvcc-13-0 cuda-cudart-devel-13-0 cuda-cccl-13-0
ln -sfn /usr/local/cuda-13.0 /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
