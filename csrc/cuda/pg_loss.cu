// CUDA weighted log-prob objective, mean entropy and their gradient with respect to the logits,
// with the semantics of csrc/cpu/pg_loss.cpp. One thread per row computes the row's softmax
// statistics, loss term and entropy in double; the rows are then summed with at::sum on the
// device.
//
// As on the CPU, with shifted_j = z_j - max, e_j = exp(shifted_j) and S = sum_j e_j:
//   log p_j = shifted_j - log S   and   H = log S - (sum_j e_j shifted_j) / S,
// a sum of two non-negative terms, so the entropy never cancels, even for huge logits.
// With old log-probabilities (`old` not null) the loss is PPO's clipped surrogate (surrogate.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../checks.h"
#include "../surrogate.h"
#include "common.cuh"

namespace pylander {
namespace {

using namespace cuda_detail;

struct RowSoftmax {
  double max;      // max_j z_j
  double log_sum;  // log S
  double inv_sum;  // 1 / S
  double entropy;  // H
};

// One row's softmax statistics, in double. Clears `finite` on NaN or infinity. The CPU kernel
// keeps shifted_j and e_j in a per-row buffer; here they are recomputed (the same values).
template <typename scalar_t>
__device__ __forceinline__ RowSoftmax row_softmax(const scalar_t* z, int64_t A, bool& finite) {
  double max = neg_infinity();
  bool row_finite = true;
  for (int64_t j = 0; j < A; ++j) {
    const double zj = static_cast<double>(z[j]);
    row_finite = row_finite && is_finite(zj);
    max = zj > max ? zj : max;
  }
  finite = finite && row_finite;
  double sum = 0.0, weighted = 0.0;  // S and sum_j e_j shifted_j <= 0
  for (int64_t j = 0; j < A; ++j) {
    const double shifted = static_cast<double>(z[j]) - max;
    const double e = exp(shifted);
    sum += e;
    weighted += e * shifted;
  }
  const double inv_sum = 1.0 / sum;
  const double log_sum = log(sum);
  return {max, log_sum, inv_sum, log_sum - weighted * inv_sum};
}

// Row i's term of -loss and the weight its gradient is scaled by, as on the CPU: w log pi and w
// with clipping off (`old` null), else the clipped surrogate's.
template <typename scalar_t>
__device__ __forceinline__ SurrogateTerm row_term(const scalar_t* old, ClipRange range, double w,
                                                  double log_prob, int64_t i, int* flags) {
  if (old == nullptr) return {w * log_prob, w, false};
  const double old_i = static_cast<double>(old[i]);
  if (!is_finite(old_i)) flags[kNonFiniteOld] = 1;
  return surrogate_term(w, log_prob, old_i, range);
}

// row_clipped is written only when clipping (`old` not null).
template <typename scalar_t>
__global__ void pg_forward_kernel(const scalar_t* __restrict__ z, const int64_t* __restrict__ a,
                                  const scalar_t* __restrict__ w, const scalar_t* __restrict__ old,
                                  ClipRange range, int64_t B, int64_t A,
                                  double* __restrict__ row_loss, double* __restrict__ row_entropy,
                                  double* __restrict__ row_clipped, int* __restrict__ flags) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += stride) {
    const scalar_t* zi = z + i * A;
    bool finite = true;
    const RowSoftmax row = row_softmax(zi, A, finite);
    finite = finite && is_finite(static_cast<double>(w[i]));
    if (!finite) flags[kNonFinite] = 1;
    const int64_t ai = a[i];
    if (ai < 0 || ai >= A) {
      flags[kBadAction] = 1;
      row_loss[i] = 0.0;
      row_entropy[i] = 0.0;
      if (old != nullptr) row_clipped[i] = 0.0;
      continue;
    }
    const double log_prob = (static_cast<double>(zi[ai]) - row.max) - row.log_sum;
    const SurrogateTerm term = row_term(old, range, static_cast<double>(w[i]), log_prob, i, flags);
    row_loss[i] = -term.objective;
    row_entropy[i] = row.entropy;
    if (old != nullptr) row_clipped[i] = term.clipped ? 1.0 : 0.0;
  }
}

// d loss / d z_ij    = -(w_i * grad_loss / scale) * (onehot(a_i)_j - p_ij), w_i the effective
//                      weight (surrogate.h)
// d entropy / d z_ij = -(grad_entropy / B) * p_ij * (log p_ij + H_i)
// grad_loss and grad_entropy are read on the device (no .item() round trip before the launch);
// the only host synchronisation is reading the error flags afterwards, as in the forward.
template <typename scalar_t>
__global__ void pg_backward_kernel(const scalar_t* __restrict__ z, const int64_t* __restrict__ a,
                                   const scalar_t* __restrict__ w,
                                   const scalar_t* __restrict__ old, ClipRange range,
                                   const double* __restrict__ grad_loss,
                                   const double* __restrict__ grad_entropy, double scale,
                                   scalar_t* __restrict__ gz, int64_t B, int64_t A,
                                   int* __restrict__ flags) {
  const double g_loss = *grad_loss / scale;
  const double g_entropy = *grad_entropy / static_cast<double>(B);  // launched only for B > 0
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += stride) {
    const scalar_t* zi = z + i * A;
    bool finite = true;
    const RowSoftmax row = row_softmax(zi, A, finite);
    if (!finite) flags[kNonFinite] = 1;
    const int64_t ai = a[i];
    if (ai < 0 || ai >= A) {
      flags[kBadAction] = 1;
      continue;
    }
    double weight = static_cast<double>(w[i]);
    if (old != nullptr) {
      const double log_prob = (static_cast<double>(zi[ai]) - row.max) - row.log_sum;
      weight = row_term(old, range, weight, log_prob, i, flags).weight;
    }
    const double coef = -g_loss * weight;
    const double entropy_shift = row.entropy - row.log_sum;  // log p_j + H = shifted_j + this
    scalar_t* gzi = gz + i * A;
    for (int64_t j = 0; j < A; ++j) {
      const double shifted = static_cast<double>(zi[j]) - row.max;
      const double p = exp(shifted) * row.inv_sum;
      const double onehot = j == ai ? 1.0 : 0.0;
      gzi[j] = static_cast<scalar_t>(coef * (onehot - p) -
                                     g_entropy * p * (shifted + entropy_shift));
    }
  }
}

