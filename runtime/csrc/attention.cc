// The Attention op's arithmetic (attention.h). Per batch row and KV head, the R = (H / Hkv)·T query rows that
// share the head are scored against its S cached keys, softmaxed and mixed over its values:
// - a decode step (few rows): each key and value is read once and serves every row (the cache is read once per
//   KV head, not once per query head);
// - a prompt (many rows, D a multiple of 16): the keys are transposed once into a scratch buffer and both products
//   run as register-blocked 6 x 16 tiles.
// Both take AVX2 + FMA where the CPU has them (cpu.h), with a vectorised exp; other CPUs run the plain loops. The
// decode path has 8-lane tiles (AVX2) and, on AVX-512 F + VL CPUs with D % 16 == 0, the same tiles over 16 lanes
// (half the int8 widening and FMA instructions per cache row); both prefetch an int8 cache's rows kAhead ahead
// (at long context the decode step waited on memory: 12.5 MB of cache over 30 layers read cold at 3.2-3.9 ms
// without, 2.1-2.4 ms with, at 32 rows ahead; 8 ahead helped little, 64 no more).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu.h"
#include "exp.h"

namespace hoe {
namespace {

constexpr int64_t kRowBlock = 6, kColBlock = 16;  // the prompt path's tiles (12 accumulators)
constexpr int64_t kFewRows = 8;                   // at most this many rows take the decode path

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// One KV head's keys or values, S rows of D: rows [0, quantized) are int8 cache rows (D values, then their fp32
// scale), rows [quantized, S) fp32 rows `stride` floats apart (an fp32 cache: all of them, stride D).
struct Rows {
  const int8_t* q = nullptr;
  int64_t quantized = 0;
  const float* f = nullptr;  // row `quantized`
  int64_t stride = 0, dim = 0;

  const int8_t* qrow(int64_t j) const { return q + j * (dim + kScaleBytes); }
  float scale(int64_t j) const {
    float s;
    std::memcpy(&s, qrow(j) + dim, sizeof s);
    return s;
  }
  const float* frow(int64_t j) const { return f + (j - quantized) * stride; }
  float at(int64_t j, int64_t c) const { return j < quantized ? qrow(j)[c] * scale(j) : frow(j)[c]; }
};

// One KV head's work: R query rows (pre-scaled) of D against its S keys and values, each row's bias row and
// output row.
struct Group {
  int64_t rows, dim, total;
  const float* q;             // [R, D] (scratch)
  Rows keys, values;
  const float* const* bias;   // R pointers to S values
  float* const* out;          // R pointers to D values
};

struct Scratch {  // per thread, grown as needed
  std::vector<float> q, scores;
  std::vector<const float*> bias;
  std::vector<float*> out;
};

thread_local Scratch scratch;

// x += bias over n columns -> their max; a row masked everywhere (-inf) becomes all 0 and returns -inf.
float add_bias(float* x, const float* bias, int64_t n) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) top = std::max(top, x[j] += bias[j]);
  if (top == -std::numeric_limits<float>::infinity()) std::fill(x, x + n, 0.0f);  // no weight anywhere
  return top;
}

inline float exp_or_zero(float x) { return x < kMinExp ? 0.0f : std::exp(x); }

