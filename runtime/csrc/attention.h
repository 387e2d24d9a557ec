// The Attention op of hoe's kernels (docs/GRAPH.md "Attention kernel"): what onnxruntime's GroupQueryAttention
// computes in hoe's fused graph (export/fused_attention.py), with the KV cache in one buffer shared by past and
// present, in one pass per KV head over the cache.
//
// Per batch row b, query step t, query head h of KV head g = h / (H / Hkv), S = P + T columns:
//   present[b, g, P + t] = k[b, t, g], v[b, t, g]                   (the new columns; k rotated: Rotary below)
//   s[j]  = scale · q[b, t, h] · K[b, g, j] + bias[b, 0, t, j]       j < S (bias: the model's additive mask)
//   out[b, t, h] = sum_j softmax(s)[j] · V[b, g, j]
// Past and present may be the same buffer (capacity >= S: only the new columns are written), or present a new
// one of S columns (past's P columns are copied first).
//
// An int8 cache (`int8_cache`) holds each row as D int8 values then their fp32 scale (D + 4 bytes, x ≈ q · scale,
// scale = max|x| / 127, q = x / scale rounded half to even, 0 for a row of zeros). The new columns are written
// quantized, but attend with their exact fp32 k/v: a step's own tokens are never rounded before they are used,
// only the past is.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu.h"

namespace hoe {

struct AttentionShape {
  int64_t batch;             // B
  int64_t steps;             // T: new tokens
  int64_t heads;             // H: query heads
  int64_t kv_heads;          // Hkv: a divisor of H
  int64_t head_dim;          // D
  int64_t total;             // S = P + T
  int64_t past_capacity;     // columns of the past buffer (>= P)
  int64_t present_capacity;  // columns of the present buffer (>= S)
  float scale;
  bool int8_cache = false;   // past/present rows: D int8 + fp32 scale (else D fp32)
};

constexpr int64_t kScaleBytes = 4;  // an int8 cache row's trailing fp32 scale

// Rotary inside the op (optional: positions null leaves q and k as given). Each head's x [D] of token (b, t) is
// rotated first by the non-interleaved RoPE at p = positions[b, t], half = D / 2, c = cos[p, i], s = sin[p, i]:
//   x'[i] = x[i]·c − x[i + half]·s,   x'[i + half] = x[i + half]·c + x[i]·s   (i < half)
// positions [B,T] int64 (0 <= p < max_pos: the caller checks), cos and sin [max_pos, D/2] fp32. The cache then
// holds the rotated k, as it would after onnxruntime's RotaryEmbedding.
struct Rotary {
  const int64_t* positions = nullptr;
  const float *cos = nullptr, *sin = nullptr;
};

// q [B,T,H·D], k/v [B,T,Hkv·D], bias [B,1,T,S], out [B,T,H·D] fp32; past/present [B,Hkv,capacity,D] fp32, or
// [B,Hkv,capacity,D+4] int8 rows (int8_cache). The work is split into tasks of one KV head's rows (a prompt's in
// chunks) run through `parallel`.
void attention(const AttentionShape& s, const float* q, const float* k, const float* v, const float* bias,
               const void* past_k, const void* past_v, void* present_k, void* present_v, float* out,
               const Parallel& parallel = {}, const Rotary& rotary = {});

// x [D] fp32 -> row [D + 4]: D int8 values, then the fp32 scale (the int8 cache's rounding, above).
void quantize_row(const float* x, int64_t dim, int8_t* row);

}  // namespace hoe
