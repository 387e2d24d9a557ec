// The mixture kernel's arithmetic (mixture.h). Plain loops over contiguous columns, which the compiler
// vectorizes; on x86-64 one clone per instruction set is picked at load time (GCC's target_clones), and the
// lora_B tile product, where the time goes, has AVX2 (madd) and AVX-512 VNNI (vpdpwssd) versions, each summing
// the same integers.
#include "mixture.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

// hg as two int16 levels (mixture.h): hg[j] ≈ sh·hi[j] + sl·lo[j], sh = max|hg| / 32767, sl = sh / 65534.
struct Levels {
  int16_t hi[kMaxRows + 1], lo[kMaxRows + 1];  // an odd count's pair: 0 after the last
  float sh, sl;
};

// The split of hg [n], the same on every path: hi = rint(hg / sh), lo = rint((hg − sh·hi) / sl), |lo| <= 32767.
void split_levels(const float* hg, int64_t n, Levels& l) {
  float top = 0.0f;
  for (int64_t j = 0; j < n; ++j) top = std::max(top, std::fabs(hg[j]));
  l.sh = top / 32767.0f;
  l.sl = l.sh / 65534.0f;
  const double inv = top > 0.0f ? 32767.0 / top : 0.0, inv_lo = top > 0.0f ? 65534.0 / l.sh : 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double hi = std::nearbyint(hg[j] * inv);
    l.hi[j] = static_cast<int16_t>(hi);
    l.lo[j] = static_cast<int16_t>(std::clamp(std::nearbyint((hg[j] - hi * l.sh) * inv_lo), -32767.0, 32767.0));
  }
  l.hi[n] = l.lo[n] = 0;
}

// z[n] += scale[n] · (sh·(Σ_j hi[j]·q[j, n] − zero[n]·Σ_j hi[j]) + sl·(the same with lo)) for n < count <= kTile,
// j < rows, q one tile of lora_B in pairs of rows (mixture.h): each sum exact in int32 (rows <= kRunRows), the
// tile's sums in vector registers across j.
void tile_product_portable(const int16_t* hi, const int16_t* lo, int64_t rows, float sh, float sl,
                           const uint8_t* q, const float* zero, const float* scale, float* z, int64_t count) {
  int32_t acc[2][kTile] = {}, sum[2] = {};
  const int16_t* h[2] = {hi, lo};
  int64_t j = 0;
  for (; j + 1 < rows; j += 2, q += 2 * kTile)
    for (int k = 0; k < 2; ++k) {
      sum[k] += h[k][j] + h[k][j + 1];
      for (int64_t t = 0; t < kTile; ++t) acc[k][t] += h[k][j] * q[2 * t] + h[k][j + 1] * q[2 * t + 1];
    }
  if (j < rows)  // an odd count's last row, on its own
    for (int k = 0; k < 2; ++k) {
      sum[k] += h[k][j];
      for (int64_t t = 0; t < kTile; ++t) acc[k][t] += h[k][j] * q[t];
    }
  for (int64_t t = 0; t < count; ++t) {
    const float a = (static_cast<float>(acc[0][t]) - static_cast<float>(sum[0]) * zero[t]) * sh;
    const float b = (static_cast<float>(acc[1][t]) - static_cast<float>(sum[1]) * zero[t]) * sl;
    z[t] += (a + b) * scale[t];
  }
}

inline int32_t pair(const int16_t* h) {  // h[0], h[1] as one 32-bit lane: what madd/dpwssd multiply a pair by
  int32_t p;
  std::memcpy(&p, h, sizeof p);
  return p;
}

