// actor_critic_grads on the CPU: the actor's and the critic's forward and backward passes as the
// plain loops of mlp_loops.h and the loss's row passes of pg_rows.h, with no ATen op between
// them. The composite kernel (csrc/composite/actor_critic.cpp, which other devices run) makes ~40
// ATen calls per minibatch: ~120 us of fixed cost a call, and in training, after env steps have
// evicted the caches, an update took it 1.2-2x as long as these loops (benchmarks/kernel_ab.py).
// The arithmetic itself runs at about MKL's speed here. This computes the same gradients and
// statistics up to rounding: its sums run in other orders, and the statistics in double
// precision.
//
// The actor and the critic run on two threads where torch has two (see actor_critic_grads_cpu).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../mlp_checks.h"
#include "mlp_loops.h"
#include "pg_rows.h"

namespace pylander {
namespace {


// The clipped surrogate's inputs for the rows from i0 on.
template <typename scalar_t>
Clip<scalar_t> offset(Clip<scalar_t> clip, int64_t i0) {
  if (clip.old != nullptr) clip.old += i0;
  return clip;
}

// One MLP (nn.Linear weight and bias per layer) and, after forward(), each layer's input, both
// transposed ([in, rows], for the forward and the input gradients) and row-major ([rows, in],
// for the weight gradients): inputs[0] is the observations, inputs[l] the tanh output of layer
// l - 1.
template <typename scalar_t>
struct Mlp {
  Mlp(at::TensorList params, int64_t obs_size) {
    widths.push_back(obs_size);
    for (size_t l = 0; l < params.size(); l += 2) {
      weights.push_back(params[l].contiguous());
      biases.push_back(params[l + 1].contiguous());
      widths.push_back(params[l].size(0));
    }
  }

  int64_t layers() const { return static_cast<int64_t>(weights.size()); }
  const scalar_t* weight(int64_t l) const { return weights[l].template data_ptr<scalar_t>(); }

  // The last layer's output, [out, rows], from a block of observations in both layouts.
  std::vector<scalar_t> forward(const std::vector<scalar_t>& xt, const std::vector<scalar_t>& x,
                                int64_t block_rows) {
    rows = block_rows;
    inputs_t.assign(1, xt);
    inputs.assign(1, x);
    std::vector<scalar_t> y;
    for (int64_t l = 0; l < layers(); ++l) {
      const int64_t out = widths[l + 1];
      y.resize(out * rows);
      linear_transposed(inputs_t[l].data(), weight(l), biases[l].template data_ptr<scalar_t>(),
                        widths[l], out, rows, y.data());
      if (l + 1 == layers()) break;
      tanh_inplace(y.data(), out * rows);
      inputs_t.push_back(y);
      inputs.emplace_back(rows * out);
      transpose_into(y.data(), out, rows, out, inputs.back().data());
    }
    return y;
  }

  // Adds this block of rows' share of [d weight, d bias] of every layer to `grads`, given
  // g = d loss / d output ([out, rows], zero in the padding rows, which keeps them out of every
  // sum).
  void backward(std::vector<scalar_t> g, std::vector<at::Tensor>& grads) {
    std::vector<scalar_t> transposed, zeros, dx;
    for (int64_t l = layers(); l-- > 0;) {
      const int64_t in = widths[l], out = widths[l + 1];
      linear_param_grads(g.data(), inputs_t[l].data(), inputs[l].data(), in, out, rows,
                         grads[2 * l].template data_ptr<scalar_t>(),
                         grads[2 * l + 1].template data_ptr<scalar_t>());
      if (l == 0) break;
      // d loss / d input = weight^T g, then back through the tanh that made the input.
      transposed.resize(in * out);
      transpose_into(weight(l), out, in, out, transposed.data());
      zeros.assign(in, scalar_t(0));
      dx.resize(in * rows);
      linear_transposed(g.data(), transposed.data(), zeros.data(), out, in, rows, dx.data());
      tanh_backward(dx.data(), inputs_t[l].data(), in * rows);
      g.swap(dx);
    }
  }

  // Zeroed gradients of every parameter, [weight, bias] per layer.
  std::vector<at::Tensor> zero_grads(const at::TensorOptions& options) const {
    std::vector<at::Tensor> grads;
    for (int64_t l = 0; l < layers(); ++l) {
      grads.push_back(at::zeros({widths[l + 1], widths[l]}, options));
      grads.push_back(at::zeros({widths[l + 1]}, options));
    }
    return grads;
  }

