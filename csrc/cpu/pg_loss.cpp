// Weighted log-prob objective  loss = reduce_i(-w_i * log_softmax(z_i)[a_i])  and its gradient
// with respect to the logits, computed row by row without materialising log_softmax.
// Also the mean entropy of the rows, so an entropy bonus costs no extra pass. With old
// log-probabilities and clip_coef > 0 the objective is PPO's clipped surrogate (surrogate.h):
// the same passes, with w_i replaced by the row's effective weight in the gradient.
//
// Rows are processed in blocks so that the exps (and the forward's logs) run as vectorised
// array passes (fast_math.h). With s_j = z_j - max, e_j = exp(s_j), S = sum_j e_j and
// W = sum_j e_j s_j (<= 0):
//   log p_j = s_j - log S,   H = log S - W / S   (two non-negative terms: no cancellation),
//   log p_j + H = s_j - W / S, so the plain loss's backward needs no log.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../surrogate.h"
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

// Input problems seen in a chunk of rows, reported once every chunk is done.
struct Flags {
  bool finite = true;      // logits (and, in the forward, weights)
  bool old_finite = true;  // old_log_probs, when clipping
  bool actions_ok = true;

  void merge(const Flags& other) {
    finite &= other.finite;
    old_finite &= other.old_finite;
    actions_ok &= other.actions_ok;
  }

  void check(const char* finite_name, int64_t A) const {
    check_finite_flag(finite, finite_name);
    check_actions_flag(actions_ok, A);
    check_finite_flag(old_finite, "old_log_probs");
  }
};

// The clipped surrogate's inputs (surrogate.h); `old` is null when clipping is off.
template <typename scalar_t>
struct Clip {
  const scalar_t* old = nullptr;
  ClipRange range{1.0, 1.0};
};

// Row i's term of -loss and the weight its gradient is scaled by, given log pi(a_i|s_i). With
// clipping off these are w log pi and w, as before the surrogate existed.
template <typename scalar_t>
SurrogateTerm row_term(const Clip<scalar_t>& clip, double w, double log_prob, int64_t i,
                       Flags& flags) {
  if (clip.old == nullptr) return {w * log_prob, w, false};
  const double old = static_cast<double>(clip.old[i]);
  flags.old_finite &= std::isfinite(old);
  return surrogate_term(w, log_prob, old, clip.range);
}

// Fills block.row_a with log S and block.row_b with W / S for the block's first `rows` rows.
void log_sums(Block& block, int64_t rows, int64_t A) {
  for (int64_t r = 0; r < rows; ++r) {
    const auto [sum, weighted] = row_sums(block, r, A);
    block.row_a[r] = sum;
    block.row_b[r] = weighted / sum;
  }
  fast_math::log_positive(block.row_a.data(), rows);
}

int64_t num_chunks(int64_t B) { return (B + kRowsPerThread - 1) / kRowsPerThread; }

// Calls f(chunk, row_begin, row_end) for fixed chunks of kRowsPerThread rows, in parallel. The
// chunks do not depend on the thread count, so neither do sums of per-chunk partials.
template <typename F>
void for_each_chunk(int64_t B, const F& f) {
  at::parallel_for(0, num_chunks(B), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      f(c, c * kRowsPerThread, std::min(B, (c + 1) * kRowsPerThread));
    }
  });
}

struct RowStats {
  double loss = 0.0;
  double entropy = 0.0;
  int64_t clipped = 0;
  Flags flags;
};

template <typename scalar_t>
RowStats pg_forward_rows(const scalar_t* z, const int64_t* a, const scalar_t* w,
                         const Clip<scalar_t>& clip, int64_t A, int64_t i0, int64_t i1) {
  RowStats s;
  Block block(A);
  for (int64_t b = i0; b < i1; b += block.rows) {
    const int64_t rows = std::min(block.rows, i1 - b);
    s.flags.finite &= shifted_exps(z, A, b, rows, block);
    log_sums(block, rows, A);
    const double* log_sum = block.row_a.data();
    const double* mean_shift = block.row_b.data();  // W / S
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      const double wi = static_cast<double>(w[i]);
      s.flags.finite &= std::isfinite(wi);
      const int64_t ai = a[i];
      if (ai < 0 || ai >= A) {
        s.flags.actions_ok = false;
        continue;
      }
      const auto term = row_term(clip, wi, block.shifted[r * A + ai] - log_sum[r], i, s.flags);
      s.loss -= term.objective;
      s.clipped += term.clipped;
      s.entropy += log_sum[r] - mean_shift[r];
    }
  }
  return s;
}

// The surrogate's inputs as the kernels read them: `old` stays empty when clipping is off.
at::Tensor contiguous_old_log_probs(const std::optional<at::Tensor>& old_log_probs,
                                    double clip_coef) {
  return clip_coef > 0.0 ? old_log_probs->contiguous() : at::Tensor();
}

