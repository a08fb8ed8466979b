// Weighted log-prob objective  loss = reduce_i(-w_i * log_softmax(z_i)[a_i])  and its gradient
// with respect to the logits, computed row by row without materialising log_softmax.
// Also the mean entropy of the rows, so an entropy bonus costs no extra pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace pylander {
namespace {

constexpr int64_t kRowsPerThread = 4096;

// max and log-sum-exp of one row, in accumulation precision.
template <typename scalar_t>
std::pair<double, double> row_max_lse(const scalar_t* z, int64_t A, bool& finite) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < A; ++j) {
    finite &= std::isfinite(z[j]);
    max = std::max(max, static_cast<double>(z[j]));
  }
  double sum = 0.0;
  for (int64_t j = 0; j < A; ++j) sum += std::exp(static_cast<double>(z[j]) - max);
  return {max, max + std::log(sum)};
}

struct RowStats {
  double loss = 0.0;
  double entropy = 0.0;
  bool finite = true;
  bool actions_ok = true;
};

template <typename scalar_t>
RowStats pg_forward_rows(const scalar_t* z, const int64_t* a, const scalar_t* w, int64_t A,
                         int64_t i0, int64_t i1) {
  RowStats s;
  for (int64_t i = i0; i < i1; ++i) {
    const scalar_t* zi = z + i * A;
    const auto [max, lse] = row_max_lse(zi, A, s.finite);
    s.finite &= std::isfinite(w[i]);
    const int64_t ai = a[i];
    if (ai < 0 || ai >= A) {
      s.actions_ok = false;
      continue;
    }
    s.loss -= static_cast<double>(w[i]) * (static_cast<double>(zi[ai]) - lse);
    // -sum_j p_j log p_j with log p_j formed first: lse - sum_j p_j z_j cancels catastrophically
    // for large logits.
    for (int64_t j = 0; j < A; ++j) {
      const double logp = static_cast<double>(zi[j]) - lse;
      s.entropy -= std::exp(logp) * logp;
    }
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> pg_loss_cpu(const at::Tensor& logits, const at::Tensor& actions,
                                               const at::Tensor& weights,
                                               c10::string_view reduction) {
  check_pg_inputs(logits, actions, weights);
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  auto loss = at::empty({}, z.options());
  auto entropy = at::empty({}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_cpu", [&] {
    const int64_t chunks = (B + kRowsPerThread - 1) / kRowsPerThread;
    std::vector<RowStats> partial(std::max<int64_t>(chunks, 1));
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      // Chunks are fixed-size, so the sum below is the same whatever the thread count.
      for (int64_t c0 = i0; c0 < i1; c0 += kRowsPerThread) {
        partial[c0 / kRowsPerThread] =
            pg_forward_rows(z.data_ptr<scalar_t>(), a.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
                            A, c0, std::min(c0 + kRowsPerThread, i1));
      }
    });
    RowStats total;
    for (const auto& p : partial) {
      total.loss += p.loss;
      total.entropy += p.entropy;
      total.finite &= p.finite;
      total.actions_ok &= p.actions_ok;
    }
    check_finite_flag(total.finite, "logits` or `weights");
    check_actions_flag(total.actions_ok, A);
    loss.fill_(total.loss / scale);
    entropy.fill_(B > 0 ? total.entropy / B : 0.0);
  });
  return {loss, entropy};
}

// d loss / d z_ij   = -(w_i / scale) * (onehot(a_i)_j - p_ij)
// d entropy / d z_ij = -(p_ij / B) * (log p_ij + H_i)
template <typename scalar_t>
void pg_backward_rows(const scalar_t* z, const int64_t* a, const scalar_t* w, scalar_t* gz,
                      int64_t A, double g_loss, double g_entropy, int64_t i0, int64_t i1,
                      bool& finite, bool& actions_ok) {
  std::vector<double> logp(A);
  for (int64_t i = i0; i < i1; ++i) {
    const scalar_t* zi = z + i * A;
    const auto [max, lse] = row_max_lse(zi, A, finite);
    const int64_t ai = a[i];
    if (ai < 0 || ai >= A) {
      actions_ok = false;
      continue;
    }
    double entropy = 0.0;
    for (int64_t j = 0; j < A; ++j) {
      logp[j] = static_cast<double>(zi[j]) - lse;
      entropy -= std::exp(logp[j]) * logp[j];
    }
    const double coef = -g_loss * static_cast<double>(w[i]);
    for (int64_t j = 0; j < A; ++j) {
      const double p = std::exp(logp[j]);
      const double onehot = j == ai ? 1.0 : 0.0;
      gz[i * A + j] = static_cast<scalar_t>(coef * (onehot - p) - g_entropy * p * (logp[j] + entropy));
    }
  }
}

at::Tensor pg_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_entropy,
                                const at::Tensor& logits, const at::Tensor& actions,
                                const at::Tensor& weights, c10::string_view reduction) {
  check_pg_inputs(logits, actions, weights);
  TORCH_CHECK(grad_loss.numel() == 1 && grad_entropy.numel() == 1,
              "pylander: pg_loss_backward expects scalar `grad_loss` and `grad_entropy`");
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const double g_loss = grad_loss.item<double>() / scale;
  const double g_entropy = B > 0 ? grad_entropy.item<double>() / B : 0.0;
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  auto grad = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_backward_cpu", [&] {
    std::vector<char> finite(B + 1, 1), actions_ok(B + 1, 1);
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      bool f = true, ok = true;
      pg_backward_rows(z.data_ptr<scalar_t>(), a.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
                       grad.data_ptr<scalar_t>(), A, g_loss, g_entropy, i0, i1, f, ok);
      finite[i0] = f;
      actions_ok[i0] = ok;
    });
    bool all_finite = true, all_ok = true;
    for (int64_t i = 0; i <= B; ++i) {
      all_finite &= finite[i] != 0;
      all_ok &= actions_ok[i] != 0;
    }
    check_finite_flag(all_finite, "logits");
    check_actions_flag(all_ok, A);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) {
  m.impl("pg_loss", &pg_loss_cpu);
  m.impl("pg_loss_backward", &pg_loss_backward_cpu);
}

}  // namespace pylander