#ifdef HOE_AVX2
// 8 columns of a pair per vector: 16 levels widened to int16, multiplied by (h[j], h[j + 1]) and added in pairs.
__attribute__((target("avx2,fma"))) void tile_product_avx2(const int16_t* hi, const int16_t* lo, int64_t rows,
                                                           float sh, float sl, const uint8_t* q, const float* zero,
                                                           const float* scale, float* z, int64_t count) {
  constexpr int kLanes = 8, kVectors = kTile / kLanes;
  __m256i acc[2][kVectors];
  for (auto& half : acc)
    for (__m256i& a : half) a = _mm256_setzero_si256();
  int32_t sum[2] = {};
  int64_t j = 0;
  for (; j + 1 < rows; j += 2, q += 2 * kTile) {
    const __m256i p = _mm256_set1_epi32(pair(hi + j)), r = _mm256_set1_epi32(pair(lo + j));
    sum[0] += hi[j] + hi[j + 1];
    sum[1] += lo[j] + lo[j + 1];
    for (int v = 0; v < kVectors; ++v) {
      const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 2 * kLanes * v)));
      acc[0][v] = _mm256_add_epi32(acc[0][v], _mm256_madd_epi16(x, p));
      acc[1][v] = _mm256_add_epi32(acc[1][v], _mm256_madd_epi16(x, r));
    }
  }
  if (j < rows) {
    const __m256i p = _mm256_set1_epi32(hi[j]), r = _mm256_set1_epi32(lo[j]);
    sum[0] += hi[j];
    sum[1] += lo[j];
    for (int v = 0; v < kVectors; ++v) {
      const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + kLanes * v)));
      acc[0][v] = _mm256_add_epi32(acc[0][v], _mm256_mullo_epi32(x, p));
      acc[1][v] = _mm256_add_epi32(acc[1][v], _mm256_mullo_epi32(x, r));
    }
  }
  const __m256 t0 = _mm256_set1_ps(static_cast<float>(sum[0])), t1 = _mm256_set1_ps(static_cast<float>(sum[1]));
  const __m256 f0 = _mm256_set1_ps(sh), f1 = _mm256_set1_ps(sl);
  alignas(32) float last[kTile];  // the lanes of a partial vector, stored one by one below
  for (int v = 0; v < kVectors; ++v) {
    const int n = v * kLanes;
    const __m256 zr = _mm256_loadu_ps(zero + n);
    const __m256 a = _mm256_mul_ps(_mm256_fnmadd_ps(t0, zr, _mm256_cvtepi32_ps(acc[0][v])), f0);
    const __m256 b = _mm256_mul_ps(_mm256_fnmadd_ps(t1, zr, _mm256_cvtepi32_ps(acc[1][v])), f1);
    const __m256 term = _mm256_mul_ps(_mm256_add_ps(a, b), _mm256_loadu_ps(scale + n));
    if (n + kLanes <= count)
      _mm256_storeu_ps(z + n, _mm256_add_ps(_mm256_loadu_ps(z + n), term));
    else
      _mm256_store_ps(last + n, term);
  }
  for (int64_t n = count / kLanes * kLanes; n < count; ++n) z[n] += last[n];
}

