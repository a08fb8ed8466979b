// Weighted log-prob objective  loss = reduce_i(-w_i * log_softmax(z_i)[a_i])  and its gradient
// with respect to the logits, computed row by row without materialising log_softmax.
// Also the mean entropy of the rows, so an entropy bonus costs no extra pass. With old
// log-probabilities and clip_coef > 0 the objective is PPO's clipped surrogate (surrogate.h):
// the same passes, with w_i replaced by the row's effective weight in the gradient.
//
// Rows are processed in blocks so that the exps (and the forward's logs) run as vectorised
// array passes (fast_math.h). With s_j = z_j - max, e_j = exp(s_j), S = sum_j e_j and
// W = sum_j e_j s_j (<= 0):
//   log p_j = s_j - log S,   H = log S - W / S   (two non-negative terms: no cancellation),
//   log p_j + H = s_j - W / S, so the plain loss's backward needs no log.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../checks.h"
#include "pg_rows.h"

namespace pylander {
namespace {

constexpr int64_t kRowsPerThread = 4096;
int64_t num_chunks(int64_t B) { return (B + kRowsPerThread - 1) / kRowsPerThread; }

// Calls f(chunk, row_begin, row_end) for fixed chunks of kRowsPerThread rows, in parallel. The
// chunks do not depend on the thread count, so neither do sums of per-chunk partials.
template <typename F>
void for_each_chunk(int64_t B, const F& f) {
  at::parallel_for(0, num_chunks(B), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      f(c, c * kRowsPerThread, std::min(B, (c + 1) * kRowsPerThread));
    }
  });
}

// The surrogate's inputs as the kernels read them: `old` stays empty when clipping is off.
at::Tensor contiguous_old_log_probs(const std::optional<at::Tensor>& old_log_probs,
                                    double clip_coef) {
  return clip_coef > 0.0 ? old_log_probs->contiguous() : at::Tensor();
}

template <typename scalar_t>
Clip<scalar_t> make_clip(const at::Tensor& old, double clip_coef) {
  if (!old.defined()) return {};
  return {old.data_ptr<scalar_t>(), {1.0 - clip_coef, 1.0 + clip_coef}};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pg_loss_cpu(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& weights,
    c10::string_view reduction, const std::optional<at::Tensor>& old_log_probs,
    double clip_coef) {
  check_pg_inputs(logits, actions, weights);
  check_clip_inputs(logits, old_log_probs, clip_coef);
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = contiguous_old_log_probs(old_log_probs, clip_coef);
  auto loss = at::empty({}, z.options());
  auto entropy = at::empty({}, z.options());
  auto clip_fraction = at::empty({}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_cpu", [&] {
    std::vector<RowStats> partial(num_chunks(B));
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const auto clip = make_clip<scalar_t>(old, clip_coef);
    for_each_chunk(B, [&](int64_t c, int64_t i0, int64_t i1) {
      partial[c] = pg_forward_rows(zp, ap, wp, clip, A, i0, i1);
    });
    RowStats total;
    for (const auto& p : partial) {
      total.loss += p.loss;
      total.entropy += p.entropy;
      total.clipped += p.clipped;
      total.flags.merge(p.flags);
    }
    total.flags.check("logits` or `weights", A);
    // Written directly: 0-d fill_ calls would cost more trips through the dispatcher.
    const double rows = static_cast<double>(std::max<int64_t>(B, 1));
    *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(total.loss / scale);
    *entropy.data_ptr<scalar_t>() = static_cast<scalar_t>(B > 0 ? total.entropy / B : 0.0);
    *clip_fraction.data_ptr<scalar_t>() = static_cast<scalar_t>(total.clipped / rows);
  });
  return {loss, entropy, clip_fraction};
}

at::Tensor pg_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_entropy,
                                const at::Tensor& logits, const at::Tensor& actions,
                                const at::Tensor& weights, c10::string_view reduction,
                                const std::optional<at::Tensor>& old_log_probs,
                                double clip_coef) {
  check_pg_inputs(logits, actions, weights);
  check_clip_inputs(logits, old_log_probs, clip_coef);
  TORCH_CHECK(grad_loss.numel() == 1 && grad_entropy.numel() == 1,
              "pylander: pg_loss_backward expects scalar `grad_loss` and `grad_entropy`");
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const double g_loss = grad_loss.item<double>() / scale;
  const double g_entropy = B > 0 ? grad_entropy.item<double>() / B : 0.0;
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = contiguous_old_log_probs(old_log_probs, clip_coef);
  auto grad = at::empty_like(z, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_backward_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    const auto clip = make_clip<scalar_t>(old, clip_coef);
    std::vector<Flags> partial(B + 1);  // indexed by the first row of each range
    const auto rows = [&](int64_t i0, int64_t i1) {
      partial[i0] = pg_backward_rows(zp, ap, wp, clip, gp, A, g_loss, g_entropy, i0, i1);
    };
    // fast_math's results can differ in the last bit with an element's position in its array,
    // so a row's log pi(a|s) depends on the blocks it was computed in. Clipping, the forward's
    // chunks make both passes clip exactly the same rows; otherwise the ranges stay those of the
    // plain loss's original backward, whose gradients must not change by a bit.
    if (clip.old != nullptr) {
      for_each_chunk(B, [&](int64_t, int64_t i0, int64_t i1) { rows(i0, i1); });
    } else {
      at::parallel_for(0, B, kRowsPerThread, rows);
    }
    Flags all;
    for (const auto& p : partial) all.merge(p);
    all.check("logits", A);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) {
  m.impl("pg_loss", &pg_loss_cpu);
  m.impl("pg_loss_backward", &pg_loss_backward_cpu);
}

}  // namespace pylander
