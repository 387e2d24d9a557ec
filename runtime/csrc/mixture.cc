// The mixture kernel's arithmetic (mixture.h). Plain loops over contiguous columns, which the compiler
// vectorizes; on x86-64 one clone per instruction set is picked at load time (GCC's target_clones), and the
// lora_B tile product, where the time goes, has AVX2 and AVX-512 versions picked the same way (the compiler widens
// uint8 to fp32 in three steps where AVX2 needs one: 2.5x faster on a Zen 3).
#include "mixture.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu.h"

#ifdef HOE_AVX2
#include <immintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOE_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define HOE_CLONES
#endif

namespace hoe {
namespace {

// gates [E] of module i: sum_k mix[k] · softmax(logits[k, :])
void gates(const float* logits, const float* mix, int64_t routers, int64_t experts, float* out) {
  std::fill(out, out + experts, 0.0f);
  for (int64_t k = 0; k < routers; ++k) {
    const float* l = logits + k * experts;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < experts; ++e) top = std::max(top, l[e]);
    float sum = 0.0f;
    float p[kMaxExperts];
    for (int64_t e = 0; e < experts; ++e) sum += (p[e] = std::exp(l[e] - top));
    const float w = mix[k] / sum;
    for (int64_t e = 0; e < experts; ++e) out[e] += w * p[e];
  }
}

// z[n] += scale[n] · sum_j hg[j] · (q[j, n] - zero[n]) for n < count <= kTile, j < rows; q one tile of lora_B
// [rows, kTile], contiguous. As scale[n] · (sum_j hg[j]·q[j, n] - zero[n] · sum_j hg[j]): the levels are exact in
// fp32, and the tile's kTile sums stay in vector registers across j.
void tile_product_portable(const float* hg, int64_t rows, const uint8_t* q, const float* zero, const float* scale,
                           float* z, int64_t count) {
  float acc[kTile] = {};
  float sum = 0.0f;
  for (int64_t j = 0; j < rows; ++j) {
    const float a = hg[j];
    sum += a;
    for (int64_t t = 0; t < kTile; ++t) acc[t] += a * static_cast<float>(q[j * kTile + t]);
  }
  for (int64_t t = 0; t < count; ++t) z[t] += (acc[t] - sum * zero[t]) * scale[t];
}

#ifdef HOE_AVX2
__attribute__((target("avx2,fma"))) void tile_product_avx2(const float* hg, int64_t rows, const uint8_t* q,
                                                           const float* zero, const float* scale, float* z,
                                                           int64_t count) {
  constexpr int kLanes = 8, kVectors = kTile / kLanes;
  __m256 acc[kVectors];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  float sum = 0.0f;
  for (int64_t j = 0; j < rows; ++j, q += kTile) {
    const __m256 a = _mm256_set1_ps(hg[j]);
    sum += hg[j];
    for (int v = 0; v < kVectors; ++v) {  // 8 levels: uint8 -> int32 -> fp32, one instruction each
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + v * kLanes));
      acc[v] = _mm256_fmadd_ps(a, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), acc[v]);
    }
  }
  const __m256 total = _mm256_set1_ps(sum);
  alignas(32) float last[kTile];  // the lanes of a partial vector, stored one by one below
  for (int v = 0; v < kVectors; ++v) {
    const int n = v * kLanes;
    const __m256 term = _mm256_mul_ps(_mm256_fnmadd_ps(total, _mm256_loadu_ps(zero + n), acc[v]),
                                      _mm256_loadu_ps(scale + n));
    if (n + kLanes <= count)
      _mm256_storeu_ps(z + n, _mm256_add_ps(_mm256_loadu_ps(z + n), term));
    else
      _mm256_store_ps(last + n, term);
  }
  for (int64_t n = count / kLanes * kLanes; n < count; ++n) z[n] += last[n];
}

