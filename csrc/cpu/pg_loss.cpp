// Weighted log-prob objective  loss = reduce_i(-w_i * log_softmax(z_i)[a_i])  and its gradient
// with respect to the logits, computed row by row without materialising log_softmax.
// Also the mean entropy of the rows, so an entropy bonus costs no extra pass.
//
// Rows are processed in blocks so that the exps (and the forward's logs) run as vectorised
// array passes (fast_math.h). With s_j = z_j - max, e_j = exp(s_j), S = sum_j e_j and
// W = sum_j e_j s_j (<= 0):
//   log p_j = s_j - log S,   H = log S - W / S   (two non-negative terms: no cancellation),
//   log p_j + H = s_j - W / S, so the backward pass needs no log at all.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

constexpr int64_t kRowsPerThread = 4096;
constexpr int64_t kBlockElements = 2048;  // logits per block: the buffers stay in L1/L2

// Work buffers for one block of rows, allocated once per chunk.
struct Block {
  explicit Block(int64_t A)
      : rows(std::max<int64_t>(1, kBlockElements / A)), shifted(rows * A), e(rows * A),
        row_a(rows), row_b(rows) {}
  int64_t rows;
  std::vector<double> shifted, e, row_a, row_b;
};

// Fills block.shifted with z - max(row) and block.e with its exp for rows [i0, i0 + rows).
template <typename scalar_t>
bool shifted_exps(const scalar_t* z, int64_t A, int64_t i0, int64_t rows, Block& block) {
  bool finite = true;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* zi = z + (i0 + r) * A;
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < A; ++j) {
      const double zj = static_cast<double>(zi[j]);
      finite &= std::isfinite(zj);
      max = zj > max ? zj : max;
    }
    double* s = block.shifted.data() + r * A;
    for (int64_t j = 0; j < A; ++j) s[j] = static_cast<double>(zi[j]) - max;
  }
  std::memcpy(block.e.data(), block.shifted.data(), sizeof(double) * rows * A);
  fast_math::exp_nonpositive(block.e.data(), rows * A);
  return finite;
}

// S = sum_j e_j and W = sum_j e_j (z_j - max) of row r, with e_j = exp(z_j - max).
inline std::pair<double, double> row_sums(const Block& block, int64_t r, int64_t A) {
  const double* e = block.e.data() + r * A;
  const double* sh = block.shifted.data() + r * A;
  double sum = 0.0, weighted = 0.0;
  for (int64_t j = 0; j < A; ++j) {
    sum += e[j];
    weighted += e[j] * sh[j];
  }
  return {sum, weighted};
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
  Block block(A);
  for (int64_t b = i0; b < i1; b += block.rows) {
    const int64_t rows = std::min(block.rows, i1 - b);
    s.finite &= shifted_exps(z, A, b, rows, block);
    double* log_sum = block.row_a.data();
    double* mean_shift = block.row_b.data();  // W / S
    for (int64_t r = 0; r < rows; ++r) {
      const auto [sum, weighted] = row_sums(block, r, A);
      log_sum[r] = sum;
      mean_shift[r] = weighted / sum;
    }
    fast_math::log_positive(log_sum, rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      s.finite &= std::isfinite(static_cast<double>(w[i]));
      const int64_t ai = a[i];
      if (ai < 0 || ai >= A) {
        s.actions_ok = false;
        continue;
      }
      s.loss -= static_cast<double>(w[i]) * (block.shifted[r * A + ai] - log_sum[r]);
      s.entropy += log_sum[r] - mean_shift[r];
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
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      // Chunks are fixed-size, so the sum below is the same whatever the thread count.
      for (int64_t c0 = i0; c0 < i1; c0 += kRowsPerThread) {
        partial[c0 / kRowsPerThread] =
            pg_forward_rows(zp, ap, wp, A, c0, std::min(c0 + kRowsPerThread, i1));
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
    // Written directly: two 0-d fill_ calls would cost two more trips through the dispatcher.
    *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(total.loss / scale);
    *entropy.data_ptr<scalar_t>() = static_cast<scalar_t>(B > 0 ? total.entropy / B : 0.0);
  });
  return {loss, entropy};
}

// d loss / d z_ij   = -(w_i / scale) * (onehot(a_i)_j - p_ij)
// d entropy / d z_ij = -(p_ij / B) * (log p_ij + H_i) = -(p_ij / B) * (s_ij - W_i / S_i)
template <typename scalar_t>
void pg_backward_rows(const scalar_t* z, const int64_t* a, const scalar_t* w, scalar_t* gz,
                      int64_t A, double g_loss, double g_entropy, int64_t i0, int64_t i1,
                      bool& finite, bool& actions_ok) {
  Block block(A);
  for (int64_t b = i0; b < i1; b += block.rows) {
    const int64_t rows = std::min(block.rows, i1 - b);
    finite &= shifted_exps(z, A, b, rows, block);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      const int64_t ai = a[i];
      if (ai < 0 || ai >= A) {
        actions_ok = false;
        continue;
      }
      const double* e = block.e.data() + r * A;
      const double* sh = block.shifted.data() + r * A;
      const auto [sum, weighted] = row_sums(block, r, A);
      const double inv_sum = 1.0 / sum;
      const double mean_shift = weighted * inv_sum;
      const double coef = -g_loss * static_cast<double>(w[i]);
      scalar_t* gi = gz + i * A;
      for (int64_t j = 0; j < A; ++j) {
        const double p = e[j] * inv_sum;
        const double onehot = j == ai ? 1.0 : 0.0;
        gi[j] = static_cast<scalar_t>(coef * (onehot - p) - g_entropy * p * (sh[j] - mean_shift));
      }
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
  auto grad = at::empty_like(z, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_backward_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    std::vector<char> finite(B + 1, 1), actions_ok(B + 1, 1);
    at::parallel_for(0, B, kRowsPerThread, [&](int64_t i0, int64_t i1) {
      bool f = true, ok = true;
      pg_backward_rows(zp, ap, wp, gp, A, g_loss, g_entropy, i0, i1, f, ok);
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
