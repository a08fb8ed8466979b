// Input validation shared by every device's kernels, so CPU and CUDA reject bad input with the
// same messages. Shape/dtype/device problems raise RuntimeError; bad values raise ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

namespace pylander {

// Numbers and shapes in messages are formatted here, never streamed into TORCH_CHECK: built with
// GCC 13.3 against torch 2.11+cu130, this module crashed (SIGSEGV) formatting a number through
// TORCH_CHECK's ostream, while messages made of strings alone worked (README, GPU section).
inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

inline std::string shape(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + num(sizes[i]);
  return out + "]";
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "pylander: `", name, "` must be float32 or float64, got ", t.scalar_type());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* name) {
  TORCH_CHECK(t.scalar_type() == want, "pylander: `", name, "` must be ", want, ", got ",
              t.scalar_type());
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == rank, "pylander: `", name, "` must have shape ", layout, " (",
              num(rank), " dims), got ", shape(t.sizes()));
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& ref, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "pylander: `", name, "` must have the shape of `",
              ref_name, "` ", shape(ref.sizes()), ", got ", shape(t.sizes()));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "pylander: `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device(), "; move them to the same device");
}

inline void check_unit_interval(double value, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0.0 && value <= 1.0, "pylander: `", name,
                    "` must be in [0, 1], got ", num(value));
}

inline void check_finite_flag(bool all_finite, const char* name) {
  TORCH_CHECK_VALUE(all_finite, "pylander: `", name, "` contains NaN or infinity");
}

inline void check_actions_flag(bool in_range, int64_t num_actions) {
  TORCH_CHECK_VALUE(in_range, "pylander: `actions` must lie in [0, ", num(num_actions), ")");
}

// Returns the divisor the loss is scaled by: 1 for "sum", the batch size for "mean".
inline double reduction_scale(const std::string& reduction, int64_t batch) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum",
                    "pylander: `reduction` must be \"mean\" or \"sum\", got \"", reduction, "\"");
  return reduction == "mean" ? static_cast<double>(batch > 0 ? batch : 1) : 1.0;
}

inline void check_returns_inputs(const at::Tensor& rewards, const at::Tensor& dones, double gamma) {
  check_float(rewards, "rewards");
  check_rank(rewards, 2, "rewards", "[T, N]");
  check_dtype(dones, at::kBool, "dones");
  check_same_shape(dones, rewards, "dones", "rewards");
  check_same_device(dones, rewards, "dones", "rewards");
  check_unit_interval(gamma, "gamma");
}

// A per-env vector [N] matching the last dimension of `rewards`, e.g. bootstrap or last_values.
inline void check_env_vector(const at::Tensor& t, const at::Tensor& rewards, const char* name) {
  check_dtype(t, rewards.scalar_type(), name);
  check_rank(t, 1, name, "[N]");
  TORCH_CHECK(t.size(0) == rewards.size(1), "pylander: `", name, "` must have N=",
              num(rewards.size(1)), " entries (one per env column of `rewards`), got ",
              num(t.size(0)));
  check_same_device(t, rewards, name, "rewards");
}

inline void check_gae_inputs(const at::Tensor& rewards, const at::Tensor& values,
                             const at::Tensor& dones, const at::Tensor& last_values, double gamma,
                             double lam) {
  check_returns_inputs(rewards, dones, gamma);
  check_unit_interval(lam, "lam");
  check_dtype(values, rewards.scalar_type(), "values");
  check_same_shape(values, rewards, "values", "rewards");
  check_same_device(values, rewards, "values", "rewards");
  check_env_vector(last_values, rewards, "last_values");
}

inline void check_logits(const at::Tensor& logits) {
  check_float(logits, "logits");
  check_rank(logits, 2, "logits", "[B, A]");
  TORCH_CHECK(logits.size(1) > 0, "pylander: `logits` needs at least one action (A > 0)");
}

inline void check_pg_inputs(const at::Tensor& logits, const at::Tensor& actions,
                            const at::Tensor& weights) {
  check_logits(logits);
  check_dtype(actions, at::kLong, "actions");
  check_rank(actions, 1, "actions", "[B]");
  check_dtype(weights, logits.scalar_type(), "weights");
  check_rank(weights, 1, "weights", "[B]");
  TORCH_CHECK(actions.size(0) == logits.size(0) && weights.size(0) == logits.size(0),
              "pylander: `actions` and `weights` must have B=", num(logits.size(0)),
              " entries (one per row of `logits`), got ", num(actions.size(0)), " and ",
              num(weights.size(0)));
  check_same_device(actions, logits, "actions", "logits");
  check_same_device(weights, logits, "weights", "logits");
}

// The clipped surrogate's options: `clip_coef` 0 turns it off (then `old_log_probs`, if given,
// is checked but unused); above 0 it needs one old log-probability per row of `logits`.
inline void check_clip_inputs(const at::Tensor& logits,
                              const std::optional<at::Tensor>& old_log_probs, double clip_coef) {
  TORCH_CHECK_VALUE(std::isfinite(clip_coef) && clip_coef >= 0.0,
                    "pylander: `clip_coef` must be a finite number >= 0 (0 turns clipping off), "
                    "got ", num(clip_coef));
  if (old_log_probs.has_value()) {
    const at::Tensor& old = *old_log_probs;
    check_dtype(old, logits.scalar_type(), "old_log_probs");
    check_rank(old, 1, "old_log_probs", "[B]");
    TORCH_CHECK(old.size(0) == logits.size(0), "pylander: `old_log_probs` must have B=",
                num(logits.size(0)), " entries (one per row of `logits`), got ",
                num(old.size(0)));
    check_same_device(old, logits, "old_log_probs", "logits");
  }
  TORCH_CHECK_VALUE(clip_coef == 0.0 || old_log_probs.has_value(),
                    "pylander: `clip_coef` > 0 needs `old_log_probs` (log pi_old(a_i|s_i), [B])");
}

// clip_grad_norms_: groups that cover `grads` exactly, float gradients on one device.
inline void check_clip_grad_norms_inputs(at::TensorList grads, at::IntArrayRef group_sizes,
                                         double max_norm) {
  TORCH_CHECK_VALUE(std::isfinite(max_norm) && max_norm > 0.0,
                    "pylander: `max_norm` must be positive and finite, got ", num(max_norm));
  TORCH_CHECK_VALUE(!group_sizes.empty(), "pylander: `group_sizes` must name at least one group");
  int64_t total = 0;
  for (const auto size : group_sizes) {
    TORCH_CHECK_VALUE(size > 0, "pylander: every group in `group_sizes` must hold at least one "
                      "gradient, got ", num(size));
    total += size;
  }
  TORCH_CHECK_VALUE(total == static_cast<int64_t>(grads.size()), "pylander: `group_sizes` add up "
                    "to ", num(total), " gradients, but ", num(static_cast<int64_t>(grads.size())),
                    " were given");
  for (const auto& grad : grads) {
    check_float(grad, "grads");
    check_same_device(grad, grads[0], "grads", "grads[0]");
  }
}

}  // namespace pylander
