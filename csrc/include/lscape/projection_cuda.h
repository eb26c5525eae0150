// CUDA kernels of the projection family (csrc/cuda/projection.cu).  Plain C++: no CUDA or pybind11
// types cross this header.  Pointers are device pointers; `stream` is a cudaStream_t.  Each function
// returns nullptr on success or a static error string (a CUDA launch error).  Same semantics and
// storage layout as the CPU kernels in projection.h.
#pragma once
#include <cstdint>

#include "lscape/projection.h"

namespace lscape {
namespace proj {

const char* count_cuda(const Spec& s, uint32_t* seg_counts, int64_t* col_counts, void* stream);
const char* fill_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr, int32_t* indices,
                      void* stream);
template <typename T>
const char* matvec_indices_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                                const int32_t* indices, const T* scales, const T* theta, T* out, int64_t B,
                                void* stream);
template <typename T>
const char* rmatvec_indices_cuda(const Spec& s, const int32_t* seg_start, const int64_t* chunk_ptr,
                                 const int32_t* indices, const T* scales, const T* g, T* out, int64_t B,
                                 void* stream);
template <typename T>
const char* matvec_implicit_cuda(const Spec& s, const T* scales, const T* theta, T* out, int64_t B,
                                 void* stream);
template <typename T>
const char* rmatvec_implicit_cuda(const Spec& s, const T* scales, const T* g, T* out, int64_t B,
                                  void* stream);

// Driver-visible facts for `lscape info`: runtime version and device count (or a CUDA error string).
int cuda_runtime_version();
int cuda_device_count();

}  // namespace proj
}  // namespace lscape