// -- portable loops
void softmax_portable(float* x, const float* bias, int64_t n) {
  const float top = add_bias(x, bias, n);
  if (top == -std::numeric_limits<float>::infinity()) return;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (x[j] = exp_or_zero(x[j] - top));
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

void group_portable(const Group& g, float* scores, int64_t stride) {
  for (int64_t r = 0; r < g.rows; ++r) {
    float* s = scores + r * stride;
    const float* q = g.q + r * g.dim;
    for (int64_t j = 0; j < g.total; ++j) {
      float acc = 0.0f;
      for (int64_t d = 0; d < g.dim; ++d) acc += q[d] * g.keys.at(j, d);
      s[j] = acc;
    }
    softmax_portable(s, g.bias[r], g.total);
    float* o = g.out[r];
    std::fill(o, o + g.dim, 0.0f);
    for (int64_t j = 0; j < g.total; ++j)
      for (int64_t d = 0; d < g.dim; ++d) o[d] += s[j] * g.values.at(j, d);
  }
}

#ifdef HOE_AVX2
#define HOE_AVX2_FN __attribute__((target("avx2,fma")))
// Always inlined, so each caller compiles them for its own target: the decode path's two entry points
// (few_rows_avx2, few_rows_avx512) with 16 or 32 vector registers, and the prompt path.
#define HOE_DECODE_FN __attribute__((target("avx2,fma"), always_inline)) inline

HOE_DECODE_FN float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// add_bias, 8 columns at a time.
HOE_DECODE_FN float add_bias_avx2(float* x, const float* bias, int64_t n) {
  __m256 vtop = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(bias + j));
    _mm256_storeu_ps(x + j, y);
    vtop = _mm256_max_ps(vtop, y);
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(vtop), _mm256_extractf128_ps(vtop, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  float top = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
  for (; j < n; ++j) top = std::max(top, x[j] += bias[j]);
  if (top == -std::numeric_limits<float>::infinity()) std::fill(x, x + n, 0.0f);  // no weight anywhere
  return top;
}

HOE_DECODE_FN void softmax_avx2(float* x, const float* bias, int64_t n) {
  const float top = add_bias_avx2(x, bias, n);
  if (top == -std::numeric_limits<float>::infinity()) return;
  const __m256 vt = _mm256_set1_ps(top);
  __m256 vs = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vt));
    _mm256_storeu_ps(x + j, e);
    vs = _mm256_add_ps(vs, e);
  }
  float sum = hsum(vs);
  for (; j < n; ++j) sum += (x[j] = exp_or_zero(x[j] - top));
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
  for (; j < n; ++j) x[j] *= 1.0f / sum;
}

// 8 values of row j from column c as fp32: an int8 row widened (its scale not applied), an fp32 row loaded.
template <bool kInt8>
HOE_DECODE_FN __m256 load8(const Rows& rows, int64_t j, int64_t c) {
  if constexpr (kInt8)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows.qrow(j) + c))));
  else
    return _mm256_loadu_ps(rows.frow(j) + c);
}

// The four horizontal sums of a0..a3.
HOE_DECODE_FN __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

constexpr int64_t kFewBlock = 3, kKeys = 4, kChunks = 4;  // decode tiles: 3 rows x 4 keys, or x 4 chunks of 8

constexpr int64_t kAhead = 32;  // cache rows prefetched ahead of the one being read

// Prefetch the bytes of cache rows [j, j + n) (of `rows`, capped at its last int8 row) into L1.
HOE_DECODE_FN void prefetch_rows(const Rows& rows, int64_t j, int64_t n) {
  if (j >= rows.quantized) return;
  const char* begin = reinterpret_cast<const char*>(rows.qrow(j));
  const char* end = reinterpret_cast<const char*>(rows.qrow(std::min(j + n, rows.quantized)));
  for (const char* a = begin; a < end; a += 64) _mm_prefetch(a, _MM_HINT_T0);
}

// The kKeys rows of the key tile from j0 into j (a tile past j_end repeats the last key) -> their scales (1 for
// fp32 rows), the factors of the tile's scores.
template <bool kInt8>
HOE_DECODE_FN __m128 key_tile(const Rows& keys, int64_t j0, int64_t j_end, int64_t* j) {
  alignas(16) float factor[kKeys];
  for (int64_t t = 0; t < kKeys; ++t) {
    j[t] = std::min(j0 + t, j_end - 1);
    factor[t] = kInt8 ? keys.scale(j[t]) : 1.0f;
  }
  return _mm_load_ps(factor);
}

// Scores of keys [j_begin, j_end) (all int8 rows, or all fp32), in register tiles of 3 rows x 4 keys: 12
// independent accumulators, each key chunk loaded once per tile. A tile's extra scores past j_end land on columns
// computed later or past S (the scores rows have kKeys spare columns).
template <bool kInt8>
HOE_DECODE_FN void score_tiles(const Group& g, float* scores, int64_t stride, int64_t j_begin, int64_t j_end) {
  const int64_t last = g.rows - 1;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kKeys) {
    int64_t j[kKeys];
    const __m128 f = key_tile<kInt8>(g.keys, j0, j_end, j);
    if constexpr (kInt8) prefetch_rows(g.keys, j0 + kAhead, kKeys);
    for (int64_t r0 = 0; r0 < g.rows; r0 += kFewBlock) {
      __m256 acc[kFewBlock][kKeys];
      for (auto& row : acc)
        for (auto& a : row) a = _mm256_setzero_ps();
      for (int64_t c = 0; c < g.dim; c += 8) {
        __m256 k[kKeys];
        for (int64_t t = 0; t < kKeys; ++t) k[t] = load8<kInt8>(g.keys, j[t], c);
        for (int64_t i = 0; i < kFewBlock; ++i) {
          const __m256 q = _mm256_loadu_ps(g.q + std::min(r0 + i, last) * g.dim + c);
          for (int64_t t = 0; t < kKeys; ++t) acc[i][t] = _mm256_fmadd_ps(q, k[t], acc[i][t]);
        }
      }
      for (int64_t i = 0; i < kFewBlock && r0 + i < g.rows; ++i)
        _mm_storeu_ps(scores + (r0 + i) * stride + j0, _mm_mul_ps(sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), f));
    }
  }
}

