// The norm prologue (norm.h). Four float64 partial sums per row keep the squares' sum exact enough and let the
// compiler vectorise the loop; the row's values are read from `sum` (or x) once more for the scaling.
#include "norm.h"

#include <cmath>

namespace hoe {

void rms_norm(const float* x, const float* skip, const float* gamma, int64_t rows, int64_t k, float epsilon,
              float* sum, float* normed) {
  for (int64_t r = 0; r < rows; ++r, x += k, normed += k) {
    const float* row = x;
    if (skip) {
      for (int64_t i = 0; i < k; ++i) sum[i] = x[i] + skip[i];
      row = sum;
      skip += k;
      sum += k;
    }
    double part[4] = {};
    int64_t i = 0;
    for (; i + 4 <= k; i += 4)
      for (int64_t j = 0; j < 4; ++j) part[j] += static_cast<double>(row[i + j]) * row[i + j];
    for (; i < k; ++i) part[0] += static_cast<double>(row[i]) * row[i];
    const double squares = (part[0] + part[1]) + (part[2] + part[3]);
    const float inv = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(k) + epsilon));
    for (i = 0; i < k; ++i) normed[i] = row[i] * inv * gamma[i];
  }
}

}  // namespace hoe
