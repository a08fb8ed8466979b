// The tanh MLP actor and critic of --algo reinforce, forward and backward, as native calls:
//
// * policy_sample: normalise observations, run the actor and sample an action per row (the
//   per-env-step inference path); policy_greedy: the same forward pass, then the argmax
//   (evaluation's);
// * actor_critic_forward: the whole batch's log-probabilities and values, before and after an
//   update;
// * actor_critic_grads: one minibatch's loss (clipped surrogate, entropy bonus, value loss),
//   its statistics and the gradients of every actor and critic parameter, by hand.
//
// From Python these took ~60 dispatches with autograd bookkeeping per minibatch; here each is one
// call whose ATen ops dispatch from C++. They are composite (ATen ops plus pylander's own
// pg_loss and sample_categorical kernels through the dispatcher), so one implementation serves
// every device; on the CPU each also has a kernel of plain loops (csrc/cpu/policy_sample.cpp,
// actor_critic_forward.cpp, actor_critic_grads.cpp) that takes precedence there. The layers are
// nn.Linear's: weight [out, in], bias [out].
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "../mlp_checks.h"

namespace pylander {
namespace {

// Each layer's input (the observations, then the tanh outputs) and the last layer's output.
struct Activations {
  std::vector<at::Tensor> inputs;
  at::Tensor output;
};

Activations mlp_forward(const at::Tensor& x, at::TensorList params) {
  const size_t layers = params.size() / 2;
  Activations a;
  a.inputs.reserve(layers);
  at::Tensor h = x;
  for (size_t l = 0; l < layers; ++l) {
    a.inputs.push_back(h);
    h = at::addmm(params[2 * l + 1], h, params[2 * l].t());
    if (l + 1 < layers) h = at::tanh(h);
  }
  a.output = h;
  return a;
}

// d loss / d (weight, bias) of every layer, given d loss / d output.
std::vector<at::Tensor> mlp_backward(const Activations& a, at::TensorList params,
                                     at::Tensor grad) {
  const size_t layers = params.size() / 2;
  std::vector<at::Tensor> grads(params.size());
  for (size_t l = layers; l-- > 0;) {
    grads[2 * l] = at::mm(grad.t(), a.inputs[l]);
    grads[2 * l + 1] = grad.sum(0);
    if (l > 0) grad = at::tanh_backward(at::mm(grad, params[2 * l]), a.inputs[l]);
  }
  return grads;
}

// What ObsNormalizer.forward computes, op for op, so both give the same bits.
at::Tensor normalise(const at::Tensor& obs, const std::optional<at::Tensor>& mean,
                     const std::optional<at::Tensor>& var, double clip) {
  if (!mean) return obs;
  const auto scale = at::rsqrt(*var + 1e-8).to(obs.scalar_type());
  return ((obs - mean->to(obs.scalar_type())) * scale).clamp(-clip, clip);
}

std::tuple<at::Tensor, at::Tensor> policy_sample(const at::Tensor& obs, at::TensorList actor,
                                                 const std::optional<at::Tensor>& obs_mean,
                                                 const std::optional<at::Tensor>& obs_var,
                                                 double obs_clip,
                                                 const std::optional<at::Generator>& generator) {
  check_policy_inputs(obs, actor, obs_mean, obs_var);
  const auto logits = mlp_forward(normalise(obs, obs_mean, obs_var, obs_clip), actor).output;
  return dispatch::sample_categorical(logits, generator);
}

// The argmax of ActorCritic.logits: the same ATen ops in the same order (nn.Linear is addmm on
// a batch of rows), so the same logits. The CPU has its own kernel (csrc/cpu/policy_sample.cpp):
// a dozen ATen calls took about as long as the module's (~130 us a step on a 2-vCPU VM, more
// than a LunarLander step).
at::Tensor policy_greedy(const at::Tensor& obs, at::TensorList actor,
                         const std::optional<at::Tensor>& obs_mean,
                         const std::optional<at::Tensor>& obs_var, double obs_clip) {
  check_policy_inputs(obs, actor, obs_mean, obs_var);
  const auto logits = mlp_forward(normalise(obs, obs_mean, obs_var, obs_clip), actor).output;
  return logits.argmax(-1);
}

// log_softmax(ActorCritic.actor(obs)) and ActorCritic.critic(obs).squeeze(1) (an empty tensor
// without a critic): the module's ATen ops, so its bits.
std::tuple<at::Tensor, at::Tensor> actor_critic_forward(const at::Tensor& obs,
                                                        at::TensorList actor,
                                                        at::TensorList critic) {
  check_networks(obs, actor, critic);
  auto log_probs = at::log_softmax(mlp_forward(obs, actor).output, 1);
  auto values = critic.empty() ? obs.new_empty({0}) : mlp_forward(obs, critic).output.squeeze(1);
  return {std::move(log_probs), std::move(values)};
}

// Gradients of
//   loss = scale * (sum_i pg_i - ent_coef * B * entropy + vf_coef * 0.5 * sum_i (v_i - R_i)^2)
// with pg_i PPO's clipped surrogate term (clip_coef > 0) or -w_i log pi(a_i|s_i), and
// statistics [sum_i pg_i, 0.5 * sum_i (v_i - R_i)^2, mean entropy, clip fraction,
// sum_i KL(old_i || new_i)] in float64, KL from `old_log_probs` ([B, A] log-softmax).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> actor_critic_grads(
    const at::Tensor& obs, at::TensorList actor, at::TensorList critic, const at::Tensor& actions,
    const at::Tensor& advantages, const at::Tensor& old_log_probs, const at::Tensor& returns,
    double clip_coef, double ent_coef, double vf_coef, double scale) {
  check_actor_critic_inputs(obs, actor, critic, actions, advantages, old_log_probs, returns,
                            clip_coef, ent_coef, vf_coef, scale);
  const int64_t B = obs.size(0);
  const auto actor_out = mlp_forward(obs, actor);
  const auto& logits = actor_out.output;
  // pg_loss checks the actions' range (and the advantages' finiteness), so the gather only has
  // to stay in bounds until it does.
  const auto old_chosen =
      old_log_probs.gather(1, actions.clamp(0, logits.size(1) - 1).unsqueeze(1)).squeeze(1);
  const auto [policy_loss, entropy, clip_fraction] =
      dispatch::pg_loss(logits, actions, advantages, "sum", old_chosen, clip_coef);
  const auto grad_loss = at::scalar_tensor(scale, logits.options());
  const auto grad_entropy =
      at::scalar_tensor(-ent_coef * static_cast<double>(B) * scale, logits.options());
  auto actor_grads = mlp_backward(
      actor_out, actor,
      dispatch::pg_loss_backward(grad_loss, grad_entropy, logits, actions, advantages, "sum",
                                 old_chosen, clip_coef));
  const auto new_log_probs = at::log_softmax(logits, 1);
  const auto kl = (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum();

  std::vector<at::Tensor> critic_grads;
  at::Tensor value_loss = at::zeros({}, logits.options());
  if (!critic.empty()) {
    const auto critic_out = mlp_forward(obs, critic);
    const auto error = critic_out.output.squeeze(1) - returns;
    value_loss = 0.5 * error.pow(2).sum();
    critic_grads = mlp_backward(critic_out, critic, (vf_coef * scale * error).unsqueeze(1));
  }
  auto stats = at::stack({policy_loss, value_loss, entropy, clip_fraction, kl}).to(at::kDouble);
  return {std::move(actor_grads), std::move(critic_grads), std::move(stats)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CompositeExplicitAutograd, m) {
  m.impl("policy_sample", &policy_sample);
  m.impl("policy_greedy", &policy_greedy);
  m.impl("actor_critic_forward", &actor_critic_forward);
  m.impl("actor_critic_grads", &actor_critic_grads);
}

}  // namespace pylander