template <typename scalar_t>
Clip<scalar_t> make_clip(const at::Tensor& old, double clip_coef) {
  if (!old.defined()) return {};
  return {old.data_ptr<scalar_t>(), {1.0 - clip_coef, 1.0 + clip_coef}};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pg_loss_cpu(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& weights,
    c10::string_view reduction, const std::optional<at::Tensor>& old_log_probs,
    double clip_coef) {
  check_pg_inputs(logits, actions, weights);
  check_clip_inputs(logits, old_log_probs, clip_coef);
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = contiguous_old_log_probs(old_log_probs, clip_coef);
  auto loss = at::empty({}, z.options());
  auto entropy = at::empty({}, z.options());
  auto clip_fraction = at::empty({}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_cpu", [&] {
    std::vector<RowStats> partial(num_chunks(B));
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const auto clip = make_clip<scalar_t>(old, clip_coef);
    for_each_chunk(B, [&](int64_t c, int64_t i0, int64_t i1) {
      partial[c] = pg_forward_rows(zp, ap, wp, clip, A, i0, i1);
    });
    RowStats total;
    for (const auto& p : partial) {
      total.loss += p.loss;
      total.entropy += p.entropy;
      total.clipped += p.clipped;
      total.flags.merge(p.flags);
    }
    total.flags.check("logits` or `weights", A);
    // Written directly: 0-d fill_ calls would cost more trips through the dispatcher.
    const double rows = static_cast<double>(std::max<int64_t>(B, 1));
    *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(total.loss / scale);
    *entropy.data_ptr<scalar_t>() = static_cast<scalar_t>(B > 0 ? total.entropy / B : 0.0);
    *clip_fraction.data_ptr<scalar_t>() = static_cast<scalar_t>(total.clipped / rows);
  });
  return {loss, entropy, clip_fraction};
}

// d loss / d z_ij   = -(w_i / scale) * (onehot(a_i)_j - p_ij), with w_i the effective weight
// d entropy / d z_ij = -(p_ij / B) * (log p_ij + H_i) = -(p_ij / B) * (s_ij - W_i / S_i)
template <typename scalar_t>
Flags pg_backward_rows(const scalar_t* z, const int64_t* a, const scalar_t* w,
                       const Clip<scalar_t>& clip, scalar_t* gz, int64_t A, double g_loss,
                       double g_entropy, int64_t i0, int64_t i1) {
  Flags flags;
  Block block(A);
  for (int64_t b = i0; b < i1; b += block.rows) {
    const int64_t rows = std::min(block.rows, i1 - b);
    flags.finite &= shifted_exps(z, A, b, rows, block);
    // The ratio needs log pi(a|s), computed exactly as the forward did, so that both passes clip
    // the same rows; the plain loss's gradient needs no log at all.
    if (clip.old != nullptr) log_sums(block, rows, A);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b + r;
      const int64_t ai = a[i];
      if (ai < 0 || ai >= A) {
        flags.actions_ok = false;
        continue;
      }
      const double* e = block.e.data() + r * A;
      const double* sh = block.shifted.data() + r * A;
      const auto [sum, weighted] = row_sums(block, r, A);
      const double inv_sum = 1.0 / sum;
      const double mean_shift = weighted * inv_sum;
      double weight = static_cast<double>(w[i]);
      if (clip.old != nullptr) {
        weight = row_term(clip, weight, sh[ai] - block.row_a[r], i, flags).weight;
      }
      const double coef = -g_loss * weight;
      scalar_t* gi = gz + i * A;
      for (int64_t j = 0; j < A; ++j) {
        const double p = e[j] * inv_sum;
        const double onehot = j == ai ? 1.0 : 0.0;
        gi[j] = static_cast<scalar_t>(coef * (onehot - p) - g_entropy * p * (sh[j] - mean_shift));
      }
    }
  }
  return flags;
}

at::Tensor pg_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_entropy,
                                const at::Tensor& logits, const at::Tensor& actions,
                                const at::Tensor& weights, c10::string_view reduction,
                                const std::optional<at::Tensor>& old_log_probs,
                                double clip_coef) {
  check_pg_inputs(logits, actions, weights);
  check_clip_inputs(logits, old_log_probs, clip_coef);
  TORCH_CHECK(grad_loss.numel() == 1 && grad_entropy.numel() == 1,
              "pylander: pg_loss_backward expects scalar `grad_loss` and `grad_entropy`");
  const int64_t B = logits.size(0), A = logits.size(1);
  const double scale = reduction_scale(std::string(reduction), B);
  const double g_loss = grad_loss.item<double>() / scale;
  const double g_entropy = B > 0 ? grad_entropy.item<double>() / B : 0.0;
  const auto z = logits.contiguous();
  const auto a = actions.contiguous();
  const auto w = weights.contiguous();
  const auto old = contiguous_old_log_probs(old_log_probs, clip_coef);
  auto grad = at::empty_like(z, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pg_loss_backward_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ap = a.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    const auto clip = make_clip<scalar_t>(old, clip_coef);
    std::vector<Flags> partial(B + 1);  // indexed by the first row of each range
    const auto rows = [&](int64_t i0, int64_t i1) {
      partial[i0] = pg_backward_rows(zp, ap, wp, clip, gp, A, g_loss, g_entropy, i0, i1);
    };
    // fast_math's results can differ in the last bit with an element's position in its array,
    // so a row's log pi(a|s) depends on the blocks it was computed in. Clipping, the forward's
    // chunks make both passes clip exactly the same rows; otherwise the ranges stay those of the
    // plain loss's original backward, whose gradients must not change by a bit.
    if (clip.old != nullptr) {
      for_each_chunk(B, [&](int64_t, int64_t i0, int64_t i1) { rows(i0, i1); });
    } else {
      at::parallel_for(0, B, kRowsPerThread, rows);
    }
    Flags all;
    for (const auto& p : partial) all.merge(p);
    all.check("logits", A);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) {
  m.impl("pg_loss", &pg_loss_cpu);
  m.impl("pg_loss_backward", &pg_loss_backward_cpu);
}

}  // namespace pylander