// out[:, c0 : c0 + 8·kC] = P·V over the value rows [0, rows) (all int8, or all fp32), in register tiles of 3 rows
// x kC chunks of 8 (kC fixed, so the 3·kC accumulators stay in registers), an int8 row's scale folded into its
// weights; written, not added.
template <bool kInt8, int64_t kC>
HOE_DECODE_FN void value_tile(const Group& g, const float* scores, int64_t stride, int64_t rows, int64_t c0) {
  const int64_t last = g.rows - 1;
  for (int64_t r0 = 0; r0 < g.rows; r0 += kFewBlock) {
    __m256 acc[kFewBlock][kC];
    for (auto& row : acc)
      for (auto& a : row) a = _mm256_setzero_ps();
    const float* p[kFewBlock];
    for (int64_t i = 0; i < kFewBlock; ++i) p[i] = scores + std::min(r0 + i, last) * stride;
    for (int64_t j = 0; j < rows; ++j) {
      if constexpr (kInt8) {
        if (r0 == 0 && c0 == 0) prefetch_rows(g.values, j + kAhead, 1);
      }
      __m256 v[kC];
      for (int64_t t = 0; t < kC; ++t) v[t] = load8<kInt8>(g.values, j, c0 + 8 * t);
      const __m256 scale = _mm256_set1_ps(kInt8 ? g.values.scale(j) : 1.0f);
      for (int64_t i = 0; i < kFewBlock; ++i) {
        const __m256 w = kInt8 ? _mm256_mul_ps(_mm256_broadcast_ss(p[i] + j), scale) : _mm256_broadcast_ss(p[i] + j);
        for (int64_t t = 0; t < kC; ++t) acc[i][t] = _mm256_fmadd_ps(w, v[t], acc[i][t]);
      }
    }
    for (int64_t i = 0; i < kFewBlock && r0 + i < g.rows; ++i)
      for (int64_t t = 0; t < kC; ++t) _mm256_storeu_ps(g.out[r0 + i] + c0 + 8 * t, acc[i][t]);
  }
}

template <bool kInt8>
HOE_DECODE_FN void value_tiles(const Group& g, const float* scores, int64_t stride, int64_t rows) {
  int64_t c0 = 0;
  for (; c0 + 8 * kChunks <= g.dim; c0 += 8 * kChunks) value_tile<kInt8, kChunks>(g, scores, stride, rows, c0);
  switch ((g.dim - c0) / 8) {  // D % 8 == 0
    case 3: return value_tile<kInt8, 3>(g, scores, stride, rows, c0);
    case 2: return value_tile<kInt8, 2>(g, scores, stride, rows, c0);
    case 1: return value_tile<kInt8, 1>(g, scores, stride, rows, c0);
    default: return;
  }
}

// The AVX-512 build's tiles: the same 3-row tiles over chunks of 16 (D % 16 == 0), half the widening and FMA
// instructions of the 8-lane tiles per key and value row.
#define HOE_WIDE_FN __attribute__((target("avx2,fma,avx512f,avx512vl"), always_inline)) inline

template <bool kInt8>
HOE_WIDE_FN __m512 load16(const Rows& rows, int64_t j, int64_t c) {
  if constexpr (kInt8)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows.qrow(j) + c))));
  else
    return _mm512_loadu_ps(rows.frow(j) + c);
}

