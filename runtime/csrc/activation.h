// The SwiGLU epilogue of hoe's products (docs/GRAPH.md "Linear kernel"): the gated activation between a SiLU MLP's
// gate/up product and its down product, computed by the gate/up product's op on its output rows instead of by
// nodes of their own (onnxruntime's Split, Sigmoid / QuickGelu and Mul folded in).
//
// Per row r of y = [gate | up], W columns each:
//   out[r, c] = silu(gate[r, c]) · up[r, c],   silu(g) = g · sigmoid(g) = g / (1 + exp(−g))
#pragma once

#include <cstdint>

namespace hoe {

// y [rows, 2·W], out [rows, W] fp32.
void swiglu(const float* y, int64_t rows, int64_t width, float* out);

}  // namespace hoe
