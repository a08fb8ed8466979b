// Reverse-time scans over a [T, N] rollout: discounted returns and GAE advantages.
// Each env column is independent, so columns are split across threads; within a chunk the
// inner loop runs over contiguous env columns so it vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../checks.h"

namespace pylander {
namespace {

// Enough work per thread that small rollouts (the common case) stay on one thread.
constexpr int64_t kElementsPerThread = 1 << 15;

int64_t column_grain(int64_t T) { return std::max<int64_t>(1, kElementsPerThread / std::max<int64_t>(T, 1)); }

// Running sums are kept in double: a float32 scan over a long horizon otherwise drifts by
// ~1e-5 relative from the exact value.
using acc_t = double;

template <typename scalar_t>
bool returns_kernel(const scalar_t* r, const bool* d, const scalar_t* boot, scalar_t* out,
                    int64_t T, int64_t N, acc_t gamma, int64_t n0, int64_t n1) {
  std::vector<acc_t> running(n1 - n0);
  bool finite = true;
  for (int64_t n = n0; n < n1; ++n) {
    running[n - n0] = boot ? boot[n] : acc_t(0);
    finite &= std::isfinite(running[n - n0]);
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * N;
    for (int64_t n = n0; n < n1; ++n) {
      const acc_t reward = r[row + n];
      finite &= std::isfinite(reward);
      const acc_t next = d[row + n] ? acc_t(0) : running[n - n0];
      running[n - n0] = reward + gamma * next;
      out[row + n] = static_cast<scalar_t>(running[n - n0]);
    }
  }
  return finite;
}

template <typename scalar_t>
bool gae_kernel(const scalar_t* r, const scalar_t* v, const bool* d, const scalar_t* last,
                scalar_t* out, int64_t T, int64_t N, acc_t gamma, acc_t lam, int64_t n0,
                int64_t n1) {
  std::vector<acc_t> next_value(last + n0, last + n1);
  std::vector<acc_t> next_adv(n1 - n0, acc_t(0));
  bool finite = true;
  for (int64_t n = n0; n < n1; ++n) finite &= std::isfinite(last[n]);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * N;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t i = n - n0;
      const acc_t reward = r[row + n];
      const acc_t value = v[row + n];
      finite &= std::isfinite(reward) && std::isfinite(value);
      const acc_t live = d[row + n] ? acc_t(0) : acc_t(1);
      const acc_t delta = reward + gamma * live * next_value[i] - value;
      next_adv[i] = delta + gamma * lam * live * next_adv[i];
      next_value[i] = value;
      out[row + n] = static_cast<scalar_t>(next_adv[i]);
    }
  }
  return finite;
}

at::Tensor discounted_returns_cpu(const at::Tensor& rewards, const at::Tensor& dones, double gamma,
                                  const std::optional<at::Tensor>& bootstrap) {
  check_returns_inputs(rewards, dones, gamma);
  TORCH_CHECK(rewards.device().is_cpu(), "pylander: `rewards` must be on the CPU here");
  if (bootstrap) check_env_vector(*bootstrap, rewards, "bootstrap");
  const auto r = rewards.contiguous();
  const auto d = dones.contiguous();
  const auto boot = bootstrap ? std::optional<at::Tensor>(bootstrap->contiguous()) : std::nullopt;
  auto out = at::empty_like(r);
  const int64_t T = r.size(0), N = r.size(1);
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "discounted_returns_cpu", [&] {
    std::vector<char> chunk_finite(N + 1, 1);
    at::parallel_for(0, N, column_grain(T), [&](int64_t n0, int64_t n1) {
      chunk_finite[n0] = returns_kernel<scalar_t>(
          r.data_ptr<scalar_t>(), d.data_ptr<bool>(), boot ? boot->data_ptr<scalar_t>() : nullptr,
          out.data_ptr<scalar_t>(), T, N, gamma, n0, n1);
    });
    for (char ok : chunk_finite) finite &= ok != 0;
  });
  check_finite_flag(finite, bootstrap ? "rewards` or `bootstrap" : "rewards");
  return out;
}

at::Tensor gae_cpu(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& dones,
                   const at::Tensor& last_values, double gamma, double lam) {
  check_gae_inputs(rewards, values, dones, last_values, gamma, lam);
  TORCH_CHECK(rewards.device().is_cpu(), "pylander: `rewards` must be on the CPU here");
  const auto r = rewards.contiguous();
  const auto v = values.contiguous();
  const auto d = dones.contiguous();
  const auto last = last_values.contiguous();
  auto out = at::empty_like(r);
  const int64_t T = r.size(0), N = r.size(1);
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gae_cpu", [&] {
    std::vector<char> chunk_finite(N + 1, 1);
    at::parallel_for(0, N, column_grain(T), [&](int64_t n0, int64_t n1) {
      chunk_finite[n0] = gae_kernel<scalar_t>(
          r.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), d.data_ptr<bool>(),
          last.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), T, N, gamma, lam, n0, n1);
    });
    for (char ok : chunk_finite) finite &= ok != 0;
  });
  check_finite_flag(finite, "rewards`, `values` or `last_values");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) {
  m.impl("discounted_returns", &discounted_returns_cpu);
  m.impl("gae", &gae_cpu);
}

}  // namespace pylander