HOE_WIDE_FN __m256 fold(__m512 a) {  // 16 lanes -> 8 partial sums
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

// The four horizontal sums of a0..a3 (16 lanes each): pairs interleaved and added within each 128-bit lane, then
// the four lanes folded.
HOE_WIDE_FN __m128 sum4_16(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));  // lane: a0..a3's sums
  const __m256 h = fold(u);
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// score_tiles over chunks of 16, the row blocks outside the key tiles: with kQ = D / 16 > 0 a block's q rows stay
// in registers for all its keys (kQ = 4, D = 64: 12 of the 32); kQ = 0 reads D from g.dim and loads q per tile.
template <bool kInt8, int64_t kQ>
HOE_WIDE_FN void score_tiles16(const Group& g, float* scores, int64_t stride, int64_t j_begin, int64_t j_end) {
  const int64_t last = g.rows - 1, chunks = kQ > 0 ? kQ : g.dim / 16;
  for (int64_t r0 = 0; r0 < g.rows; r0 += kFewBlock) {
    const float* q[kFewBlock];
    for (int64_t i = 0; i < kFewBlock; ++i) q[i] = g.q + std::min(r0 + i, last) * g.dim;
    __m512 held[kFewBlock][kQ > 0 ? kQ : 1];
    if constexpr (kQ > 0)
      for (int64_t i = 0; i < kFewBlock; ++i)
        for (int64_t c = 0; c < kQ; ++c) held[i][c] = _mm512_loadu_ps(q[i] + 16 * c);
    for (int64_t j0 = j_begin; j0 < j_end; j0 += kKeys) {
      int64_t j[kKeys];
      const __m128 f = key_tile<kInt8>(g.keys, j0, j_end, j);
      if (kInt8 && r0 == 0) prefetch_rows(g.keys, j0 + kAhead, kKeys);
      __m512 acc[kFewBlock][kKeys];
      for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks; ++c) {
        __m512 k[kKeys];
        for (int64_t t = 0; t < kKeys; ++t) k[t] = load16<kInt8>(g.keys, j[t], 16 * c);
        for (int64_t i = 0; i < kFewBlock; ++i) {
          __m512 qi;
          if constexpr (kQ > 0) qi = held[i][c];
          else qi = _mm512_loadu_ps(q[i] + 16 * c);
          for (int64_t t = 0; t < kKeys; ++t) acc[i][t] = _mm512_fmadd_ps(qi, k[t], acc[i][t]);
        }
      }
      for (int64_t i = 0; i < kFewBlock && r0 + i < g.rows; ++i)
        _mm_storeu_ps(scores + (r0 + i) * stride + j0, _mm_mul_ps(sum4_16(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), f));
    }
  }
}

template <bool kInt8>
HOE_WIDE_FN void score_tiles16(const Group& g, float* scores, int64_t stride, int64_t j_begin, int64_t j_end) {
  if (g.dim == 64) return score_tiles16<kInt8, 4>(g, scores, stride, j_begin, j_end);
  score_tiles16<kInt8, 0>(g, scores, stride, j_begin, j_end);
}

// value_tile over kC chunks of 16.
template <bool kInt8, int64_t kC>
HOE_WIDE_FN void value_tile16(const Group& g, const float* scores, int64_t stride, int64_t rows, int64_t c0) {
  const int64_t last = g.rows - 1;
  for (int64_t r0 = 0; r0 < g.rows; r0 += kFewBlock) {
    __m512 acc[kFewBlock][kC];
    for (auto& row : acc)
      for (auto& a : row) a = _mm512_setzero_ps();
    const float* p[kFewBlock];
    for (int64_t i = 0; i < kFewBlock; ++i) p[i] = scores + std::min(r0 + i, last) * stride;
    for (int64_t j = 0; j < rows; ++j) {
      if constexpr (kInt8) {
        if (r0 == 0 && c0 == 0) prefetch_rows(g.values, j + kAhead, 1);
      }
      __m512 v[kC];
      for (int64_t t = 0; t < kC; ++t) v[t] = load16<kInt8>(g.values, j, c0 + 16 * t);
      const __m512 scale = _mm512_set1_ps(kInt8 ? g.values.scale(j) : 1.0f);
      for (int64_t i = 0; i < kFewBlock; ++i) {
        const __m512 w = kInt8 ? _mm512_mul_ps(_mm512_set1_ps(p[i][j]), scale) : _mm512_set1_ps(p[i][j]);
        for (int64_t t = 0; t < kC; ++t) acc[i][t] = _mm512_fmadd_ps(w, v[t], acc[i][t]);
      }
    }
    for (int64_t i = 0; i < kFewBlock && r0 + i < g.rows; ++i)
      for (int64_t t = 0; t < kC; ++t) _mm512_storeu_ps(g.out[r0 + i] + c0 + 16 * t, acc[i][t]);
  }
}

