// Which instruction-set build of the CPU kernels runs here.  Each kernel file that gains from wider
// vectors (csrc/cpu/*_kernels.cpp) is compiled once per ISA into namespace baseline / avx2 / avx512 of
// its family; the family's dispatcher calls LSCAPE_ISA_DISPATCH, so every family always runs on the one
// ISA that `lscape info` reports.
#pragma once
#include <string>

namespace lscape {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best ISA this CPU and this build support, or the one LSCAPE_CPU_ISA=baseline|avx2|avx512 forces.
// Decided once per process.  Throws std::runtime_error (saying why) when LSCAPE_CPU_ISA names an ISA
// this CPU or build cannot run, or an unknown one: the kernels then refuse to run rather than fall back.
Isa cpu_isa();
const char* isa_name(Isa isa);

// Switches every family to `name` (avx512, avx2, baseline or auto) from now on, with the same refusals;
// for benchmarks that time the ISAs side by side in one process.  Not for use while kernels run.
Isa set_cpu_isa(const std::string& name);

}  // namespace lscape

// fn(...) from the namespace of the ISA that runs here (an expression; void functions allowed).
#define LSCAPE_ISA_DISPATCH(fn, ...)                                                  \
  (::lscape::cpu_isa() == ::lscape::Isa::kAvx512 ? avx512::fn(__VA_ARGS__)           \
   : ::lscape::cpu_isa() == ::lscape::Isa::kAvx2 ? avx2::fn(__VA_ARGS__)             \
                                                 : baseline::fn(__VA_ARGS__))
