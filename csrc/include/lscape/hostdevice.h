// LS_HD: a function the CPU and CUDA kernels share (inline on the host; __host__ __device__ and force-
// inlined under nvcc).  The one host/device macro of the project.
#pragma once

#if defined(__CUDACC__)
#define LS_HD __host__ __device__ __forceinline__
#else
#define LS_HD inline
#endif
