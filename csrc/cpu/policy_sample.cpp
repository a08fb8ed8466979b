// policy_sample on the CPU: the actor's forward pass for a rollout step's few rows as plain
// loops, then the native sampler. Interleaved with env steps (Python and Box2D, which evict the
// caches), torch's gemm took ~3x as long per call as when called back to back, for matrices this
// small; these loops keep their code and data small. Other devices run the composite kernel
// (csrc/composite/actor_critic.cpp), which this computes up to rounding.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "../mlp_checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

constexpr int64_t kRows = 16;  // rows are padded to a multiple of this (64 bytes of floats)
constexpr int64_t kOuts = 4;   // outputs per block: independent sums, so the FMAs overlap

// yt[o, r] = b[o] + sum_i w[o, i] xt[i, r] for outputs [o0, o0 + Outs) and one 64-byte block of
// rows from r0. Activations are kept transposed ([features, rows]) so that the sums run across
// rows in vector registers (GCC vector extensions: one AVX-512 register, or two AVX2 ones), and
// w is read as nn.Linear stores it.
template <typename scalar_t, int64_t Outs>
__attribute__((always_inline)) inline void linear_block(const scalar_t* xt, const scalar_t* w,
                                                       const scalar_t* b, int64_t in,
                                                       int64_t rows, int64_t o0, int64_t r0,
                                                       scalar_t* yt) {
  typedef scalar_t vec __attribute__((vector_size(64)));
  vec acc[Outs];
  for (int64_t k = 0; k < Outs; ++k) acc[k] = vec{} + b[o0 + k];
  for (int64_t i = 0; i < in; ++i) {
    vec x;
    std::memcpy(&x, xt + i * rows + r0, sizeof x);
    for (int64_t k = 0; k < Outs; ++k) acc[k] += w[(o0 + k) * in + i] * x;
  }
  for (int64_t k = 0; k < Outs; ++k) std::memcpy(yt + (o0 + k) * rows + r0, &acc[k], sizeof(vec));
}

template <typename scalar_t>
PYLANDER_TARGET_CLONES void linear_transposed(const scalar_t* xt, const scalar_t* w,
                                              const scalar_t* b, int64_t in, int64_t out,
                                              int64_t rows, scalar_t* yt) {
  constexpr int64_t block = 64 / sizeof(scalar_t);
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    int64_t o0 = 0;
    for (; o0 + kOuts <= out; o0 += kOuts) {
      linear_block<scalar_t, kOuts>(xt, w, b, in, rows, o0, r0, yt);
    }
    for (; o0 < out; ++o0) linear_block<scalar_t, 1>(xt, w, b, in, rows, o0, r0, yt);
  }
}

std::tuple<at::Tensor, at::Tensor> policy_sample_cpu(
    const at::Tensor& obs, at::TensorList actor, const std::optional<at::Tensor>& obs_mean,
    const std::optional<at::Tensor>& obs_var, double obs_clip,
    const std::optional<at::Generator>& generator) {
  check_policy_inputs(obs, actor, obs_mean, obs_var);
  const int64_t B = obs.size(0), layers = static_cast<int64_t>(actor.size() / 2);
  const auto x = obs.contiguous();
  auto logits = at::empty({B, actor[actor.size() - 2].size(0)}, obs.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "policy_sample_cpu", [&] {
    const int64_t in = x.size(1), rows = (B + kRows - 1) / kRows * kRows;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<scalar_t> input(in * rows, scalar_t(0));  // transposed, padded with zero rows
    for (int64_t r = 0; r < B; ++r) {
      for (int64_t j = 0; j < in; ++j) input[j * rows + r] = xp[r * in + j];
    }
    if (obs_mean) {  // as ObsNormalizer: the scale rsqrt(var + 1e-8) in float64, then cast
      const auto mean = obs_mean->to(at::kDouble).contiguous();
      const auto var = obs_var->to(at::kDouble).contiguous();
      const double* m = mean.data_ptr<double>();
      const double* v = var.data_ptr<double>();
      const auto clip = static_cast<scalar_t>(obs_clip);
      for (int64_t j = 0; j < in; ++j) {
        const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(v[j] + 1e-8));
        const auto centre = static_cast<scalar_t>(m[j]);
        for (int64_t r = 0; r < B; ++r) {
          const scalar_t z = (input[j * rows + r] - centre) * scale;
          input[j * rows + r] = std::min(std::max(z, -clip), clip);
        }
      }
    }
    std::vector<scalar_t> output;
    std::vector<double> hidden;
    for (int64_t l = 0; l < layers; ++l) {
      const auto weight = actor[2 * l].contiguous();
      const auto bias = actor[2 * l + 1].contiguous();
      const int64_t out = weight.size(0), width = weight.size(1);
      output.resize(out * rows);
      linear_transposed(input.data(), weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                        width, out, rows, output.data());
      if (l + 1 < layers) {  // tanh; glibc's tanhf took ~30 ns a call on the benchmark machine
        hidden.assign(output.begin(), output.end());
        fast_math::tanh(hidden.data(), static_cast<int64_t>(hidden.size()));
        std::copy(hidden.begin(), hidden.end(), output.begin());
      }
      input.swap(output);
    }
    scalar_t* z = logits.data_ptr<scalar_t>();
    const int64_t A = logits.size(1);
    for (int64_t r = 0; r < B; ++r) {
      for (int64_t j = 0; j < A; ++j) z[r * A + j] = input[j * rows + r];
    }
  });
  return dispatch::sample_categorical(logits, generator);
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("policy_sample", &policy_sample_cpu); }

}  // namespace pylander
