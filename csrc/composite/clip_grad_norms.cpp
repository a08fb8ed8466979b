// clip_grad_norms_: each group of gradients (the actor's, the critic's) scaled in place so that
// its L2 norm is at most max_norm, and the largest norm before clipping returned.
//
// It is the arithmetic of torch's clip_grad_norm_, op for op (foreach norms, their norm, one
// scaled multiply), so the two give the same bits. Composite: ATen's kernels serve every device
// but the CPU, which has plain loops (csrc/cpu/clip_grad_norms.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace pylander {
namespace {

at::Tensor clip_grad_norms_(at::TensorList grads, at::IntArrayRef group_sizes, double max_norm) {
  check_clip_grad_norms_inputs(grads, group_sizes, max_norm);
  std::vector<at::Tensor> norms;
  int64_t offset = 0;
  for (const auto size : group_sizes) {
    const auto group = grads.slice(offset, size);
    offset += size;
    const auto norm = at::linalg_vector_norm(at::stack(at::_foreach_norm(group)));
    // Python's `max_norm / (norm + 1e-6)` is (norm + 1e-6).reciprocal() * max_norm.
    const auto coef = at::clamp(at::reciprocal(norm + 1e-6) * max_norm, std::nullopt, 1.0);
    at::_foreach_mul_(group, coef);
    norms.push_back(norm);
  }
  return at::stack(norms).max();
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CompositeExplicitAutograd, m) {
  m.impl("clip_grad_norms_", &clip_grad_norms_);
}

}  // namespace pylander
