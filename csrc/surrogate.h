// PPO's clipped surrogate for one row, shared by the CPU and CUDA pg_loss kernels so that both
// decide which rows are clipped with the same arithmetic.
//
// With r = exp(log pi(a|s) - log pi_old(a|s)) and advantage (weight) w, the row's objective is
// min(r w, clip(r, 1 - eps, 1 + eps) w). It equals the constant clip(r) w exactly when r has left
// [1 - eps, 1 + eps] in the direction w favours (r > 1 + eps with w > 0, r < 1 - eps with
// w < 0), and r w otherwise. As d r / d z = r d log pi / d z, its gradient is that of the plain
// objective w log pi with w replaced by the effective weight: 0 for a clipped row, r w otherwise.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define PYLANDER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYLANDER_HOST_DEVICE inline
#endif

namespace pylander {

struct ClipRange {
  double low;   // 1 - clip_coef
  double high;  // 1 + clip_coef
};

struct SurrogateTerm {
  double objective;  // the row's term of -loss
  double weight;     // effective weight: d objective / d log pi(a|s)
  bool clipped;
};

PYLANDER_HOST_DEVICE SurrogateTerm surrogate_term(double weight, double log_prob,
                                                  double old_log_prob, ClipRange range) {
  const double ratio = std::exp(log_prob - old_log_prob);
  if (ratio > range.high && weight > 0.0) return {weight * range.high, 0.0, true};
  if (ratio < range.low && weight < 0.0) return {weight * range.low, 0.0, true};
  return {weight * ratio, weight * ratio, false};
}

}  // namespace pylander
