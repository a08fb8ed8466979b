// The row passes of the weighted log-prob loss and PPO's clipped surrogate (csrc/cpu/pg_loss.cpp
// has the math): its forward statistics and its gradient with respect to the logits, over rows
// [i0, i1) of row-major [B, A] logits. Shared by the CPU kernels of pg_loss and
// actor_critic_grads, so both compute every row the same way.
//
// Internal linkage, as fast_math's and mlp_loops' helpers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../surrogate.h"
#include "fast_math.h"

namespace pylander {
namespace {

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
inline void log_sums(Block& block, int64_t rows, int64_t A) {
  for (int64_t r = 0; r < rows; ++r) {
    const auto [sum, weighted] = row_sums(block, r, A);
    block.row_a[r] = sum;
    block.row_b[r] = weighted / sum;
  }
  fast_math::log_positive(block.row_a.data(), rows);
}

// out[r, j] = log_softmax(z[r])_j for rows [0, n): log pi exactly as the loss's passes compute
// it (z - max - log S, in double), rounded to scalar_t. A row holding a NaN or +inf logit comes
// out all NaN, as log_softmax gives NaN there too (the exp above would clamp some NaNs to 0).
template <typename scalar_t>
void log_softmax_rows(const scalar_t* z, int64_t A, int64_t n, scalar_t* out) {
  Block block(A);
  for (int64_t b = 0; b < n; b += block.rows) {
    const int64_t rows = std::min(block.rows, n - b);
    shifted_exps(z, A, b, rows, block);
    log_sums(block, rows, A);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* zi = z + (b + r) * A;
      const bool bad = std::any_of(zi, zi + A, [](scalar_t x) {
        return std::isnan(x) || x == std::numeric_limits<scalar_t>::infinity();
      });
      for (int64_t j = 0; j < A; ++j) {
        out[(b + r) * A + j] =
            bad ? std::numeric_limits<scalar_t>::quiet_NaN()
                : static_cast<scalar_t>(block.shifted[r * A + j] - block.row_a[r]);
      }
    }
  }
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

}  // namespace
}  // namespace pylander
