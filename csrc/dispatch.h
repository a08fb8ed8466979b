// pylander's own ops as typed dispatcher handles, for kernels built on them (the composite MLP
// ops, the CPU policy_sample). Calling through the dispatcher picks each device's kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace pylander {
namespace dispatch {

inline std::tuple<at::Tensor, at::Tensor> sample_categorical(
    const at::Tensor& logits, const std::optional<at::Generator>& generator) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pylander::sample_categorical", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                    const std::optional<at::Generator>&)>();
  return op.call(logits, generator);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> pg_loss(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& weights,
    c10::string_view reduction, const std::optional<at::Tensor>& old_log_probs,
    double clip_coef) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pylander::pg_loss", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 c10::string_view, const std::optional<at::Tensor>&, double)>();
  return op.call(logits, actions, weights, reduction, old_log_probs, clip_coef);
}

inline at::Tensor pg_loss_backward(const at::Tensor& grad_loss, const at::Tensor& grad_entropy,
                                   const at::Tensor& logits, const at::Tensor& actions,
                                   const at::Tensor& weights, c10::string_view reduction,
                                   const std::optional<at::Tensor>& old_log_probs,
                                   double clip_coef) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pylander::pg_loss_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, c10::string_view,
                            const std::optional<at::Tensor>&, double)>();
  return op.call(grad_loss, grad_entropy, logits, actions, weights, reduction, old_log_probs,
                 clip_coef);
}

}  // namespace dispatch
}  // namespace pylander
