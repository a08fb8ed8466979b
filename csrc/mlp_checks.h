// Input validation of the MLP ops (policy_sample, actor_critic_forward, actor_critic_grads),
// shared by their kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "checks.h"

namespace pylander {

inline void check_obs(const at::Tensor& obs) {
  check_float(obs, "obs");
  check_rank(obs, 2, "obs", "[B, obs_size]");
}

// `params` holds [weight, bias] of each nn.Linear layer in turn, fed `inputs`' columns.
inline void check_mlp(at::TensorList params, const at::Tensor& inputs, const char* name) {
  TORCH_CHECK(!params.empty() && params.size() % 2 == 0, "pylander: `", name,
              "` must be the weight and bias of each layer in turn, got ",
              num(static_cast<int64_t>(params.size())), " tensors");
  int64_t width = inputs.size(1);
  for (size_t l = 0; l < params.size(); l += 2) {
    const auto& weight = params[l];
    const auto& bias = params[l + 1];
    const std::string layer = std::string(name) + "` layer " + num(static_cast<int64_t>(l / 2));
    TORCH_CHECK(weight.dim() == 2 && bias.dim() == 1 && weight.size(1) == width &&
                    bias.size(0) == weight.size(0),
                "pylander: `", layer, " has weight ", shape(weight.sizes()), " and bias ",
                shape(bias.sizes()), "; expected [out, ", num(width), "] and [out]");
    TORCH_CHECK(weight.device() == inputs.device() && bias.device() == inputs.device(),
                "pylander: `", layer, " is on ", weight.device(), " but `obs` is on ",
                inputs.device(), "; move them to the same device");
    TORCH_CHECK(weight.scalar_type() == inputs.scalar_type() &&
                    bias.scalar_type() == inputs.scalar_type(),
                "pylander: `", layer, " must have the dtype of `obs` (", inputs.scalar_type(),
                ")");
    width = weight.size(0);
  }
}

inline void check_policy_inputs(const at::Tensor& obs, at::TensorList actor,
                                const std::optional<at::Tensor>& obs_mean,
                                const std::optional<at::Tensor>& obs_var) {
  check_obs(obs);
  check_mlp(actor, obs, "actor");
  TORCH_CHECK(obs_mean.has_value() == obs_var.has_value(),
              "pylander: give both `obs_mean` and `obs_var`, or neither");
  if (!obs_mean) return;
  for (const auto* stat : {&*obs_mean, &*obs_var}) {
    const char* name = stat == &*obs_mean ? "obs_mean" : "obs_var";
    check_float(*stat, name);
    TORCH_CHECK(stat->dim() == 1 && stat->size(0) == obs.size(1), "pylander: `", name,
                "` must have shape [obs_size] = [", num(obs.size(1)), "], got ",
                shape(stat->sizes()));
    check_same_device(*stat, obs, name, "obs");
  }
}

// The actor, and the critic (one output) unless it is empty, both fed `obs`.
inline void check_networks(const at::Tensor& obs, at::TensorList actor, at::TensorList critic) {
  check_obs(obs);
  check_mlp(actor, obs, "actor");
  if (critic.empty()) return;
  check_mlp(critic, obs, "critic");
  const int64_t outputs = critic[critic.size() - 2].size(0);
  TORCH_CHECK(outputs == 1, "pylander: the critic must have one output, got ", num(outputs));
}

// actor_critic_grads' inputs, checked in one order by every kernel before any arithmetic.
inline void check_actor_critic_inputs(const at::Tensor& obs, at::TensorList actor,
                                      at::TensorList critic, const at::Tensor& actions,
                                      const at::Tensor& advantages,
                                      const at::Tensor& old_log_probs, const at::Tensor& returns,
                                      double clip_coef, double ent_coef, double vf_coef,
                                      double scale) {
  check_networks(obs, actor, critic);
  // The actor's logits' shape, dtype and device, which pg_loss's checks compare against.
  const auto logits = at::empty({obs.size(0), actor[actor.size() - 2].size(0)}, obs.options());
  check_same_shape(old_log_probs, logits, "old_log_probs", "the actor's logits");
  check_same_device(old_log_probs, obs, "old_log_probs", "obs");
  check_dtype(old_log_probs, obs.scalar_type(), "old_log_probs");
  check_dtype(returns, obs.scalar_type(), "returns");
  TORCH_CHECK_VALUE(std::isfinite(ent_coef) && std::isfinite(vf_coef) && std::isfinite(scale),
                    "pylander: `ent_coef`, `vf_coef` and `scale` must be finite");
  check_pg_inputs(logits, actions, advantages);
  // A column of old_log_probs stands in for the chosen actions' ([B], its dtype and device).
  check_clip_inputs(logits, old_log_probs.select(1, 0), clip_coef);
  if (critic.empty()) return;
  check_same_shape(returns, advantages, "returns", "advantages");
  check_same_device(returns, obs, "returns", "obs");
}

}  // namespace pylander