  int64_t rows = 0;  // of the block forward() saw
  std::vector<at::Tensor> weights, biases;
  std::vector<int64_t> widths;
  std::vector<std::vector<scalar_t>> inputs_t, inputs;
};

// sum_ij exp(old_ij) (old_ij - log_softmax(z)_ij) over rows [i0, i1): KL(old || new) summed.
template <typename scalar_t>
double kl_sum(const scalar_t* z, const scalar_t* old, int64_t A, int64_t i0, int64_t i1) {
  Block block(A);
  std::vector<double> old_probs;
  double kl = 0.0;
  for (int64_t b = i0; b < i1; b += block.rows) {
    const int64_t rows = std::min(block.rows, i1 - b);
    shifted_exps(z, A, b, rows, block);
    log_sums(block, rows, A);
    old_probs.assign(old + b * A, old + (b + rows) * A);
    // Log-probabilities are <= 0, which the vectorised exp needs; anything else takes std::exp.
    if (std::all_of(old_probs.begin(), old_probs.end(), [](double x) { return x <= 0.0; })) {
      fast_math::exp_nonpositive(old_probs.data(), rows * A);
    } else {
      for (auto& x : old_probs) x = std::exp(x);
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < A; ++j) {
        const double log_p = block.shifted[r * A + j] - block.row_a[r];
        const double old_log_p = static_cast<double>(old[(b + r) * A + j]);
        kl += old_probs[r * A + j] * (old_log_p - log_p);
      }
    }
  }
  return kl;
}

// A block of observation rows in both layouts Mlp::forward takes, zero-padded to `rows`.
template <typename scalar_t>
struct InputBlock {
  int64_t i0, n, rows;
  std::vector<scalar_t> transposed, row_major;
};

template <typename scalar_t>
std::vector<InputBlock<scalar_t>> input_blocks(const scalar_t* x, int64_t B, int64_t in) {
  std::vector<InputBlock<scalar_t>> blocks;
  for (int64_t i0 = 0; i0 < B; i0 += kBlockRows) {
    const int64_t n = std::min(kBlockRows, B - i0), rows = padded_rows(n);
    InputBlock<scalar_t> block{i0, n, rows, std::vector<scalar_t>(in * rows, scalar_t(0)),
                               std::vector<scalar_t>(in * rows, scalar_t(0))};
    transpose_into(x + i0 * in, n, in, rows, block.transposed.data());
    std::copy(x + i0 * in, x + (i0 + n) * in, block.row_major.begin());
    blocks.push_back(std::move(block));
  }
  return blocks;
}

// What the actor's pass adds up: the loss's row statistics, their flags and the KL.
struct ActorSums {
  RowStats loss;
  Flags backward_flags;
  double kl = 0.0;
};

// The actor's forward and backward passes and the loss, block by block: logits into z, the
// gradients into `grads`.
template <typename scalar_t>
ActorSums actor_pass(Mlp<scalar_t>& net, const std::vector<InputBlock<scalar_t>>& blocks,
                     const int64_t* actions, const scalar_t* weights, const scalar_t* old,
                     Clip<scalar_t> clip, int64_t A, double ent_coef, double scale, scalar_t* z,
                     std::vector<at::Tensor>& grads) {
  ActorSums sums;
  std::vector<scalar_t> grad_logits;
  for (const auto& block : blocks) {
    const int64_t i0 = block.i0, n = block.n, rows = block.rows;
    const auto out = net.forward(block.transposed, block.row_major, rows);
    untranspose_rows(out.data(), A, rows, n, z + i0 * A);
    // The loss: pg_loss's row passes.
    const auto stats = pg_forward_rows(z, actions, weights, clip, A, i0, i0 + n);
    sums.loss.loss += stats.loss;
    sums.loss.entropy += stats.entropy;
    sums.loss.clipped += stats.clipped;
    sums.loss.flags.merge(stats.flags);
    grad_logits.resize(n * A);
    sums.backward_flags.merge(pg_backward_rows(z + i0 * A, actions + i0, weights + i0,
                                               offset(clip, i0), grad_logits.data(), A, scale,
                                               -ent_coef * scale, 0, n));
    std::vector<scalar_t> g(A * rows, scalar_t(0));
    transpose_into(grad_logits.data(), n, A, rows, g.data());
    net.backward(std::move(g), grads);
    sums.kl += kl_sum(z, old, A, i0, i0 + n);
  }
  return sums;
}

// The critic's forward and backward passes, block by block; returns the summed squared error / 2.
template <typename scalar_t>
double critic_pass(Mlp<scalar_t>& net, const std::vector<InputBlock<scalar_t>>& blocks,
                   const scalar_t* returns, scalar_t value_coef, std::vector<at::Tensor>& grads) {
  double value_loss = 0.0;
  for (const auto& block : blocks) {
    const auto values = net.forward(block.transposed, block.row_major, block.rows);
    std::vector<scalar_t> grad_values(block.rows, scalar_t(0));
    for (int64_t i = 0; i < block.n; ++i) {
      const scalar_t error = values[i] - returns[block.i0 + i];
      value_loss += 0.5 * static_cast<double>(error) * static_cast<double>(error);
      grad_values[i] = value_coef * error;
    }
    net.backward(std::move(grad_values), grads);
  }
  return value_loss;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> actor_critic_grads_cpu(
    const at::Tensor& obs, at::TensorList actor, at::TensorList critic, const at::Tensor& actions,
    const at::Tensor& advantages, const at::Tensor& old_log_probs, const at::Tensor& returns,
    double clip_coef, double ent_coef, double vf_coef, double scale) {
  check_actor_critic_inputs(obs, actor, critic, actions, advantages, old_log_probs, returns,
                            clip_coef, ent_coef, vf_coef, scale);
  const int64_t B = obs.size(0), A = actor[actor.size() - 2].size(0);
  auto logits = at::empty({B, A}, obs.options());
  const auto options = obs.options();
  std::vector<at::Tensor> actor_grads, critic_grads;
  auto stats = at::zeros({5}, options.dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "actor_critic_grads_cpu", [&] {
    const int64_t in = obs.size(1);
    const auto x = obs.contiguous();
    const auto a = actions.contiguous();
    const auto w = advantages.contiguous();
    const auto old = old_log_probs.contiguous();
    const auto r = returns.contiguous();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* oldp = old.data_ptr<scalar_t>();
    // The old log-probability of each row's action, for the clipped surrogate.
    std::vector<scalar_t> old_chosen(B, scalar_t(0));
    for (int64_t i = 0; i < B; ++i) {
      if (ap[i] >= 0 && ap[i] < A) old_chosen[i] = oldp[i * A + ap[i]];
    }
    Clip<scalar_t> clip;
    if (clip_coef > 0.0) clip = {old_chosen.data(), {1.0 - clip_coef, 1.0 + clip_coef}};

    Mlp<scalar_t> actor_net(actor, in), critic_net(critic, in);
    actor_grads = actor_net.zero_grads(options);
    critic_grads = critic_net.zero_grads(options);
    // Blocks of rows: each block's activations stay in L2, and its share of the parameter
    // gradients is added to theirs.
    const auto blocks = input_blocks(x.data_ptr<scalar_t>(), B, in);
    ActorSums actor_sums;
    double value_loss = 0.0;
    // The two networks share nothing but their inputs, and take about the same arithmetic: with
    // two or more torch threads each gets one (one alone runs both). Each pass adds up in the
    // same order either way, so the results do not depend on the thread count.
    const int64_t passes = critic.empty() ? 1 : 2;
    at::parallel_for(0, passes, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        if (p == 0) {
          actor_sums = actor_pass(actor_net, blocks, ap, w.data_ptr<scalar_t>(), oldp, clip, A,
                                  ent_coef, scale, logits.data_ptr<scalar_t>(), actor_grads);
        } else {
          value_loss = critic_pass(critic_net, blocks, r.data_ptr<scalar_t>(),
                                   static_cast<scalar_t>(vf_coef * scale), critic_grads);
        }
      }
    });
    const RowStats& loss = actor_sums.loss;
    loss.flags.check("logits` or `weights", A);
    actor_sums.backward_flags.check("logits", A);
    double* s = stats.data_ptr<double>();
    s[0] = loss.loss;
    s[1] = value_loss;
    s[2] = B > 0 ? loss.entropy / static_cast<double>(B) : 0.0;
    s[3] = static_cast<double>(loss.clipped) / static_cast<double>(std::max<int64_t>(B, 1));
    s[4] = actor_sums.kl;
  });
  return {std::move(actor_grads), std::move(critic_grads), std::move(stats)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("actor_critic_grads", &actor_critic_grads_cpu); }

}  // namespace pylander
