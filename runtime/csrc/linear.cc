// The int4 linear (linear.h): a task per run of column groups; within it each group's levels are read once for
// all rows (a prompt's rows then find them in cache). Three builds of a group's product: plain loops (any CPU),
// AVX2 + FMA, and AVX-512 VNNI (int8 activations; its exact product is the AVX2 one).
#include "linear.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef HOE_AVX2
#include <immintrin.h>
#endif

namespace hoe {
namespace {

constexpr int64_t kSlice = 16;  // columns per slice of a group (linear.h)

// A row's activations as the products read them: padded to whole parts, and in int8 mode their levels, part
// scales and 8 · (sum of the part's levels) (what the zero point 8 takes away).
struct Rows {
  const float* x;    // [M, parts·32] fp32, zeros past K
  const int8_t* q;   // [M, parts·32]            (int8 mode)
  const float* qs;   // [M, parts] scales        (int8 mode)
  const int32_t* z;  // [M, parts] 8 · sum(q)    (int8 mode)
};

// A decode step streams the weights from memory once, and a part's ~130 instructions hold the core's queue
// longer than a plain read's, so fewer lines are in flight: each part asks for the lines of the part
// kPrefetchParts ahead (often the next group's, which follow in memory). Which cache, if any, depends on the core
// (measured in-process on the embedded model, docs/GRAPH.md "Linear kernel"):
// - Intel (the Xeon of docs/BENCHMARKS.md session 18): into L2, 104 MB of tiles at 0.63 of a plain read loop's
//   bandwidth without, ~0.9 with (2 to 12 parts ahead tried; 4 into L2 best);
// - AMD Zen 4 (family 0x19, session 23): none in the VNNI loop, whose 64-byte reads stream on their own and for
//   which the 20 hints a part cost issue slots (a decode step 4-7 % faster without);
// - AMD Zen 5 (family 0x1A on, session 24): into L1, a decode step 0.85-0.88 of L2's and 0.82 of none's (2 to 12
//   parts ahead tried; 3 to 6 alike).
// The AVX2 loop's 32-byte reads keep the L2 hint everywhere (Zen 4: 6.6 GB/s without, 19 with). Past the last
// tile the hint fetches nothing harmful: prefetches never fault.
constexpr int64_t kPrefetchParts = 4;

enum class Ahead { kNone, kL1, kL2 };  // where a part's lines are fetched ahead to

#ifdef HOE_AVX2
template <Ahead kTo>
inline void prefetch_part_ahead(const uint8_t* w) {
  if constexpr (kTo == Ahead::kNone) return;
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchParts * kLinearStride;
  for (int64_t line = 0; line < kLinearStride; line += 64)
    _mm_prefetch(reinterpret_cast<const char*>(ahead + line), kTo == Ahead::kL1 ? _MM_HINT_T0 : _MM_HINT_T1);
}

// The VNNI loop's choice for this core (above).
inline Ahead vnni_ahead() {
  const Core c = core();
  if (c.amd) return c.family == 0x19 ? Ahead::kNone : Ahead::kL1;
  return Ahead::kL2;
}
#endif

using GroupFn = void (*)(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out);

float scale(const uint8_t* part, int64_t column) {
  float f;
  std::memcpy(&f, part + kLinearLevelBytes + sizeof(float) * column, sizeof f);
  return f;
}

// -- plain loops
void group_portable(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out, bool exact) {
  const int64_t width = parts * kLinearInputs;
  std::fill(out, out + kLinearColumns, 0.0f);
  for (int64_t p = 0; p < parts; ++p, w += kLinearStride) {
    const float* x = r.x + row * width + p * kLinearInputs;
    const int8_t* q = exact ? nullptr : r.q + row * width + p * kLinearInputs;
    for (int64_t col = 0; col < kLinearColumns; ++col) {
      const uint8_t* bytes = w + col / kSlice * 256 + col % kSlice * 4;
      float sum = 0.0f;
      int32_t dot = 0;
      for (int64_t j = 0; j < 4; ++j) {
        for (int64_t t = 0; t < 4; ++t) {
          const uint8_t b = bytes[j * 64 + t];
          const int64_t lo = j * 8 + t, hi = lo + 4;
          if (exact)
            sum += static_cast<float>((b & 15) - 8) * x[lo] + static_cast<float>((b >> 4) - 8) * x[hi];
          else
            dot += (b & 15) * q[lo] + (b >> 4) * q[hi];
        }
      }
      const float sc = scale(w, col);
      out[col] += exact ? sum * sc : static_cast<float>(dot - r.z[row * parts + p]) * (sc * r.qs[row * parts + p]);
    }
  }
}

void group_portable_int8(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out) {
  group_portable(w, parts, r, row, out, false);
}

void group_portable_exact(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out) {
  group_portable(w, parts, r, row, out, true);
}

#ifdef HOE_AVX2
#define HOE_LINEAR_AVX2 __attribute__((target("avx2,fma")))

// 8 columns (half a slice) of vector j: their 4 bytes each.
HOE_LINEAR_AVX2 __m256i half_vector(const uint8_t* w, int64_t slice, int64_t j, int64_t half) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + slice * 256 + j * 64 + half * 32));
}

