// The norm prologue of hoe's products (docs/GRAPH.md "Linear kernel"): the RMSNorm that feeds a linear, computed
// by the product's op on its input rows instead of by a node of its own (onnxruntime's
// SkipSimplifiedLayerNormalization / SimplifiedLayerNormalization folded in).
//
// Per row r of K values:
//   sum[r]    = x[r] + skip[r]                                   (skip null: sum[r] = x[r], and not written)
//   normed[r] = sum[r] · gamma / sqrt(mean(sum[r]²) + epsilon)     the mean of squares summed in float64
#pragma once

#include <cstdint>

namespace hoe {

// x, skip, sum, normed [rows, K], gamma [K] fp32; skip and sum null or both given.
void rms_norm(const float* x, const float* skip, const float* gamma, int64_t rows, int64_t k, float epsilon,
              float* sum, float* normed);

}  // namespace hoe
