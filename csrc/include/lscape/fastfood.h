// The Fastfood projection (python/lscape/reference/fastfood.py defines the matrix): the unnormalised
// Walsh-Hadamard transform and P's two products on the CPU.
//
// Layout: P is D x d, built from nb = ceil(D / n) blocks of n = 2^ceil(log2 d) rows (the last holds r_last
// = D - (nb - 1) n); per block b, sign (nb, n) +-1, perm (nb, n) int32 and gs (nb, n) (zero past r_b), all
// C-contiguous in the product's dtype T.  The transform applies stages h = 1, 2, 4, ... with the butterfly
// (a + b, a - b) whatever the vector width, so the kernels' P theta is bit-identical to the reference's;
// P^T g sums the blocks in order 0, 1, ..., nb - 1 on any thread count (deterministic, not the
// reference's summation order).
#pragma once
#include <cstdint>

namespace lscape {
namespace fastfood {

// x (rows, n) in place: H each row.  n a power of two >= 1.
template <typename T>
void fwht_cpu(int64_t rows, int64_t n, T* x, int nt);

// y (B, D) = P x, x (B, d).
template <typename T>
void matvec_cpu(int64_t D, int64_t d, int64_t n, int64_t nb, const T* sign, const int32_t* perm, const T* gs,
                const T* x, T* y, int64_t B, int nt);

// out (B, d) = P^T g, g (B, D).  Takes the inverse permutations inv (nb, n) int32 (inv[b, perm[b, i]] = i)
// and gs_inv (nb, n), gs_inv[b, j] = gs[b, inv[b, j]]: the scatter through perm becomes a gather.
template <typename T>
void rmatvec_cpu(int64_t D, int64_t d, int64_t n, int64_t nb, const T* sign, const int32_t* inv, const T* gs_inv,
                 const T* g, T* out, int64_t B, int nt);

}  // namespace fastfood
}  // namespace lscape