// The old log-probabilities the kernels read, or an undefined tensor when clipping is off.
at::Tensor used_old_log_probs(const std::optional<at::Tensor>& old_log_probs, double clip_coef) {
  return clip_coef > 0.0 ? old_log_probs->contiguous() : at::Tensor();
}

template <typename scalar_t>
scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pg_loss_cuda(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& weights,
    c10::string_view reduction, const std::optional<at::Tensor>& old_log_probs,
    double clip_coef) {
  check_pg_inputs(logits, actions, weights);
  check_clip_inputs(logits, old_log_probs, clip_coef);
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  check_cuda(logits, "logits");
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  if (B == 0) {  // an empty batch gives zeros, like the CPU kernel
    return {at::zeros({}, logits.options()), at::zeros({}, logits.options()),
            at::zeros({}, logits.options())};
  }
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = used_old_log_probs(old_log_probs, clip_coef);
  const ClipRange range{1.0 - clip_coef, 1.0 + clip_coef};
  const auto row_options = z.options().dtype(at::kDouble);
  auto row_loss = at::empty({B}, row_options);
  auto row_entropy = at::empty({B}, row_options);
  auto row_clipped = old.defined() ? at::empty({B}, row_options) : at::Tensor();
  auto flags = make_flags(z);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_cuda", [&] {
    pg_forward_kernel<scalar_t><<<num_blocks(B), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), a.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(old), range, B, A, row_loss.data_ptr<double>(),
        row_entropy.data_ptr<double>(), data_or_null<double>(row_clipped),
        flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto host_flags = read_flags(flags);
  check_finite_flag(!host_flags.non_finite, "logits` or `weights");
  check_actions_flag(!host_flags.bad_action, A);
  check_finite_flag(!host_flags.non_finite_old, "old_log_probs");
  // Sum in double, scale, then round once to the logits' dtype (as the CPU kernel's fill_ does).
  const double rows = static_cast<double>(B);
  auto loss = row_loss.sum().div_(scale).to(z.scalar_type());
  auto entropy = row_entropy.sum().div_(rows).to(z.scalar_type());
  auto clip_fraction = old.defined() ? row_clipped.sum().div_(rows).to(z.scalar_type())
                                     : at::zeros({}, z.options());
  return {loss, entropy, clip_fraction};
}

// The scalar gradients may be on the device of `logits`, or be CPU scalars (torch lets 0-dim CPU
// tensors mix with CUDA ones); a gradient on another GPU is a device mismatch.
void check_scalar_grad_device(const at::Tensor& grad, const at::Tensor& logits, const char* name) {
  if (!grad.device().is_cpu()) check_same_device(grad, logits, name, "logits");
}

// A scalar gradient as a 0-dim double tensor on the device of `logits` (no host round trip).
at::Tensor scalar_grad_on(const at::Tensor& grad, const at::Tensor& logits) {
  return grad.reshape({}).to(logits.device(), at::kDouble).contiguous();
}

at::Tensor pg_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_entropy,
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
  // With CPU logits this kernel runs only because a gradient is on a GPU: report that mismatch.
  check_scalar_grad_device(grad_loss, logits, "grad_loss");
  check_scalar_grad_device(grad_entropy, logits, "grad_entropy");
  check_cuda(logits, "logits");
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  const auto gl = scalar_grad_on(grad_loss, logits);
  const auto ge = scalar_grad_on(grad_entropy, logits);
  const auto z = logits.contiguous();
  auto grad = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (B == 0) return grad;
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = used_old_log_probs(old_log_probs, clip_coef);
  const ClipRange range{1.0 - clip_coef, 1.0 + clip_coef};
  auto flags = make_flags(z);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_backward_cuda", [&] {
    pg_backward_kernel<scalar_t><<<num_blocks(B), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), a.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(old), range, gl.data_ptr<double>(), ge.data_ptr<double>(), scale,
        grad.data_ptr<scalar_t>(), B, A, flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto host_flags = read_flags(flags);
  check_finite_flag(!host_flags.non_finite, "logits");
  check_actions_flag(!host_flags.bad_action, A);
  check_finite_flag(!host_flags.non_finite_old, "old_log_probs");
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CUDA, m) {
  m.impl("pg_loss", &pg_loss_cuda);
  m.impl("pg_loss_backward", &pg_loss_backward_cuda);
}

}  // namespace pylander
