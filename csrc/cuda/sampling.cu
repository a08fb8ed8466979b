// CUDA batched categorical sampling from unnormalised logits by inverse-CDF on one uniform per
// row, with the semantics of csrc/cpu/sampling.cpp. The uniforms come from at::rand on the CUDA
// device (torch's Philox generator), so a seeded torch.Generator(device="cuda") reproduces the
// draws; one thread per row then picks the category.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../checks.h"
#include "common.cuh"

namespace pylander {
namespace {

using namespace cuda_detail;

template <typename scalar_t>
__global__ void sample_kernel(const scalar_t* __restrict__ z, const double* __restrict__ u,
                              int64_t* __restrict__ actions, scalar_t* __restrict__ log_probs,
                              int64_t B, int64_t A, int* __restrict__ flags) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += stride) {
    const scalar_t* zi = z + i * A;
    double max = neg_infinity();
    bool row_finite = true;
    for (int64_t j = 0; j < A; ++j) {
      const double x = static_cast<double>(zi[j]);
      row_finite = row_finite && is_finite(x);
      max = max < x ? x : max;  // std::max(max, x)
    }
    if (!row_finite) {  // reported by the caller; never index with a garbage choice
      flags[kNonFinite] = 1;
      actions[i] = 0;
      log_probs[i] = quiet_nan<scalar_t>();
      continue;
    }
    double total = 0.0;
    for (int64_t j = 0; j < A; ++j) total += exp(static_cast<double>(zi[j]) - max);
    // Pick the first category whose cumulative mass exceeds u * total. The strict comparison
    // never picks a category of zero probability; rounding can leave the target past the last
    // cumulative sum, so the fallback is the last category with positive probability.
    const double target = u[i] * total;
    double cumulative = 0.0;
    int64_t chosen = -1;
    for (int64_t j = 0; j < A; ++j) {
      const double p = exp(static_cast<double>(zi[j]) - max);
      if (p > 0.0) chosen = j;
      cumulative += p;
      if (cumulative > target && p > 0.0) break;
    }
    // A finite row has p = 1 at its maximum, so `chosen` is a valid index here.
    actions[i] = chosen;
    log_probs[i] = static_cast<scalar_t>(static_cast<double>(zi[chosen]) - max - log(total));
  }
}

std::tuple<at::Tensor, at::Tensor> sample_categorical_cuda(
    const at::Tensor& logits, const std::optional<at::Generator>& generator) {
  check_logits(logits);
  check_generator_device(generator, logits, "logits");
  check_cuda(logits, "logits");
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  const auto z = logits.contiguous();
  const int64_t B = z.size(0), A = z.size(1);
  // Drawn even for B == 0, like the CPU kernel (a no-op for the generator's state).
  const auto uniforms = at::rand({B}, generator, z.options().dtype(at::kDouble));
  auto actions = at::empty({B}, z.options().dtype(at::kLong));
  auto log_probs = at::empty({B}, z.options());
  if (B == 0) return {actions, log_probs};
  auto flags = make_flags(z);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sample_categorical_cuda", [&] {
    sample_kernel<scalar_t><<<num_blocks(B), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), uniforms.data_ptr<double>(), actions.data_ptr<int64_t>(),
        log_probs.data_ptr<scalar_t>(), B, A, flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_finite_flag(!read_flags(flags).non_finite, "logits");
  return {actions, log_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CUDA, m) { m.impl("sample_categorical", &sample_categorical_cuda); }

}  // namespace pylander
