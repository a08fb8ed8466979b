// The seed notebook's PolicyNetwork.act as one native call: the very ATen ops its Python code
// runs (Linear, ReLU, log(softmax + 1e-9), exp, multinomial on torch's global generator), in the
// same order on the same values, so the draws and the generator's state match the notebook's
// bit for bit. Once per env step of --algo notebook, where the Python dispatch of those dozen
// small ops cost more than the env step.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../checks.h"

namespace pylander {
namespace {

at::Tensor notebook_act(const at::Tensor& observation, const at::Tensor& weight,
                        const at::Tensor& bias) {
  check_rank(observation, 1, "observation", "[obs_size]");
  check_rank(weight, 2, "weight", "[num_actions, obs_size]");
  TORCH_CHECK(weight.size(1) == observation.size(0) && bias.dim() == 1 &&
                  bias.size(0) == weight.size(0),
              "pylander: `weight` ", shape(weight.sizes()), " and `bias` ",
              shape(bias.sizes()), " do not fit an observation of shape ",
              shape(observation.sizes()));
  // torch.from_numpy(state).float().unsqueeze(0), then the network, as PolicyNetwork.act does.
  const auto state = observation.to(at::kFloat).unsqueeze(0);
  const auto logits = at::relu(at::linear(state, weight, bias));
  const auto log_probs = at::log(at::softmax(logits, -1) + 1e-9).squeeze(0);
  const auto probs = at::exp(log_probs);
  if (!probs.is_cpu() || probs.scalar_type() != at::kFloat) return at::multinomial(probs, 1);
  // torch.multinomial(probs, 1) on the CPU is its Gumbel fast path after three checks that each
  // cost a reduction and a sync: the same checks on the A values directly, then the same ops in
  // the same order, so the generator is drawn from exactly as it would be.
  const auto p = probs.contiguous();
  const float* pp = p.data_ptr<float>();
  bool valid = true;
  double total = 0.0;
  for (int64_t j = 0; j < p.numel(); ++j) {
    valid &= pp[j] < std::numeric_limits<float>::infinity() && pp[j] >= 0.0f;
    total += pp[j];
  }
  TORCH_CHECK(valid, "probability tensor contains either `inf`, `nan` or element < 0");
  TORCH_CHECK(total != 0.0, "invalid multinomial distribution (sum of probabilities <= 0)");
  auto q = at::empty_like(probs).exponential_(1, std::nullopt);
  at::div_out(q, probs, q);
  auto action = at::empty({1}, probs.options().dtype(at::kLong));
  at::argmax_out(action, q, /*dim=*/-1, /*keepdim=*/true);
  return action;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CompositeExplicitAutograd, m) {
  m.impl("notebook_act", &notebook_act);
}

}  // namespace pylander
