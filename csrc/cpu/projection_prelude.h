// The includes and warnings every CPU projection kernel file shares (projection_kernels.cpp,
// projection_sell_kernels.cpp; both compiled once per instruction set).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "lscape/projection.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef LSCAPE_OPENMP
#include <omp.h>
#endif

// GCC does not see the vector stores that fill a block of packed indices before it is read, and its
// gather intrinsics start from an uninitialised vector it then warns about.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
