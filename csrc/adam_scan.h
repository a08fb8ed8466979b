// Host-side parts of adam_scan shared by the CPU and CUDA kernels: input validation and the
// per-step scalars, computed exactly as torch.optim.Adam computes them (in double, from Python
// floats) and rounded once to the parameter dtype, as torch's ops round their Scalar arguments.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "checks.h"

namespace pylander {

inline void check_adam_scan_inputs(const at::Tensor& param, const at::Tensor& grads,
                                   const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                                   int64_t step, double lr, double beta1, double beta2,
                                   double eps) {
  check_float(param, "param");
  check_rank(param, 1, "param", "[P]");
  check_dtype(grads, param.scalar_type(), "grads");
  check_rank(grads, 2, "grads", "[T, P]");
  TORCH_CHECK(grads.size(1) == param.size(0), "pylander: `grads` must have P=",
              num(param.size(0)), " columns (one per entry of `param`), got ",
              num(grads.size(1)));
  for (const auto& [t, name] : {std::pair{&exp_avg, "exp_avg"}, {&exp_avg_sq, "exp_avg_sq"}}) {
    check_dtype(*t, param.scalar_type(), name);
    check_same_shape(*t, param, name, "param");
    check_same_device(*t, param, name, "param");
  }
  check_same_device(grads, param, "grads", "param");
  TORCH_CHECK_VALUE(step >= 0, "pylander: `step` (Adam steps already taken) must be >= 0, got ",
                    num(step));
  // The ranges torch.optim.Adam accepts.
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0.0,
                    "pylander: `lr` must be finite and >= 0, got ", num(lr));
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, "pylander: `beta1` must be in [0, 1), got ",
                    num(beta1));
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, "pylander: `beta2` must be in [0, 1), got ",
                    num(beta2));
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0,
                    "pylander: `eps` must be finite and >= 0, got ", num(eps));
}

// Scalars of one Adam step, in the parameter dtype.
template <typename scalar_t>
struct AdamStepScalars {
  scalar_t neg_step_size;    // -lr / (1 - beta1^k)
  scalar_t bias2_sqrt;       // (1 - beta2^k) ** 0.5
};

// The scalars of steps k = step + 1 ... step + T, as torch's _single_tensor_adam derives them
// from the float step count: `beta ** k` and `bc2 ** 0.5` are Python's float pow, i.e. libm's
// pow (deliberately not sqrt, which can differ in the last bit).
template <typename scalar_t>
std::vector<AdamStepScalars<scalar_t>> adam_step_scalars(int64_t step, int64_t T, double lr,
                                                         double beta1, double beta2) {
  std::vector<AdamStepScalars<scalar_t>> out(T);
  for (int64_t t = 0; t < T; ++t) {
    const double k = static_cast<double>(step + t + 1);
    const double bias_correction1 = 1.0 - std::pow(beta1, k);
    const double bias_correction2 = 1.0 - std::pow(beta2, k);
    const double step_size = lr / bias_correction1;
    out[t] = {static_cast<scalar_t>(-step_size),
              static_cast<scalar_t>(std::pow(bias_correction2, 0.5))};
  }
  return out;
}

}  // namespace pylander
