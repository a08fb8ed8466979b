// policy_sample and policy_greedy on the CPU: the actor's forward pass for a rollout (or
// evaluation) step's few rows as plain loops, then the native sampler (or the argmax). Interleaved with env steps (Python and Box2D, which evict the
// caches), torch's gemm took ~3x as long per call as when called back to back, for matrices this
// small; these loops keep their code and data small. Other devices run the composite kernel
// (csrc/composite/actor_critic.cpp), which this computes up to rounding.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "../mlp_checks.h"
#include "mlp_forward.h"

namespace pylander {
namespace {

// The actor's logits [B, A] for a few rows, as plain loops.
at::Tensor actor_logits(const at::Tensor& obs, at::TensorList actor,
                        const std::optional<at::Tensor>& obs_mean,
                        const std::optional<at::Tensor>& obs_var, double obs_clip) {
  check_policy_inputs(obs, actor, obs_mean, obs_var);
  const int64_t B = obs.size(0);
  const auto x = obs.contiguous();
  auto logits = at::empty({B, actor[actor.size() - 2].size(0)}, obs.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actor_logits_cpu", [&] {
    const int64_t in = x.size(1), rows = padded_rows(B);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<scalar_t> input(in * rows, scalar_t(0));  // transposed, padded with zero rows
    transpose_into(xp, B, in, rows, input.data());
    if (obs_mean) {  // as ObsNormalizer: the scale rsqrt(var + 1e-8) in float64, then cast
      const auto mean = obs_mean->to(at::kDouble).contiguous();
      const auto var = obs_var->to(at::kDouble).contiguous();
      const double* m = mean.data_ptr<double>();
      const double* v = var.data_ptr<double>();
      const auto clip = static_cast<scalar_t>(obs_clip);
      for (int64_t j = 0; j < in; ++j) {
        const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(v[j] + 1e-8));
        const auto centre = static_cast<scalar_t>(m[j]);
        for (int64_t r = 0; r < B; ++r) {
          const scalar_t z = (input[j * rows + r] - centre) * scale;
          input[j * rows + r] = std::min(std::max(z, -clip), clip);
        }
      }
    }
    std::vector<scalar_t> scratch;
    forward_transposed(contiguous_params(actor), rows, input, scratch);
    untranspose_rows(input.data(), logits.size(1), rows, B, logits.data_ptr<scalar_t>());
  });
  return logits;
}

std::tuple<at::Tensor, at::Tensor> policy_sample_cpu(
    const at::Tensor& obs, at::TensorList actor, const std::optional<at::Tensor>& obs_mean,
    const std::optional<at::Tensor>& obs_var, double obs_clip,
    const std::optional<at::Generator>& generator) {
  return dispatch::sample_categorical(actor_logits(obs, actor, obs_mean, obs_var, obs_clip),
                                      generator);
}

// The first largest logit of each row, as argmax picks it (a NaN counts as the largest).
at::Tensor policy_greedy_cpu(const at::Tensor& obs, at::TensorList actor,
                             const std::optional<at::Tensor>& obs_mean,
                             const std::optional<at::Tensor>& obs_var, double obs_clip) {
  const auto logits = actor_logits(obs, actor, obs_mean, obs_var, obs_clip);
  const int64_t B = logits.size(0), A = logits.size(1);
  auto actions = at::empty({B}, logits.options().dtype(at::kLong));
  int64_t* a = actions.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "policy_greedy_cpu", [&] {
    const scalar_t* z = logits.data_ptr<scalar_t>();
    for (int64_t r = 0; r < B; ++r) {
      int64_t best = 0;
      for (int64_t j = 1; j < A && !std::isnan(z[r * A + best]); ++j) {
        if (z[r * A + j] > z[r * A + best] || std::isnan(z[r * A + j])) best = j;
      }
      a[r] = best;
    }
  });
  return actions;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) {
  m.impl("policy_sample", &policy_sample_cpu);
  m.impl("policy_greedy", &policy_greedy_cpu);
}

}  // namespace pylander
