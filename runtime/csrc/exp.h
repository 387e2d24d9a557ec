// exp for the kernels' softmax (attention.cc) and SiLU (activation.cc): one vectorised form, shared.
#pragma once

#include "cpu.h"

#ifdef HOE_AVX2
#include <immintrin.h>
#endif

namespace hoe {

constexpr float kMinExp = -87.0f;  // exp below this is taken as 0 (fp32 underflows near -87.3)

#ifdef HOE_AVX2
// exp(x) for x <= 0: 2^n · p(r), n = round(x·log2 e), r = x − n·ln 2 (two-part ln 2), p Cephes' degree-6
// polynomial (≈ 1 ulp); 0 below kMinExp. Always inlined, so each caller compiles it for its own target.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 exp_ps(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kMinExp), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kMinExp));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(two_n)), keep);
}
#endif

}  // namespace hoe
