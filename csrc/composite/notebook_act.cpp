// The seed notebook's PolicyNetwork.act as one native call: the very ATen ops its Python code
// runs (Linear, ReLU, log(softmax + 1e-9), exp, multinomial on torch's global generator), in the
// same order on the same values, so the draws and the generator's state match the notebook's
// bit for bit. Once per env step of --algo notebook, where the Python dispatch of those dozen
// small ops cost more than the env step.
#include <ATen/ATen.h>
#include <torch/library.h>

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
  return at::multinomial(at::exp(log_probs), 1);
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CompositeExplicitAutograd, m) {
  m.impl("notebook_act", &notebook_act);
}

}  // namespace pylander
