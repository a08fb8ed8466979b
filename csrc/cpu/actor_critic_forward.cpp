// actor_critic_forward on the CPU: the update's forward passes over the whole batch (the critic's
// values for the advantages, the actor's log-probabilities that the ratio and the KL are taken
// against, and the KL after the update) as the plain loops of mlp_loops.h, in blocks of rows.
// torch's own tanh took ~270 us for a batch's [2064, 64] on a Zen 5 core, 10x its sigmoid, and
// six of them were a sixth of an update. The log-probabilities are computed as
// actor_critic_grads' CPU kernel computes them, so the update's first ratio is 1 up to float32
// rounding; the composite kernel (other devices) gives the module's bits.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../mlp_checks.h"
#include "mlp_forward.h"
#include "pg_rows.h"

namespace pylander {
namespace {

std::tuple<at::Tensor, at::Tensor> actor_critic_forward_cpu(const at::Tensor& obs,
                                                            at::TensorList actor,
                                                            at::TensorList critic) {
  check_networks(obs, actor, critic);
  const int64_t B = obs.size(0), A = actor[actor.size() - 2].size(0);
  auto log_probs = at::empty({B, A}, obs.options());
  auto values = at::empty({critic.empty() ? 0 : B}, obs.options());
  AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "actor_critic_forward_cpu", [&] {
    const auto x = obs.contiguous();
    const auto actor_params = contiguous_params(actor);
    const auto critic_params = contiguous_params(critic);
    const int64_t in = x.size(1);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* lp = log_probs.data_ptr<scalar_t>();
    scalar_t* vp = values.data_ptr<scalar_t>();
    // Each row is computed on its own, so neither the blocks nor the threads change a bit.
    const int64_t blocks = (B + kBlockRows - 1) / kBlockRows;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> inputs, h, scratch, logits;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * kBlockRows, n = std::min(kBlockRows, B - i0);
        const int64_t rows = padded_rows(n);
        inputs.assign(in * rows, scalar_t(0));
        transpose_into(xp + i0 * in, n, in, rows, inputs.data());
        h = inputs;
        forward_transposed(actor_params, rows, h, scratch);
        logits.resize(n * A);
        untranspose_rows(h.data(), A, rows, n, logits.data());
        log_softmax_rows(logits.data(), A, n, lp + i0 * A);
        if (critic_params.empty()) continue;
        h = inputs;
        forward_transposed(critic_params, rows, h, scratch);
        std::copy(h.begin(), h.begin() + n, vp + i0);
      }
    });
  });
  return {std::move(log_probs), std::move(values)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("actor_critic_forward", &actor_critic_forward_cpu); }

}  // namespace pylander