template <bool kInt8>
HOE_WIDE_FN void value_tiles16(const Group& g, const float* scores, int64_t stride, int64_t rows) {
  int64_t c0 = 0;
  for (; c0 + 16 * kChunks <= g.dim; c0 += 16 * kChunks) value_tile16<kInt8, kChunks>(g, scores, stride, rows, c0);
  switch ((g.dim - c0) / 16) {  // D % 16 == 0
    case 3: return value_tile16<kInt8, 3>(g, scores, stride, rows, c0);
    case 2: return value_tile16<kInt8, 2>(g, scores, stride, rows, c0);
    case 1: return value_tile16<kInt8, 1>(g, scores, stride, rows, c0);
    default: return;
  }
}

// out += P·V over a step's own fp32 value rows [j, S) (an int8 cache's new columns), each loaded once for every row.
HOE_DECODE_FN void add_fresh_values(const Group& g, const float* scores, int64_t stride, int64_t j) {
  for (; j < g.total; ++j) {
    const float* v = g.values.frow(j);
    for (int64_t r = 0; r < g.rows; ++r) {
      const __m256 p = _mm256_set1_ps(scores[r * stride + j]);
      float* o = g.out[r];
      for (int64_t c = 0; c < g.dim; c += 8)
        _mm256_storeu_ps(o + c, _mm256_fmadd_ps(p, _mm256_loadu_ps(v + c), _mm256_loadu_ps(o + c)));
    }
  }
}

// Few rows (D % 8 == 0): scores in register tiles (the int8 past, then the fp32 rows), softmax, then out = P·V in
// register tiles over the int8 past (or every row of an fp32 cache), a step's own fp32 rows after it. The scores
// rows are `stride` >= S + kKeys apart.
HOE_DECODE_FN void group_few_rows(const Group& g, float* scores, int64_t stride) {
  const int64_t split = g.keys.quantized;
  if (split > 0) score_tiles<true>(g, scores, stride, 0, split);
  score_tiles<false>(g, scores, stride, split, g.total);
  for (int64_t r = 0; r < g.rows; ++r) softmax_avx2(scores + r * stride, g.bias[r], g.total);
  const int64_t past = g.values.quantized;
  if (past > 0) value_tiles<true>(g, scores, stride, past);
  else value_tiles<false>(g, scores, stride, g.total);
  add_fresh_values(g, scores, stride, past > 0 ? past : g.total);
}

// group_few_rows in the 16-lane tiles (D % 16 == 0).
HOE_WIDE_FN void group_few_rows16(const Group& g, float* scores, int64_t stride) {
  const int64_t split = g.keys.quantized;
  if (split > 0) score_tiles16<true>(g, scores, stride, 0, split);
  score_tiles16<false>(g, scores, stride, split, g.total);
  for (int64_t r = 0; r < g.rows; ++r) softmax_avx2(scores + r * stride, g.bias[r], g.total);
  const int64_t past = g.values.quantized;
  if (past > 0) value_tiles16<true>(g, scores, stride, past);
  else value_tiles16<false>(g, scores, stride, g.total);
  add_fresh_values(g, scores, stride, past > 0 ? past : g.total);
}

HOE_AVX2_FN void few_rows_avx2(const Group& g, float* scores, int64_t stride) { group_few_rows(g, scores, stride); }

__attribute__((target("avx2,fma,avx512f,avx512vl"))) void few_rows_avx512(const Group& g, float* scores,
                                                                          int64_t stride) {
  if (g.dim % 16 == 0) return group_few_rows16(g, scores, stride);
  group_few_rows(g, scores, stride);
}

using FewRows = void (*)(const Group&, float*, int64_t);
const FewRows few_rows = kernel_isa() == Isa::kAvx512 ? few_rows_avx512 : few_rows_avx2;  // decided at load

// Columns a row reaches: 1 + its last column whose bias is above kMasked (S for a row masked everywhere, whose
// softmax is then uniform as in the full product). Past it every weight is exactly 0 (exp underflows), so the
// softmax stops there and the tiles past a row block's reach are skipped (a prompt's causal upper triangle).
constexpr float kMasked = -1e30f;

int64_t reach(const Group& g, int64_t r) {
  int64_t j = g.total;
  while (j > 0 && !(g.bias[r][j - 1] > kMasked)) --j;
  return j == 0 ? g.total : j;
}

