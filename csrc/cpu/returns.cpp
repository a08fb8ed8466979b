// Reverse-time scans over a [T, N] rollout: discounted returns and GAE advantages.
// Each env column is independent, so columns are split across threads; within a chunk the
// inner loop runs over contiguous env columns so it vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "../checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

// Enough work per thread that small rollouts (the common case) stay on one thread.
constexpr int64_t kElementsPerThread = 1 << 15;

int64_t column_grain(int64_t T) { return std::max<int64_t>(1, kElementsPerThread / std::max<int64_t>(T, 1)); }

// Running sums are kept in double: a float32 scan over a long horizon otherwise drifts by
// ~1e-5 relative from the exact value.
using acc_t = double;

// Bit patterns of a float type's exponent field, to test finiteness with integer operations
// (an integer OR-reduction vectorises; a floating-point test would leave a branch).
template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  using type = uint32_t;
  static constexpr type exponent = 0x7f800000u;
};
template <>
struct FloatBits<double> {
  using type = uint64_t;
  static constexpr type exponent = 0x7ff0000000000000ull;
};

template <typename T>
inline bool not_finite(T value) {
  typename FloatBits<T>::type bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & FloatBits<T>::exponent) == FloatBits<T>::exponent;
}

// Branch-free so that the loop over env columns vectorises (built for AVX-512, AVX2 and the
// baseline ISA, picked at load time): R = r + (gamma * (1 - done)) * R, exactly the value of
// r + gamma * (done ? 0 : R) for finite input.
template <typename scalar_t>
PYLANDER_TARGET_CLONES bool returns_kernel(const scalar_t* __restrict r,
                                           const uint8_t* __restrict d,
                                           const scalar_t* __restrict boot,
                                           scalar_t* __restrict out, int64_t T, int64_t N,
                                           acc_t gamma, int64_t n0, int64_t n1) {
  std::vector<acc_t> buffer(n1 - n0);
  acc_t* __restrict running = buffer.data();
  bool finite = true;
  for (int64_t n = n0; n < n1; ++n) {
    running[n - n0] = boot ? boot[n] : acc_t(0);
    finite &= std::isfinite(running[n - n0]);
  }
  uint32_t bad = 0;
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict rt = r + t * N + n0;
    const uint8_t* __restrict dt = d + t * N + n0;
    scalar_t* __restrict ot = out + t * N + n0;
    for (int64_t i = 0; i < n1 - n0; ++i) {
      const scalar_t reward = rt[i];
      bad |= not_finite(reward);
      const acc_t discount = gamma * static_cast<acc_t>(1 - dt[i]);
      running[i] = static_cast<acc_t>(reward) + discount * running[i];
      ot[i] = static_cast<scalar_t>(running[i]);
    }
  }
  return finite && bad == 0;
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
          r.data_ptr<scalar_t>(), reinterpret_cast<const uint8_t*>(d.data_ptr<bool>()),
          boot ? boot->data_ptr<scalar_t>() : nullptr,
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
