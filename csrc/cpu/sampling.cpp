// Batched categorical sampling from unnormalised logits by inverse-CDF on one uniform per row.
// The uniforms come from torch's generator, so a seeded torch.Generator reproduces the draws.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "../checks.h"

namespace pylander {
namespace {

constexpr int64_t kRowsPerThread = 4096;

template <typename scalar_t>
bool sample_rows(const scalar_t* z, const double* u, int64_t* actions, scalar_t* log_probs,
                 int64_t A, int64_t i0, int64_t i1) {
  bool finite = true;
  for (int64_t i = i0; i < i1; ++i) {
    const scalar_t* zi = z + i * A;
    double max = -std::numeric_limits<double>::infinity();
    bool row_finite = true;
    for (int64_t j = 0; j < A; ++j) {
      row_finite &= std::isfinite(zi[j]);
      max = std::max(max, static_cast<double>(zi[j]));
    }
    if (!row_finite) {  // reported by the caller; never index with a garbage choice
      finite = false;
      actions[i] = 0;
      log_probs[i] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    double total = 0.0;
    for (int64_t j = 0; j < A; ++j) total += std::exp(static_cast<double>(zi[j]) - max);
    // Pick the first category whose cumulative mass exceeds u * total. The strict comparison
    // never picks a category of zero probability; rounding can leave the target past the last
    // cumulative sum, so the fallback is the last category with positive probability.
    const double target = u[i] * total;
    double cumulative = 0.0;
    int64_t chosen = -1;
    for (int64_t j = 0; j < A; ++j) {
      const double p = std::exp(static_cast<double>(zi[j]) - max);
      if (p > 0.0) chosen = j;
      cumulative += p;
      if (cumulative > target && p > 0.0) break;
    }
    actions[i] = chosen;
    log_probs[i] = static_cast<scalar_t>(static_cast<double>(zi[chosen]) - max - std::log(total));
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
    std::vector<char> chunk_finite(B + 1, 1);
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      chunk_finite[i0] = sample_rows(z.data_ptr<scalar_t>(), uniforms.data_ptr<double>(),
                                     actions.data_ptr<int64_t>(), log_probs.data_ptr<scalar_t>(),
                                     A, i0, i1);
    });
    for (char ok : chunk_finite) finite &= ok != 0;
  });
  check_finite_flag(finite, "logits");
  return {actions, log_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("sample_categorical", &sample_categorical_cpu); }

}  // namespace pylander
