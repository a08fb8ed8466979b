// T Adam steps on fixed gradients in one pass: the elementwise recurrence of torch.optim.Adam
// (default, non-fused, no weight decay, no amsgrad) over m, v and the parameter.
//
// Each step rounds exactly like torch's CPU kernels in the order _single_tensor_adam calls them
// (checked against the AVX-512 kernels of torch 2.13's x86 wheel; its AVX2 kernels use the same
// FMAs), so the result matches a loop of optimizer.step() bit for bit:
//   m = lerp(m, g, w):        fma(w, g - m, m) for |w| < 0.5, else fma(w - 1, g - m, g)
//   v = v * b2 + (c2 * g) * g:  fma(c2 * g, g, v * b2)              (addcmul_)
//   d = sqrt(v) / s2 + eps      three rounded ops; sqrt as torch's (MKL's, see torch_sqrt)
//   p = p + (-step_size * m) / d                                   (addcdiv_, no FMA)
// where w, b2, c2 = 1 - b2, eps and the per-step scalars are rounded once to the parameter
// dtype. The fma calls are explicit; no other expression multiplies into an add, so the
// compiler's FMA contraction cannot change a result either.
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../adam_scan.h"
#include "../checks.h"
#include "fast_math.h"

namespace pylander {
namespace {

// x86-64-v3/v4 rather than plain "avx2"/"avx512f": those targets do not include FMA, and
// std::fma would then be a library call in the loop.
#if defined(PYLANDER_FAST_MATH_FMV) && !defined(__clang__)
#define PYLANDER_FMA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYLANDER_FMA_CLONES
#endif

// Parameters per block: the block's p, m and v stay in cache while its T steps run.
constexpr int64_t kBlock = 2048;
// Enough element-steps per thread that a small network stays on one thread.
constexpr int64_t kElementStepsPerThread = 1 << 16;

template <typename scalar_t>
struct AdamConstants {
  scalar_t lerp_coeff;  // w, or w - 1 when torch's lerp takes its large-weight branch
  bool lerp_small;      // |w| < 0.5, with w = 1 - beta1
  scalar_t beta2, one_minus_beta2, eps;
};

template <typename scalar_t>
AdamConstants<scalar_t> adam_constants(double beta1, double beta2, double eps) {
  const auto w = static_cast<scalar_t>(1.0 - beta1);
  const bool small = std::abs(w) < scalar_t(0.5);
  return {small ? w : w - scalar_t(1), small, static_cast<scalar_t>(beta2),
          static_cast<scalar_t>(1.0 - beta2), static_cast<scalar_t>(eps)};
}

// torch's CPU sqrt is not std::sqrt: with MKL (ATen/cpu/vml.h) it is VML's high-accuracy sqrt,
// within 1 ulp but not always correctly rounded (0.7% of random float32 inputs differ). libtorch
// exports VML, so call the same function in the same mode; the 64-bit-count entry points take
// the same arguments whichever integer size torch's MKL interface uses. Weak, in case a torch
// built with MKL does not export them: then std::sqrt, as torch without MKL uses.
#if AT_MKL_ENABLED()
extern "C" {
__attribute__((weak)) void vmsSqrt_64(long long n, const float* a, float* r,
                                      unsigned long long mode);
__attribute__((weak)) void vmdSqrt_64(long long n, const double* a, double* r,
                                      unsigned long long mode);
}
// VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, the mode ATen passes.
constexpr unsigned long long kVmlMode = 0x2 | 0x140000 | 0x100;
inline bool vml_sqrt(const float* in, float* out, int64_t n) {
  return vmsSqrt_64 ? (vmsSqrt_64(n, in, out, kVmlMode), true) : false;
}
inline bool vml_sqrt(const double* in, double* out, int64_t n) {
  return vmdSqrt_64 ? (vmdSqrt_64(n, in, out, kVmlMode), true) : false;
}
#else
template <typename scalar_t>
inline bool vml_sqrt(const scalar_t*, scalar_t*, int64_t) { return false; }
#endif

// out[i] = sqrt(in[i]), rounded as torch.sqrt rounds on this build.
template <typename scalar_t>
inline void torch_sqrt(const scalar_t* __restrict in, scalar_t* __restrict out, int64_t n) {
  if (n == 0 || vml_sqrt(in, out, n)) return;
  for (int64_t i = 0; i < n; ++i) out[i] = std::sqrt(in[i]);
}

// T steps on `n` <= kBlock parameters in place; `g` points at the block's column 0 in the
// [T, P] grads. Returns whether every result is finite: a NaN or infinity in any input leaves
// one in p, m or v (an infinite gradient makes m infinite, NaN from the next step on).
template <typename scalar_t>
PYLANDER_FMA_CLONES bool adam_block(const scalar_t* __restrict g, int64_t P, int64_t T,
                                    const AdamStepScalars<scalar_t>* __restrict steps,
                                    AdamConstants<scalar_t> c, scalar_t* __restrict p,
                                    scalar_t* __restrict m, scalar_t* __restrict v, int64_t n) {
  scalar_t root[kBlock];
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict gt = g + t * P;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t grad = gt[i];
      m[i] = std::fma(c.lerp_coeff, grad - m[i], c.lerp_small ? m[i] : grad);
      v[i] = std::fma(c.one_minus_beta2 * grad, grad, v[i] * c.beta2);
    }
    torch_sqrt(v, root, n);
    const scalar_t neg_step_size = steps[t].neg_step_size;
    const scalar_t bias2_sqrt = steps[t].bias2_sqrt;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t denom = root[i] / bias2_sqrt + c.eps;
      p[i] = p[i] + neg_step_size * m[i] / denom;
    }
  }
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite &= std::isfinite(p[i]) && std::isfinite(m[i]) && std::isfinite(v[i]);
  }
  return finite;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_scan_cpu(
    const at::Tensor& param, const at::Tensor& grads, const at::Tensor& exp_avg,
    const at::Tensor& exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
    double eps) {
  check_adam_scan_inputs(param, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps);
  TORCH_CHECK(param.device().is_cpu(), "pylander: `param` must be on the CPU here");
  auto p = param.contiguous().clone();
  auto m = exp_avg.contiguous().clone();
  auto v = exp_avg_sq.contiguous().clone();
  const auto g = grads.contiguous();
  const int64_t T = g.size(0), P = g.size(1);
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adam_scan_cpu", [&] {
    const auto steps = adam_step_scalars<scalar_t>(step, T, lr, beta1, beta2);
    const auto constants = adam_constants<scalar_t>(beta1, beta2, eps);
    const int64_t grain =
        std::max<int64_t>(kBlock, kElementStepsPerThread / std::max<int64_t>(T, 1));
    std::vector<char> chunk_finite(P + 1, 1);
    at::parallel_for(0, P, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t b = i0; b < i1; b += kBlock) {
        const int64_t n = std::min(kBlock, i1 - b);
        chunk_finite[i0] &= adam_block<scalar_t>(
            g.data_ptr<scalar_t>() + b, P, T, steps.data(), constants, p.data_ptr<scalar_t>() + b,
            m.data_ptr<scalar_t>() + b, v.data_ptr<scalar_t>() + b, n);
      }
    });
    for (char ok : chunk_finite) finite &= ok != 0;
  });
  check_finite_flag(finite, "grads`, `param`, `exp_avg` or `exp_avg_sq");
  return {p, m, v};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CPU, m) { m.impl("adam_scan", &adam_scan_cpu); }

}  // namespace pylander
