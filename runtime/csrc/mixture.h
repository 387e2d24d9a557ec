// HoE's routed expert mixture of one site group as one kernel (docs/GRAPH.md "Mixture kernel").
//
// Per row (b, t) of a group of m modules with E experts of rank r, K routers (anchors) and block size bs:
//   h      = F[h_offset : h_offset + m·E·r]                   the lora_A products   [m][E][r]
//   logits = F[h_offset + m·E·r : + m·K·E]                    the router logits     [m][K][E] (bias, -inf mask in)
//   g[i,e] = sum_k mix[b,k] · softmax_e(logits[i,k,:])[e]     the gates, fp32
//   Z[n]   = Y[n] + sum_j h[i,j]·g[i,j/r] · (q[j,n] - z[j/bs,n]) · s[j/bs,n]   for n in module i's columns
// lora_B on its int8 grid (the experts' scaling folded in), in tiles of kTile columns per module (a module's last
// tile padded): levels q uint8 [tiles, E·r, kTile], scales s and zero points z fp32 [ceil(E·r/bs), tiles·kTile]
// (N = sum of the modules' widths; the tiles keep each column tile's rows contiguous in memory).
// This is the graph hoe_graph.py builds, computed in one pass.
// With block offsets (quantize.py `_offset_product`) Y is y₀ and F also holds the block sums x·S at column
// sums_offset: Y[n] becomes y₀[n] + sum_b (x·S)[b] · O[b, n], O fp32 [k_blocks, N], before the mixture.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hoe {

constexpr int64_t kTile = 64;  // lora_B columns per tile

constexpr int64_t kMaxModules = 8, kMaxExperts = 64, kMaxRows = 4096;  // m, E and E·r (stack buffers)

inline int64_t tiles(int64_t width) { return (width + kTile - 1) / kTile; }

struct MixtureShape {
  int64_t rows;      // B·T
  int64_t steps;     // T: row / steps is the batch row of router_mix
  int64_t y_stride;  // columns of Y per row (>= N)
  int64_t f_stride;  // columns of F per row
  int64_t h_offset;  // first lora_A column of F
  int64_t experts;   // E
  int64_t rank;      // r
  int64_t routers;   // K
  int64_t block;     // bs of lora_B's grid
  const int64_t* widths;  // out features of the m modules, in order
  int64_t modules;        // m
  int64_t n;              // N: the widths' sum
  int64_t padded;         // the columns of the modules' whole tiles: sum of tiles(w_i)·kTile
  int64_t sums_offset = -1;  // first x·S column of F, with block offsets (else -1)
  int64_t sums = 0;          // k_blocks of x·S
};

// Where module i's output goes: row r's w_i columns start at data + r·stride (one [rows, N] tensor for all
// modules: data = Z + its first column, stride N; one tensor per module: stride w_i).
struct Output {
  float* data;
  int64_t stride;
};

// The checks on shapes happen in the caller; this only computes. z: one Output per module.
void mixture(const MixtureShape& s, const float* y, const float* f, const float* mix, const uint8_t* q,
             const float* scales, const float* zeros, const float* offsets, const Output* z);

}  // namespace hoe