HOE_LINEAR_AVX2 __m256 half_scales(const uint8_t* w, int64_t slice, int64_t half) {
  return _mm256_loadu_ps(reinterpret_cast<const float*>(w + kLinearLevelBytes) + slice * kSlice + half * 8);
}

HOE_LINEAR_AVX2 void group_avx2_int8(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out) {
  const int64_t width = parts * kLinearInputs;
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t p = 0; p < parts; ++p, w += kLinearStride) {
    const int8_t* q = r.q + row * width + p * kLinearInputs;
    int32_t a[8];
    std::memcpy(a, q, sizeof a);
    if (row == 0) prefetch_part_ahead<Ahead::kL2>(w);  // a prompt's later rows find the part in cache
    const __m256i z = _mm256_set1_epi32(r.z[row * parts + p]);
    const __m256 qs = _mm256_set1_ps(r.qs[row * parts + p]);
    for (int64_t h = 0; h < 8; ++h) {  // 8 halves of the 4 slices
      const int64_t slice = h / 2, half = h % 2;
      __m256i sums = _mm256_setzero_si256();  // int16 pairs: at most 8 · 2 · 15 · 127 < 2^15
      for (int64_t j = 0; j < 4; ++j) {
        const __m256i v = half_vector(w, slice, j, half);
        sums = _mm256_add_epi16(sums, _mm256_maddubs_epi16(_mm256_and_si256(v, mask), _mm256_set1_epi32(a[2 * j])));
        sums = _mm256_add_epi16(sums, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                                                           _mm256_set1_epi32(a[2 * j + 1])));
      }
      const __m256i dot = _mm256_sub_epi32(_mm256_madd_epi16(sums, ones), z);
      acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(half_scales(w, slice, half), qs), acc[h]);
    }
  }
  for (int64_t h = 0; h < 8; ++h) _mm256_storeu_ps(out + h * 8, acc[h]);
}

HOE_LINEAR_AVX2 void group_avx2_exact(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out) {
  const int64_t width = parts * kLinearInputs;
  const __m256i mask = _mm256_set1_epi32(0x0F);
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  const __m256i zero = _mm256_set1_epi32(8);
  for (int64_t p = 0; p < parts; ++p, w += kLinearStride) {
    const float* x = r.x + row * width + p * kLinearInputs;
    for (int64_t h = 0; h < 8; ++h) {
      const int64_t slice = h / 2, half = h % 2;
      // sum of (level − 8) · x: the weights themselves, so a large x (a prompt's first token) cancels nothing
      __m256 sum = _mm256_setzero_ps();
      for (int64_t j = 0; j < 4; ++j) {
        const __m256i v = half_vector(w, slice, j, half);
        for (int t = 0; t < 4; ++t) {
          const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 8 * t), mask), zero);
          const __m256i hi = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 8 * t + 4), mask), zero);
          sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_set1_ps(x[j * 8 + t]), sum);
          sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_set1_ps(x[j * 8 + 4 + t]), sum);
        }
      }
      acc[h] = _mm256_fmadd_ps(sum, half_scales(w, slice, half), acc[h]);
    }
  }
  for (int64_t h = 0; h < 8; ++h) _mm256_storeu_ps(out + h * 8, acc[h]);
}

