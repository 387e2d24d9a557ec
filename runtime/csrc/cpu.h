// How hoe's kernels run: which code path they take on this CPU (decided once when onnxruntime loads the
// library), and on which threads.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define HOE_AVX2 1
#include <cpuid.h>
#endif

// GCC 12's AVX-512 intrinsics pass an `_mm512_undefined_*()` source that -Wuninitialized reports inside the
// kernels that call them (GCC bug 105593, fixed in 13): off in the kernels' files, which all include this one.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace hoe {

// The paths, narrowest first: plain loops (any CPU), AVX2 + FMA, and AVX-512 F + VL (32 vector registers; some
// kernels' tiles 16 lanes wide).
enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest path this CPU has, capped by HOE_KERNELS_ISA=portable|avx2 (tests: the loops other CPUs run).
inline Isa kernel_isa() {
  const char* cap = std::getenv("HOE_KERNELS_ISA");
  if (cap && std::strcmp(cap, "portable") == 0) return Isa::kPortable;
#ifdef HOE_AVX2
  __builtin_cpu_init();  // this may run as a static initializer, before libgcc's own
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kPortable;
  if (cap && std::strcmp(cap, "avx2") == 0) return Isa::kAvx2;
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? Isa::kAvx512 : Isa::kAvx2;
#else
  return Isa::kPortable;
#endif
}

// The core's vendor and family (CPUID leaf 1: base + extended family; AMD Zen 3/4 0x19, Zen 5 0x1A), where a
// kernel's best prefetching differs between cores (linear.cc).
struct Core {
  bool amd = false;
  unsigned family = 0;
};

inline Core core() {
  Core c;
#ifdef HOE_AVX2
  __builtin_cpu_init();
  c.amd = __builtin_cpu_is("amd");
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    c.family = (eax >> 8) & 0xF;
    if (c.family == 0xF) c.family += (eax >> 20) & 0xFF;
  }
#endif
  return c;
}

// Runs fn(data, i) for every i < total, in any order, maybe on several threads (onnxruntime's intra-op pool).
struct Parallel {
  void* context = nullptr;
  void (*run)(void* context, void (*fn)(void*, size_t), size_t total, void* data) = nullptr;  // null: in order
};

inline void run_all(const Parallel& parallel, void (*fn)(void*, size_t), size_t total, void* data) {
  if (parallel.run) return parallel.run(parallel.context, fn, total, data);
  for (size_t i = 0; i < total; ++i) fn(data, i);
}

}  // namespace hoe
