// The SwiGLU epilogue (activation.h). sigmoid(g) from e = exp(−|g|) <= 1, which neither overflows nor loses the
// small side: 1 / (1 + e) for g >= 0, e / (1 + e) below; 8 lanes at a time where the CPU has AVX2 + FMA.
#include "activation.h"

#include <cmath>

#include "cpu.h"
#include "exp.h"

namespace hoe {
namespace {

inline float silu(float g) {
  const float e = std::exp(-std::fabs(g));
  return g * (g >= 0.0f ? 1.0f : e) / (1.0f + e);
}

void swiglu_portable(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t c = 0; c < n; ++c) out[c] = silu(gate[c]) * up[c];
}

#ifdef HOE_AVX2
__attribute__((target("avx2,fma"))) void swiglu_avx2(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 g = _mm256_loadu_ps(gate + c);
    const __m256 e = exp_ps(_mm256_or_ps(g, sign));  // exp(−|g|)
    const __m256 top = _mm256_blendv_ps(one, e, g);  // g's sign bit picks e
    const __m256 s = _mm256_div_ps(top, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_mul_ps(g, s), _mm256_loadu_ps(up + c)));
  }
  swiglu_portable(gate + c, up + c, n - c, out + c);
}
#endif

using Row = void (*)(const float*, const float*, int64_t, float*);

Row choose() {
#ifdef HOE_AVX2
  if (kernel_isa() >= Isa::kAvx2) return swiglu_avx2;
#endif
  return swiglu_portable;
}

const Row row_swiglu = choose();  // decided at load

}  // namespace

void swiglu(const float* y, int64_t rows, int64_t width, float* out) {
  for (int64_t r = 0; r < rows; ++r, y += 2 * width, out += width) row_swiglu(y, y + width, width, out);
}

}  // namespace hoe