// Many rows (D % 16 == 0): for each block of 6 rows, scores = Q·Kᵀ, softmax, out = P·V, in 6 x 16 register
// tiles; the block's scores [6, stride] stay in cache. q holds round_up(R, 6) rows (the extra ones zero); packed
// is Kᵀ [D, stride = round_up(S, 16)] (columns past S zero), values the S values as fp32 [S, D].
HOE_AVX2_FN void group_many_rows(const Group& g, float* scores, int64_t stride, const float* packed,
                                 const float* values) {
  const int64_t d_all = g.dim, rows = round_up(g.rows, kRowBlock);
  int64_t last = 0;  // the previous row's reach
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    int64_t ends[kRowBlock] = {}, most = 0;  // the columns each row, and the block, reach
    for (int64_t i = 0; i < kRowBlock && r0 + i < g.rows; ++i) {  // the G rows of a step share its bias row
      const int64_t r = r0 + i;
      last = ends[i] = r > 0 && g.bias[r] == g.bias[r - 1] ? last : reach(g, r);
      most = std::max(most, last);
    }
    const int64_t tiles = round_up(most, kColBlock);
    for (int64_t j0 = 0; j0 < tiles; j0 += kColBlock) {
      __m256 c[kRowBlock][2];
      for (auto& row : c) row[0] = row[1] = _mm256_setzero_ps();
      for (int64_t d = 0; d < d_all; ++d) {
        const __m256 b0 = _mm256_loadu_ps(packed + d * stride + j0), b1 = _mm256_loadu_ps(packed + d * stride + j0 + 8);
        for (int64_t i = 0; i < kRowBlock; ++i) {
          const __m256 a = _mm256_set1_ps(g.q[(r0 + i) * d_all + d]);
          c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
          c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
      }
      for (int64_t i = 0; i < kRowBlock; ++i) {
        _mm256_storeu_ps(scores + i * stride + j0, c[i][0]);
        _mm256_storeu_ps(scores + i * stride + j0 + 8, c[i][1]);
      }
    }
    for (int64_t i = 0; i < kRowBlock; ++i) {  // weights past a row's reach are 0
      if (r0 + i < g.rows) softmax_avx2(scores + i * stride, g.bias[r0 + i], ends[i]);
      std::fill(scores + i * stride + ends[i], scores + i * stride + most, 0.0f);
    }
    for (int64_t d0 = 0; d0 < d_all; d0 += kColBlock) {
      __m256 c[kRowBlock][2];
      for (auto& row : c) row[0] = row[1] = _mm256_setzero_ps();
      for (int64_t j = 0; j < most; ++j) {
        const float* v = values + j * d_all + d0;
        const __m256 b0 = _mm256_loadu_ps(v), b1 = _mm256_loadu_ps(v + 8);
        for (int64_t i = 0; i < kRowBlock; ++i) {
          const __m256 a = _mm256_set1_ps(scores[i * stride + j]);
          c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
          c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
      }
      for (int64_t i = 0; i < kRowBlock && r0 + i < g.rows; ++i) {
        _mm256_storeu_ps(g.out[r0 + i] + d0, c[i][0]);
        _mm256_storeu_ps(g.out[r0 + i] + d0 + 8, c[i][1]);
      }
    }
  }
}
#endif

const bool kAvx2 = kernel_isa() >= Isa::kAvx2;

constexpr int64_t kChunkRows = 8 * kRowBlock;  // a prompt's rows per task

// The cache's columns of (b, g): past's P columns when present is another buffer, then the T new ones (quantized
// in an int8 cache).
void write_cache(const AttentionShape& s, const void* past, const float* fresh, void* present, int64_t b,
                 int64_t g) {
  const int64_t d = s.head_dim, p = s.total - s.steps, bytes = s.int8_cache ? d + kScaleBytes : 4 * d;
  auto* dst = static_cast<char*>(present) + (b * s.kv_heads + g) * s.present_capacity * bytes;
  const auto* src = static_cast<const char*>(past) + (b * s.kv_heads + g) * s.past_capacity * bytes;
  if (dst != src && p > 0) std::memcpy(dst, src, p * bytes);
  for (int64_t t = 0; t < s.steps; ++t) {
    const float* x = fresh + ((b * s.steps + t) * s.kv_heads + g) * d;
    char* row = dst + (p + t) * bytes;
    if (s.int8_cache)
      quantize_row(x, d, reinterpret_cast<int8_t*>(row));
    else
      std::memcpy(row, x, sizeof(float) * d);
  }
}

// The S keys (or values) of (b, g): the present buffer's columns; in an int8 cache its P past rows, then the step's
// own fp32 rows of k (or v).
Rows cache_rows(const AttentionShape& s, const void* present, const float* fresh, int64_t bg) {
  const int64_t d = s.head_dim;
  if (!s.int8_cache) return {nullptr, 0, static_cast<const float*>(present) + bg * s.present_capacity * d, d, d};
  const int64_t b = bg / s.kv_heads, g = bg % s.kv_heads;
  return {static_cast<const int8_t*>(present) + bg * s.present_capacity * (d + kScaleBytes), s.total - s.steps,
          fresh + (b * s.steps * s.kv_heads + g) * d, s.kv_heads * d, d};
}

// y [D] = factor · x [D], a head of flat token (b·T + t) rotated at its position (attention.h Rotary) if given.
void rotate_row(const Rotary& r, int64_t token, const float* x, int64_t dim, float factor, float* y) {
  if (!r.positions) {
    for (int64_t c = 0; c < dim; ++c) y[c] = x[c] * factor;
    return;
  }
  const int64_t half = dim / 2, p = r.positions[token];
  const float *c = r.cos + p * half, *sn = r.sin + p * half;
  for (int64_t j = 0; j < half; ++j) {
    y[j] = (x[j] * c[j] - x[j + half] * sn[j]) * factor;
    y[j + half] = (x[j + half] * c[j] + x[j] * sn[j]) * factor;
  }
}

// What every task reads: the op's tensors, and how the rows are split.
struct Job {
  const AttentionShape& s;
  const Rotary& rotary;  // q rotated as each task copies its rows (k before the tasks)
  const float *q, *k, *v, *bias;
  const void *keys, *values;  // the present buffers
  float* out;
  const float* packed;    // tiled: Kᵀ of every (b, g), [B·Hkv][D, stride]; else null
  const float* unpacked;  // tiled with an int8 cache: the values of every (b, g) as fp32, [B·Hkv][S, D]
  int64_t stride, rows, chunk, chunks;  // rows per (b, g) = G·T, in `chunks` tasks of `chunk`
};

// Task i: rows [c·chunk, ...) of KV head g of batch row b.
void run_task(void* data, size_t index) {
  const Job& j = *static_cast<const Job*>(data);
  const AttentionShape& s = j.s;
  const int64_t i = static_cast<int64_t>(index), bg = i / j.chunks, row0 = i % j.chunks * j.chunk;
  const int64_t b = bg / s.kv_heads, g = bg % s.kv_heads, n = std::min(j.chunk, j.rows - row0);
  const int64_t groups = s.heads / s.kv_heads, d = s.head_dim;
  Scratch& w = scratch;
  w.q.assign(round_up(n, kRowBlock) * d, 0.0f);
  w.bias.resize(n);
  w.out.resize(n);
  for (int64_t r = 0; r < n; ++r) {  // row t·G + h: query head g·G + h at step t
    const int64_t t = (row0 + r) / groups, head = g * groups + (row0 + r) % groups;
    const int64_t token = b * s.steps + t;
    rotate_row(j.rotary, token, j.q + (token * s.heads + head) * d, d, s.scale, &w.q[r * d]);
    w.bias[r] = j.bias + (b * s.steps + t) * s.total;
    w.out[r] = j.out + ((b * s.steps + t) * s.heads + head) * d;
  }
  const Group group{n, d, s.total, w.q.data(), cache_rows(s, j.keys, j.k, bg), cache_rows(s, j.values, j.v, bg),
                    w.bias.data(), w.out.data()};
#ifdef HOE_AVX2
  if (j.packed) {
    w.scores.resize(kRowBlock * j.stride);
    const float* values = j.unpacked ? j.unpacked + bg * s.total * d : group.values.f;
    return group_many_rows(group, w.scores.data(), j.stride, j.packed + bg * d * j.stride, values);
  }
  if (kAvx2 && d % 8 == 0) {
    const int64_t stride = round_up(s.total + kKeys, kColBlock);  // room for a last tile's spare scores
    w.scores.resize(n * stride);
    return few_rows(group, w.scores.data(), stride);
  }
#endif
  w.scores.resize(n * j.stride);
  group_portable(group, w.scores.data(), j.stride);
}

// Kᵀ of every (b, g) (and, from an int8 cache, its values as fp32), in tasks of kPackColumns columns, 16 at a time
// (each of the D rows written 64 bytes at once).
constexpr int64_t kPackColumns = 256;

struct Pack {
  const Job& job;
  float* packed;    // [B·Hkv][D, stride]
  float* unpacked;  // [B·Hkv][S, D], or null (an fp32 cache: the tiles read its buffer)
  int64_t blocks;   // of kPackColumns per (b, g)
};

void pack_task(void* data, size_t index) {
  const Pack& p = *static_cast<const Pack*>(data);
  const AttentionShape& s = p.job.s;
  const int64_t i = static_cast<int64_t>(index), bg = i / p.blocks, j_begin = i % p.blocks * kPackColumns;
  const int64_t d = s.head_dim, stride = p.job.stride, j_end = std::min(j_begin + kPackColumns, stride);
  const Rows keys = cache_rows(s, p.job.keys, p.job.k, bg);
  float* kt = p.packed + bg * d * stride;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kColBlock)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t j = j0; j < j0 + kColBlock; ++j) kt[c * stride + j] = j < s.total ? keys.at(j, c) : 0.0f;
  if (!p.unpacked) return;
  const Rows values = cache_rows(s, p.job.values, p.job.v, bg);
  float* dst = p.unpacked + bg * s.total * d;
  for (int64_t j = j_begin; j < std::min(j_end, s.total); ++j)
    for (int64_t c = 0; c < d; ++c) dst[j * d + c] = values.at(j, c);
}

}  // namespace

