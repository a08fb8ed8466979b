// clip_grad_norms_ on the CPU: each group's norm as one pass of double-precision sums of squares,
// then one scaling pass, where the composite kernel's foreach norms, stack and multiply took
// about 15 ATen calls a minibatch, ~10x the arithmetic for the update's 12 small gradients. The
// result equals torch's clip_grad_norm_ up to rounding (its sums run in float32, in another order).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

template <typename scalar_t>
PYLANDER_TARGET_CLONES double sum_of_squares(const scalar_t* x, int64_t n) {
  double lanes[8] = {};  // independent sums, so the loop vectorises without reassociation
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int64_t j = 0; j < 8; ++j) {
      const double v = static_cast<double>(x[k + j]);
      lanes[j] += v * v;
    }
  }
  double total = 0.0;
  for (; k < n; ++k) total += static_cast<double>(x[k]) * static_cast<double>(x[k]);
  for (const double lane : lanes) total += lane;
  return total;
}

template <typename scalar_t>
PYLANDER_TARGET_CLONES void scale_inplace(scalar_t* x, int64_t n, scalar_t coef) {
  for (int64_t k = 0; k < n; ++k) x[k] *= coef;
}

at::Tensor clip_grad_norms_cpu(at::TensorList grads, at::IntArrayRef group_sizes,
                               double max_norm) {
  check_clip_grad_norms_inputs(grads, group_sizes, max_norm);
  std::vector<at::Tensor> contiguous;
  for (const auto& grad : grads) contiguous.push_back(grad.contiguous());
  double largest = 0.0;
  int64_t offset = 0;
  for (const auto size : group_sizes) {
    const auto group = at::ArrayRef<at::Tensor>(contiguous).slice(offset, size);
    offset += size;
    double squares = 0.0;
    for (const auto& grad : group) {
      AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "clip_grad_norms_cpu", [&] {
        squares += sum_of_squares(grad.data_ptr<scalar_t>(), grad.numel());
      });
    }
    const double norm = std::sqrt(squares);
    // torch's clamp(max_norm / (norm + 1e-6), max=1); a NaN norm makes every gradient NaN.
    const double coef = max_norm / (norm + 1e-6);
    if (!(coef >= 1.0)) {
      for (const auto& grad : group) {
        AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "clip_grad_norms_cpu", [&] {
          scale_inplace(grad.data_ptr<scalar_t>(), grad.numel(), static_cast<scalar_t>(coef));
        });
      }
    }
    largest = std::isnan(norm) || std::isnan(largest) ? std::numeric_limits<double>::quiet_NaN()
                                                     : std::max(largest, norm);
  }
  for (size_t t = 0; t < grads.size(); ++t) {
    if (!grads[t].is_same(contiguous[t])) grads[t].copy_(contiguous[t]);
  }
  return at::scalar_tensor(largest, grads[0].options());
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("clip_grad_norms_", &clip_grad_norms_cpu); }

}  // namespace pylander
