// The tanh MLP's forward pass on transposed activations, for the CPU kernels that only run it:
// policy_sample and policy_greedy (a step's few rows) and actor_critic_forward (a whole batch).
//
// Internal linkage, as mlp_loops' helpers.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "mlp_loops.h"

namespace pylander {
namespace {

// Each of `params` contiguous, made once per call rather than once per block of rows.
inline std::vector<at::Tensor> contiguous_params(at::TensorList params) {
  std::vector<at::Tensor> out;
  out.reserve(params.size());
  for (const auto& p : params) out.push_back(p.contiguous());
  return out;
}

// `x` holds a block's inputs, [in, rows] with the rows padded (padded_rows), and on return the
// last layer's outputs, [out, rows]; `scratch` is a buffer reused between calls. `params`
// ([weight, bias] per layer, contiguous) are checked by the caller.
template <typename scalar_t>
void forward_transposed(const std::vector<at::Tensor>& params, int64_t rows,
                        std::vector<scalar_t>& x, std::vector<scalar_t>& scratch) {
  const size_t layers = params.size() / 2;
  for (size_t l = 0; l < layers; ++l) {
    const auto& weight = params[2 * l];
    const int64_t out = weight.size(0), width = weight.size(1);
    scratch.resize(out * rows);
    linear_transposed(x.data(), weight.data_ptr<scalar_t>(), params[2 * l + 1].data_ptr<scalar_t>(),
                      width, out, rows, scratch.data());
    if (l + 1 < layers) tanh_inplace(scratch.data(), out * rows);
    x.swap(scratch);
  }
}

}  // namespace
}  // namespace pylander
