// CUDA reverse-time scans over a [T, N] rollout: discounted returns and GAE advantages, with the
// semantics of csrc/cpu/returns.cpp. One thread per env column loops over T backwards; adjacent
// threads read adjacent columns of the row-major [T, N] layout, so every step is coalesced.
// As on the CPU, the running sums are kept in double whatever the input dtype, and each step
// rounds like the CPU kernel's separate multiply and add (no FMA contraction), so the two
// devices agree bit for bit on IEEE hardware.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "common.cuh"

namespace pylander {
namespace {

using namespace cuda_detail;

template <typename scalar_t>
__global__ void returns_kernel(const scalar_t* __restrict__ r, const bool* __restrict__ d,
                               const scalar_t* __restrict__ boot, scalar_t* __restrict__ out,
                               int64_t T, int64_t N, double gamma, int* __restrict__ flags) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += stride) {
    double running = boot ? static_cast<double>(boot[n]) : 0.0;
    bool finite = is_finite(running);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t i = t * N + n;
      const double reward = static_cast<double>(r[i]);
      finite = finite && is_finite(reward);
      const double next = d[i] ? 0.0 : running;
      running = add_rn(reward, mul_rn(gamma, next));  // reward + gamma * next
      out[i] = static_cast<scalar_t>(running);
    }
    if (!finite) flags[kNonFinite] = 1;
  }
}

template <typename scalar_t>
__global__ void gae_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ v,
                           const bool* __restrict__ d, const scalar_t* __restrict__ last,
                           scalar_t* __restrict__ out, int64_t T, int64_t N, double gamma,
                           double lam, int* __restrict__ flags) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += stride) {
    double next_value = static_cast<double>(last[n]);
    double next_adv = 0.0;
    bool finite = is_finite(next_value);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t i = t * N + n;
      const double reward = static_cast<double>(r[i]);
      const double value = static_cast<double>(v[i]);
      finite = finite && is_finite(reward) && is_finite(value);
      const double live = d[i] ? 0.0 : 1.0;
      // Same association and rounding as the CPU kernel:
      //   delta = reward + gamma * live * next_value - value
      //   adv   = delta + gamma * lam * live * next_adv
      const double delta = sub_rn(add_rn(reward, mul_rn(mul_rn(gamma, live), next_value)), value);
      next_adv = add_rn(delta, mul_rn(mul_rn(mul_rn(gamma, lam), live), next_adv));
      next_value = value;
      out[i] = static_cast<scalar_t>(next_adv);
    }
    if (!finite) flags[kNonFinite] = 1;
  }
}

at::Tensor discounted_returns_cuda(const at::Tensor& rewards, const at::Tensor& dones,
                                   double gamma, const std::optional<at::Tensor>& bootstrap) {
  check_returns_inputs(rewards, dones, gamma);
  if (bootstrap) check_env_vector(*bootstrap, rewards, "bootstrap");
  check_cuda(rewards, "rewards");
  const c10::cuda::OptionalCUDAGuard guard(rewards.device());
  const auto r = rewards.contiguous();
  const auto d = dones.contiguous();
  const auto boot = bootstrap ? std::optional<at::Tensor>(bootstrap->contiguous()) : std::nullopt;
  auto out = at::empty_like(r);
  const int64_t T = r.size(0), N = r.size(1);
  if (N == 0) return out;  // nothing to scan; with T == 0 the bootstrap is still checked below
  auto flags = make_flags(r);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "discounted_returns_cuda", [&] {
    returns_kernel<scalar_t><<<num_blocks(N), kThreads, 0, stream>>>(
        r.data_ptr<scalar_t>(), d.data_ptr<bool>(), boot ? boot->data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), T, N, gamma, flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_finite_flag(!read_flags(flags).non_finite,
                    bootstrap ? "rewards` or `bootstrap" : "rewards");
  return out;
}

at::Tensor gae_cuda(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& dones,
                    const at::Tensor& last_values, double gamma, double lam) {
  check_gae_inputs(rewards, values, dones, last_values, gamma, lam);
  check_cuda(rewards, "rewards");
  const c10::cuda::OptionalCUDAGuard guard(rewards.device());
  const auto r = rewards.contiguous();
  const auto v = values.contiguous();
  const auto d = dones.contiguous();
  const auto last = last_values.contiguous();
  auto out = at::empty_like(r);
  const int64_t T = r.size(0), N = r.size(1);
  if (N == 0) return out;
  auto flags = make_flags(r);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gae_cuda", [&] {
    gae_kernel<scalar_t><<<num_blocks(N), kThreads, 0, stream>>>(
        r.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), d.data_ptr<bool>(),
        last.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), T, N, gamma, lam,
        flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_finite_flag(!read_flags(flags).non_finite, "rewards`, `values` or `last_values");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CUDA, m) {
  m.impl("discounted_returns", &discounted_returns_cuda);
  m.impl("gae", &gae_cuda);
}

}  // namespace pylander
