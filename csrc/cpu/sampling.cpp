// Batched categorical sampling from unnormalised logits by inverse-CDF on one uniform per row.
// The uniforms come from torch's generator, so a seeded torch.Generator reproduces the draws.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

constexpr int64_t kRowsPerThread = 4096;
constexpr int64_t kBlockElements = 2048;  // logits per block of rows

template <typename scalar_t>
bool sample_rows(const scalar_t* z, const double* u, int64_t* actions, scalar_t* log_probs,
                 int64_t A, int64_t i0, int64_t i1) {
  bool finite = true;
  // Rows go in blocks so that their exps and logs run as vectorised array passes.
  const int64_t block = std::max<int64_t>(1, kBlockElements / A);
  std::vector<double> shifted(block * A), e(block * A), log_total(block);
  std::vector<char> row_ok(block);
  for (int64_t b = i0; b < i1; b += block) {
    const int64_t rows = std::min(block, i1 - b);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* zi = z + (b + r) * A;
      double max = -std::numeric_limits<double>::infinity();
      bool row_finite = true;
      for (int64_t j = 0; j < A; ++j) {
        row_finite &= std::isfinite(zi[j]);
        max = std::max(max, static_cast<double>(zi[j]));
      }
      row_ok[r] = row_finite;
      double* s = shifted.data() + r * A;
      for (int64_t j = 0; j < A; ++j) s[j] = row_finite ? static_cast<double>(zi[j]) - max : 0.0;
    }
    std::memcpy(e.data(), shifted.data(), sizeof(double) * rows * A);
    fast_math::exp_nonpositive(e.data(), rows * A);  // e_j = exp(z_j - max), in [0, 1]
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      if (!row_ok[r]) {  // reported by the caller; never index with a garbage choice
        finite = false;
        actions[i] = 0;
        log_total[r] = 1.0;
        continue;
      }
      const double* p = e.data() + r * A;
      double total = 0.0;
      for (int64_t j = 0; j < A; ++j) total += p[j];
      // Pick the first category whose cumulative mass exceeds u * total. The strict comparison
      // never picks a category of zero probability; rounding can leave the target past the
      // last cumulative sum, so the fallback is the last category with positive probability.
      const double target = u[i] * total;
      double cumulative = 0.0;
      int64_t chosen = -1;
      for (int64_t j = 0; j < A; ++j) {
        if (p[j] > 0.0) chosen = j;
        cumulative += p[j];
        if (cumulative > target && p[j] > 0.0) break;
      }
      actions[i] = chosen;
      log_total[r] = total;
    }
    fast_math::log_positive(log_total.data(), rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      log_probs[i] = row_ok[r] ? static_cast<scalar_t>(shifted[r * A + actions[i]] - log_total[r])
                               : std::numeric_limits<scalar_t>::quiet_NaN();
    }
  }
  return finite;
}

std::tuple<at::Tensor, at::Tensor> sample_categorical_cpu(
    const at::Tensor& logits, const std::optional<at::Generator>& generator) {
  check_logits(logits);
  const auto z = logits.contiguous();
  const int64_t B = z.size(0), A = z.size(1);
  const auto uniforms = at::rand({B}, generator, z.options().dtype(at::kDouble));
  auto actions = at::empty({B}, z.options().dtype(at::kLong));
  auto log_probs = at::empty({B}, z.options());
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sample_categorical_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const double* up = uniforms.data_ptr<double>();
    int64_t* ap = actions.data_ptr<int64_t>();
    scalar_t* lp = log_probs.data_ptr<scalar_t>();
    if (B <= kRowsPerThread) {  // the common case: one chunk, no per-chunk flags
      finite = sample_rows(zp, up, ap, lp, A, 0, B);
      return;
    }
    std::vector<char> chunk_finite(B + 1, 1);
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      chunk_finite[i0] = sample_rows(zp, up, ap, lp, A, i0, i1);
    });
    for (char ok : chunk_finite) finite &= ok != 0;
  });
  check_finite_flag(finite, "logits");
  return {actions, log_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("sample_categorical", &sample_categorical_cpu); }

}  // namespace pylander