#define HOE_LINEAR_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

template <Ahead kTo>
HOE_LINEAR_VNNI void group_vnni_int8(const uint8_t* w, int64_t parts, const Rows& r, int64_t row, float* out) {
  const int64_t width = parts * kLinearInputs;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  __m512 acc[4];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t p = 0; p < parts; ++p, w += kLinearStride) {
    const int8_t* q = r.q + row * width + p * kLinearInputs;
    int32_t a[8];
    std::memcpy(a, q, sizeof a);
    if (row == 0) prefetch_part_ahead<kTo>(w);  // a prompt's later rows find the part in cache
    __m512i lo[4], hi[4];  // two sums per slice: the dots' dependency chains halved
    for (int64_t s = 0; s < 4; ++s) lo[s] = hi[s] = _mm512_setzero_si512();
    for (int64_t j = 0; j < 4; ++j) {
      const __m512i a0 = _mm512_set1_epi32(a[2 * j]), a1 = _mm512_set1_epi32(a[2 * j + 1]);
      for (int64_t s = 0; s < 4; ++s) {
        const __m512i v = _mm512_loadu_si512(w + s * 256 + j * 64);
        lo[s] = _mm512_dpbusd_epi32(lo[s], _mm512_and_si512(v, mask), a0);
        hi[s] = _mm512_dpbusd_epi32(hi[s], _mm512_and_si512(_mm512_srli_epi16(v, 4), mask), a1);
      }
    }
    const __m512i z = _mm512_set1_epi32(r.z[row * parts + p]);
    const __m512 qs = _mm512_set1_ps(r.qs[row * parts + p]);
    for (int64_t s = 0; s < 4; ++s) {
      const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(lo[s], hi[s]), z);
      const __m512 scales = _mm512_loadu_ps(reinterpret_cast<const float*>(w + kLinearLevelBytes) + s * kSlice);
      acc[s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scales, qs), acc[s]);
    }
  }
  for (int64_t s = 0; s < 4; ++s) _mm512_storeu_ps(out + s * kSlice, acc[s]);
}
#endif

// The int8 rounding of one part's 32 inputs (linear.h): levels, scale, 8 · sum of the levels.
void quantize_part(const float* x, int8_t* q, float* scale, int32_t* zero) {
  float top = 0.0f;
  for (int64_t i = 0; i < kLinearInputs; ++i) top = std::max(top, std::fabs(x[i]));
  const float s = top / 127.0f, inv = top > 0.0f ? 127.0f / top : 0.0f;
  int32_t sum = 0;
  for (int64_t i = 0; i < kLinearInputs; ++i) {
    q[i] = static_cast<int8_t>(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
    sum += q[i];
  }
  *scale = s;
  *zero = 8 * sum;
}

#ifdef HOE_AVX2
// The same rounding in two vectors of 16: the same max, the same products x · inv, rounded in the current (half to
// even) mode as nearbyint is, so the levels are bitwise those of quantize_part.
HOE_LINEAR_VNNI void quantize_part_avx512(const float* x, int8_t* q, float* scale, int32_t* zero) {
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  alignas(64) float tops[16];
  _mm512_store_ps(tops, _mm512_max_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), magnitude)),
                                      _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b), magnitude))));
  const float top = *std::max_element(tops, tops + 16);
  const __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  const __m512i first = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), lo), hi);
  const __m512i second = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)), lo), hi);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(first));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(second));
  alignas(64) int32_t sums[16];
  _mm512_store_si512(sums, _mm512_add_epi32(first, second));
  int32_t sum = 0;
  for (const int32_t v : sums) sum += v;
  *scale = top / 127.0f;
  *zero = 8 * sum;
}
#endif

using QuantizeFn = void (*)(const float* x, int8_t* q, float* scale, int32_t* zero);

struct Products {
  GroupFn int8, exact;
  QuantizeFn quantize;
};