// The same sums in 16 lanes (AVX-512 F): half the instructions per lora_B row, each column's sum in the same order
// (the compiler may fuse the last multiply and add differently: the two paths differ by an ulp).
__attribute__((target("avx2,fma,avx512f"))) void tile_product_avx512(const float* hg, int64_t rows,
                                                                     const uint8_t* q, const float* zero,
                                                                     const float* scale, float* z, int64_t count) {
  constexpr int kLanes = 16, kVectors = kTile / kLanes;
  __m512 acc[kVectors];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  float sum = 0.0f;
  for (int64_t j = 0; j < rows; ++j, q += kTile) {
    const __m512 a = _mm512_set1_ps(hg[j]);
    sum += hg[j];
    for (int v = 0; v < kVectors; ++v) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + v * kLanes));
      acc[v] = _mm512_fmadd_ps(a, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), acc[v]);
    }
  }
  const __m512 total = _mm512_set1_ps(sum);
  for (int v = 0; v < kVectors; ++v) {
    const int64_t n = v * kLanes, left = count - n;
    if (left <= 0) break;
    const __mmask16 lanes = left >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __m512 term = _mm512_mul_ps(_mm512_fnmadd_ps(total, _mm512_loadu_ps(zero + n), acc[v]),
                                      _mm512_loadu_ps(scale + n));
    _mm512_mask_storeu_ps(z + n, lanes, _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, z + n), term));
  }
}
#endif

using TileProduct = void (*)(const float*, int64_t, const uint8_t*, const float*, const float*, float*, int64_t);

// HOE_KERNELS_ISA=portable in the environment keeps the portable loop (what other CPUs run), for tests.
TileProduct pick_tile_product() {
#ifdef HOE_AVX2
  if (kernel_isa() >= Isa::kAvx512) return tile_product_avx512;
  if (kernel_isa() >= Isa::kAvx2) return tile_product_avx2;
#endif
  return tile_product_portable;
}

const TileProduct tile_product = pick_tile_product();

constexpr int64_t kAhead = 2;  // tiles of lora_B levels fetched ahead of the one being summed

// acc[n] += a · x[n] over n < count.
HOE_CLONES void axpy(float a, const float* x, float* acc, int64_t count) {
  for (int64_t n = 0; n < count; ++n) acc[n] += a * x[n];
}

}  // namespace

void mixture(const MixtureShape& s, const float* y, const float* f, const float* mix, const uint8_t* q,
             const float* scales, const float* zeros, const float* offsets, const Output* z) {
  const int64_t m = s.modules;
  const int64_t er = s.experts * s.rank;
  const int64_t blocks = (er + s.block - 1) / s.block;
  const int64_t n_all = s.n, padded = s.padded, tile_count = padded / kTile;
  float hg[kMaxRows], g[kMaxExperts];
  for (int64_t row = 0; row < s.rows; ++row) {
    const float* fr = f + row * s.f_stride;
    const float* h = fr + s.h_offset;
    const float* logits = h + m * er;
    const float* mr = mix + (row / s.steps) * s.routers;
    const float* yr = y + row * s.y_stride;
    int64_t col = 0, tile = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t w = s.widths[i];
      float* zr = z[i].data + row * z[i].stride;  // module i's columns of this row
      gates(logits + i * s.routers * s.experts, mr, s.routers, s.experts, g);
      for (int64_t j = 0; j < er; ++j) hg[j] = h[i * er + j] * g[j / s.rank];
      std::copy(yr + col, yr + col + w, zr);
      for (int64_t b = 0; offsets && b < s.sums; ++b) axpy(fr[s.sums_offset + b], offsets + b * n_all + col, zr, w);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t j0 = b * s.block, rows = std::min(er, j0 + s.block) - j0;
        for (int64_t t = 0; t < tiles(w); ++t) {
          const int64_t at = (tile + t) * kTile;  // the tile's first column in the padded layout
          if (row == 0 && tile + t + kAhead < tile_count) {  // a short stream, fetched late: ahead by hand
            const uint8_t* ahead = q + ((tile + t + kAhead) * er + j0) * kTile;
            for (int64_t line = 0; line < rows * kTile; line += 64) __builtin_prefetch(ahead + line);
          }
          tile_product(hg + j0, rows, q + ((tile + t) * er + j0) * kTile, zeros + b * padded + at,
                       scales + b * padded + at, zr + t * kTile, std::min(kTile, w - t * kTile));
        }
      }
      tile += tiles(w);
      col += w;
    }
  }
}

}  // namespace hoe