void quantize_row(const float* x, int64_t dim, int8_t* row) {
  float top = 0.0f;
  for (int64_t c = 0; c < dim; ++c) top = std::max(top, std::fabs(x[c]));
  const float scale = top / 127.0f;
  for (int64_t c = 0; c < dim; ++c)
    row[c] = scale > 0.0f ? static_cast<int8_t>(std::clamp(std::nearbyint(x[c] / scale), -127.0f, 127.0f)) : 0;
  std::memcpy(row + dim, &scale, sizeof scale);
}

void attention(const AttentionShape& s, const float* q, const float* k, const float* v, const float* bias,
               const void* past_k, const void* past_v, void* present_k, void* present_v, float* out,
               const Parallel& parallel, const Rotary& rotary) {
  static thread_local std::vector<float> k_rotated;  // [B,T,Hkv·D]: what the cache stores and the tasks attend
  if (rotary.positions) {
    const int64_t dim = s.head_dim, tokens = s.batch * s.steps;
    k_rotated.resize(tokens * s.kv_heads * dim);
    for (int64_t i = 0; i < tokens * s.kv_heads; ++i)
      rotate_row(rotary, i / s.kv_heads, k + i * dim, dim, 1.0f, &k_rotated[i * dim]);
    k = k_rotated.data();
  }
  const int64_t d = s.head_dim, heads = s.batch * s.kv_heads, rows = s.heads / s.kv_heads * s.steps;
  const int64_t stride = round_up(s.total, kColBlock);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      write_cache(s, past_k, k, present_k, b, g);
      write_cache(s, past_v, v, present_v, b, g);
    }
  }
  const bool tiled = kAvx2 && rows > kFewRows && d % kColBlock == 0;
  const int64_t chunk = tiled ? kChunkRows : rows, chunks = (rows + chunk - 1) / chunk;
  Job job{s, rotary, q, k, v, bias, present_k, present_v, out, nullptr, nullptr, stride, rows, chunk, chunks};
  static thread_local std::vector<float> packed, unpacked;  // Kᵀ [D, stride] per (b, g), the columns past S zero
  if (tiled) {
    packed.resize(heads * d * stride);
    if (s.int8_cache) unpacked.resize(heads * s.total * d);
    job.packed = packed.data();
    job.unpacked = s.int8_cache ? unpacked.data() : nullptr;
    Pack pack{job, packed.data(), s.int8_cache ? unpacked.data() : nullptr, (stride + kPackColumns - 1) / kPackColumns};
    run_all(parallel, pack_task, static_cast<size_t>(heads * pack.blocks), &pack);
  }
  run_all(parallel, run_task, static_cast<size_t>(heads * chunks), &job);
}

}  // namespace hoe