// The same sums 16 columns of a pair per vector, in vpdpwssd (AVX-512 VNNI + BW): 12 instructions per pair of rows
// where the fp32 loop this replaced took ~26 (levels widened to int32, converted, FMAs: 0.33 ms of a 3.6 ms decode
// step on a Zen 5).
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_product_vnni(
    const int16_t* hi, const int16_t* lo, int64_t rows, float sh, float sl, const uint8_t* q, const float* zero,
    const float* scale, float* z, int64_t count) {
  constexpr int kLanes = 16, kVectors = kTile / kLanes;
  __m512i acc[2][kVectors];
  for (auto& half : acc)
    for (__m512i& a : half) a = _mm512_setzero_si512();
  int32_t sum[2] = {};
  int64_t j = 0;
  for (; j + 1 < rows; j += 2, q += 2 * kTile) {
    const __m512i p = _mm512_set1_epi32(pair(hi + j)), r = _mm512_set1_epi32(pair(lo + j));
    sum[0] += hi[j] + hi[j + 1];
    sum[1] += lo[j] + lo[j + 1];
    for (int v = 0; v < kVectors; ++v) {
      const __m512i x = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * kLanes * v)));
      acc[0][v] = _mm512_dpwssd_epi32(acc[0][v], x, p);
      acc[1][v] = _mm512_dpwssd_epi32(acc[1][v], x, r);
    }
  }
  if (j < rows) {
    const __m512i p = _mm512_set1_epi32(hi[j]), r = _mm512_set1_epi32(lo[j]);
    sum[0] += hi[j];
    sum[1] += lo[j];
    for (int v = 0; v < kVectors; ++v) {
      const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kLanes * v)));
      acc[0][v] = _mm512_add_epi32(acc[0][v], _mm512_mullo_epi32(x, p));
      acc[1][v] = _mm512_add_epi32(acc[1][v], _mm512_mullo_epi32(x, r));
    }
  }
  const __m512 t0 = _mm512_set1_ps(static_cast<float>(sum[0])), t1 = _mm512_set1_ps(static_cast<float>(sum[1]));
  const __m512 f0 = _mm512_set1_ps(sh), f1 = _mm512_set1_ps(sl);
  for (int v = 0; v < kVectors; ++v) {
    const int64_t n = v * kLanes, left = count - n;
    if (left <= 0) break;
    const __mmask16 lanes = left >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __m512 zr = _mm512_loadu_ps(zero + n);
    const __m512 a = _mm512_mul_ps(_mm512_fnmadd_ps(t0, zr, _mm512_cvtepi32_ps(acc[0][v])), f0);
    const __m512 b = _mm512_mul_ps(_mm512_fnmadd_ps(t1, zr, _mm512_cvtepi32_ps(acc[1][v])), f1);
    const __m512 term = _mm512_mul_ps(_mm512_add_ps(a, b), _mm512_loadu_ps(scale + n));
    _mm512_mask_storeu_ps(z + n, lanes, _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, z + n), term));
  }
}
#endif

using TileProduct = void (*)(const int16_t*, const int16_t*, int64_t, float, float, const uint8_t*, const float*,
                             const float*, float*, int64_t);

// HOE_KERNELS_ISA=portable|avx2|avx512 in the environment keeps a narrower loop (what other CPUs run), for tests.
TileProduct pick_tile_product() {
#ifdef HOE_AVX2
  if (kernel_vnni()) return tile_product_vnni;
  if (kernel_isa() >= Isa::kAvx2) return tile_product_avx2;
#endif
  return tile_product_portable;
}

const TileProduct tile_product = pick_tile_product();

constexpr int64_t kAhead = 2;  // tiles of lora_B levels fetched ahead of the one being summed
constexpr int64_t kRunRows = 256;  // lora_B rows summed in one int32: 256 · 32767 · 255 < 2^31

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
  Levels levels;
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
      split_levels(hg, er, levels);
      std::copy(yr + col, yr + col + w, zr);
      for (int64_t b = 0; offsets && b < s.sums; ++b) axpy(fr[s.sums_offset + b], offsets + b * n_all + col, zr, w);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t block_end = std::min(er, (b + 1) * s.block);
        for (int64_t j0 = b * s.block; j0 < block_end; j0 += kRunRows) {  // runs of a block, each exact in int32
          const int64_t rows = std::min(block_end, j0 + kRunRows) - j0;
          for (int64_t t = 0; t < tiles(w); ++t) {
            const int64_t at = (tile + t) * kTile;  // the tile's first column in the padded layout
            if (row == 0 && tile + t + kAhead < tile_count) {  // a short stream, fetched late: ahead by hand
              const uint8_t* ahead = q + ((tile + t + kAhead) * er + j0) * kTile;
              for (int64_t line = 0; line < rows * kTile; line += 64) __builtin_prefetch(ahead + line);
            }
            tile_product(levels.hi + j0, levels.lo + j0, rows, levels.sh, levels.sl,
                         q + ((tile + t) * er + j0) * kTile, zeros + b * padded + at, scales + b * padded + at,
                         zr + t * kTile, std::min(kTile, w - t * kTile));
          }
        }
      }
      tile += tiles(w);
      col += w;
    }
  }
}

}  // namespace hoe