Products choose() {
  const Isa isa = kernel_isa();
#ifdef HOE_AVX2
  if (isa != Isa::kPortable) {
    const bool vnni = isa == Isa::kAvx512 && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vnni");
    constexpr GroupFn kVnni[] = {group_vnni_int8<Ahead::kNone>, group_vnni_int8<Ahead::kL1>,
                                 group_vnni_int8<Ahead::kL2>};  // by Ahead
    if (vnni) return {kVnni[static_cast<int>(vnni_ahead())], group_avx2_exact, quantize_part_avx512};
    return {group_avx2_int8, group_avx2_exact, quantize_part};
  }
#endif
  (void)isa;
  return {group_portable_int8, group_portable_exact, quantize_part};
}

const Products products = choose();  // decided at load

struct Job {
  const LinearShape& s;
  const uint8_t* packed;
  const float* bias;
  float* y;
  Rows rows;
  GroupFn product;
  int64_t parts, groups, per_task;
};

void run_task(void* data, size_t index) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t n = job.s.n, begin = static_cast<int64_t>(index) * job.per_task;
  const int64_t end = std::min(job.groups, begin + job.per_task);
  alignas(64) float out[kLinearColumns];
  for (int64_t g = begin; g < end; ++g) {
    const uint8_t* w = job.packed + g * job.parts * kLinearStride;
    const int64_t first = g * kLinearColumns, count = std::min(kLinearColumns, n - first);
    for (int64_t row = 0; row < job.s.rows; ++row) {
      job.product(w, job.parts, job.rows, row, out);
      float* y = job.y + row * n + first;
      for (int64_t c = 0; c < count; ++c) y[c] = job.bias ? out[c] + job.bias[first + c] : out[c];
    }
  }
}

}  // namespace

void linear_columns(const uint8_t* packed, int64_t k, const int64_t* ids, int64_t count, float* y) {
  const int64_t parts = linear_parts(k);
  for (int64_t i = 0; i < count; ++i, y += k) {
    const int64_t column = ids[i] % kLinearColumns;
    const uint8_t* w = packed + ids[i] / kLinearColumns * parts * kLinearStride;
    const uint8_t* bytes = w + column / kSlice * 256 + column % kSlice * 4;  // vector j's 4 bytes: + 64 j
    for (int64_t p = 0; p < parts; ++p, w += kLinearStride, bytes += kLinearStride) {
      const float sc = scale(w, column);
      const int64_t first = p * kLinearInputs, last = std::min(k, first + kLinearInputs);
      for (int64_t input = first; input < last; ++input) {
        const int64_t j = (input - first) / 8, t = (input - first) % 8;
        const uint8_t b = bytes[j * 64 + t % 4];
        y[input] = static_cast<float>((t < 4 ? b & 15 : b >> 4) - 8) * sc;
      }
    }
  }
}

void linear_int4(const LinearShape& s, const float* x, const uint8_t* packed, const float* bias, float* y,
                 const Parallel& parallel) {
  const int64_t parts = linear_parts(s.k), width = parts * kLinearInputs, groups = linear_groups(s.n);
  static thread_local std::vector<float> padded, part_scales;
  static thread_local std::vector<int8_t> levels;
  static thread_local std::vector<int32_t> zeros;
  padded.assign(s.rows * width, 0.0f);
  for (int64_t row = 0; row < s.rows; ++row) std::memcpy(&padded[row * width], x + row * s.k, s.k * sizeof(float));
  Rows rows{padded.data(), nullptr, nullptr, nullptr};
  if (!s.exact) {
    levels.resize(s.rows * width);
    part_scales.resize(s.rows * parts);
    zeros.resize(s.rows * parts);
    for (int64_t i = 0; i < s.rows * parts; ++i)
      products.quantize(&padded[i * kLinearInputs], &levels[i * kLinearInputs], &part_scales[i], &zeros[i]);
    rows.q = levels.data();
    rows.qs = part_scales.data();
    rows.z = zeros.data();
  }
  // Tasks of about 4 groups (256 columns): enough of them for a pool, each long enough to pay its dispatch.
  const int64_t per_task = std::min<int64_t>(4, groups), tasks = (groups + per_task - 1) / per_task;
  Job job{s, packed, bias, y, rows, s.exact ? products.exact : products.int8, parts, groups, per_task};
  run_all(parallel, run_task, static_cast<size_t>(tasks), &job);
}

}  // namespace hoe
