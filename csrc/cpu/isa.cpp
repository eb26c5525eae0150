// The run-time choice of the CPU kernels' instruction set (cpu_isa.h).
#include "lscape/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace lscape {
namespace {

// What this CPU can run of what was built (LSCAPE_HAVE_*_BUILD: the build compiled that ISA's objects
// with its flags; on other architectures they are portable copies and never chosen).
bool cpu_has(Isa isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  const bool avx2 = LSCAPE_HAVE_AVX2_BUILD && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  if (isa == Isa::kAvx2) return avx2;
  if (isa == Isa::kAvx512)
    return avx2 && LSCAPE_HAVE_AVX512_BUILD && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  return true;
#else
  return isa == Isa::kBaseline;
#endif
}

// The ISA named `want` ("" or "auto": the best one), refused with a reason when it cannot run here.
// `where` names the setting in the message.
Isa resolve(const std::string& want, const char* where) {
  if (want.empty() || want == "auto") {
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2})
      if (cpu_has(isa)) return isa;
    return Isa::kBaseline;
  }
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (want != isa_name(isa)) continue;
    if (!cpu_has(isa))
      throw std::runtime_error(std::string(where) + ": got '" + want + "', but this " +
                               (isa == Isa::kAvx512 ? "CPU lacks AVX-512 (F, BW, DQ, VL)"
                                                    : "CPU lacks AVX2 + FMA + BMI2 + POPCNT") +
                               " or this build has no " + want + " kernels; expected one it can run: " +
                               (cpu_has(Isa::kAvx2) ? "avx2 or baseline" : "baseline") + " (or auto)");
    return isa;
  }
  throw std::runtime_error(std::string(where) + ": got '" + want + "', expected avx512, avx2, baseline or auto");
}

Isa from_env() {
  const char* env = std::getenv("LSCAPE_CPU_ISA");
  return resolve(env ? env : "", "LSCAPE_CPU_ISA");
}

// -1: not decided yet (or the environment's choice was refused: every call reports it again).
std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

Isa cpu_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = static_cast<int>(from_env());
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

Isa set_cpu_isa(const std::string& name) {
  const Isa isa = resolve(name == "auto" ? "" : name, "isa");
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return isa;
}

}  // namespace lscape
