// hoe's int4 linear (docs/GRAPH.md "Linear kernel"): y = x · W for a weight on MatMulNBits' symmetric int4 grid,
// W[k, n] = (q[k, n] − 8) · s[k / bs, n], stored in a layout one pass per token reads at memory speed.
//
// Layout, uint8 [groups = ceil(N / 64), parts = ceil(K / 32), 1280]: per 64 output columns and 32 inputs, 1024
// bytes of levels, then the 64 columns' fp32 scales. The levels are 4 slices of 16 columns, each 4 vectors
// j = 0..3 of 64 bytes; byte 4c + t of vector j holds column c's level of input 8j + t in its low nibble and of
// input 8j + 4 + t in its high one, so one VNNI dot of a vector's low nibbles with inputs 8j .. 8j+3 adds to 16
// columns' sums at once, with no horizontal reduction. Columns past N and inputs past K hold level 8 (zero) and
// scale 0; a block of 64, 128, ... inputs is stored as its 32-input parts, each with the block's scale.
//
// Activations are exact (fp32 products: MatMulNBits' accuracy_level 0) or int8 (accuracy_level 4): each row's 32
// inputs of a part rounded on their own absmax / 127 scale, half to even, their products with the levels summed
// in int32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu.h"

namespace hoe {

constexpr int64_t kLinearColumns = 64, kLinearInputs = 32;    // a group's columns, a part's inputs
constexpr int64_t kLinearLevelBytes = kLinearColumns * kLinearInputs / 2;
constexpr int64_t kLinearStride = kLinearLevelBytes + 4 * kLinearColumns;  // bytes per (group, part): 1280

struct LinearShape {
  int64_t rows;  // M: rows of x and y
  int64_t k;     // K: inputs
  int64_t n;     // N: outputs
  bool exact;    // fp32 activations (else int8)
};

inline int64_t linear_groups(int64_t n) { return (n + kLinearColumns - 1) / kLinearColumns; }
inline int64_t linear_parts(int64_t k) { return (k + kLinearInputs - 1) / kLinearInputs; }

// x [M, K], y [M, N] fp32, bias [N] fp32 or null; packed [groups, parts, 1280] (above). The column groups are split into tasks run
// through `parallel`.
void linear_int4(const LinearShape& s, const float* x, const uint8_t* packed, const float* bias, float* y,
                 const Parallel& parallel = {});

// The weight's columns as rows, y [count, K] with y[i, :] = W[:, ids[i]]: a tied embedding's lookup on the
// lm_head's tiles (the table held once). The caller checks 0 <= ids[i] < N.
void linear_columns(const uint8_t* packed, int64_t k, const int64_t* ids, int64_t count, float* y);

}  // namespace hoe
