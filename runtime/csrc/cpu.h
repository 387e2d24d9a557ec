// Which code path hoe's kernels take on this CPU, decided once when onnxruntime loads the library.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define HOE_AVX2 1
#endif

namespace hoe {

// AVX2 + FMA available, and HOE_KERNELS_PORTABLE=1 (tests: the loops other CPUs run) not set.
inline bool use_avx2() {
  const char* portable = std::getenv("HOE_KERNELS_PORTABLE");
  if (portable && std::strcmp(portable, "1") == 0) return false;
#ifdef HOE_AVX2
  __builtin_cpu_init();  // this may run as a static initializer, before libgcc's own
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace hoe
