// CUDA adam_scan, with the semantics of csrc/cpu/adam_scan.cpp: one thread per parameter
// entry runs its T steps; adjacent threads read adjacent columns of the row-major [T, P]
// gradients, so every step is coalesced.
//
// The target is torch.optim.Adam's default on CUDA, the foreach path, whose kernels compute in
// the parameter dtype (float opmath for float32) as: lerp's a + w * (b - a) and addcmul's
// a + (s * b) * c, both contracted to FMAs by nvcc, then a correctly rounded sqrt, divide and
// add, and addcdiv's a + (s * b) / c. The intrinsics below spell out those roundings so no
// compiler flag can change them. Compile-checked with nvcc 13.0, not yet run on a GPU:
// tests/test_adam_scan.py::test_op_matches_torch_adam_on_cuda is the check.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "../adam_scan.h"
#include "../checks.h"
#include "common.cuh"

namespace pylander {
namespace {

using namespace cuda_detail;

// Round-to-nearest arithmetic that nvcc never fuses or approximates, per dtype.
struct RoundFloat {
  static __device__ __forceinline__ float fma(float a, float b, float c) {
    return __fmaf_rn(a, b, c);
  }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
  static __device__ __forceinline__ float sqrt(float a) { return __fsqrt_rn(a); }
};

struct RoundDouble {
  static __device__ __forceinline__ double fma(double a, double b, double c) {
    return __fma_rn(a, b, c);
  }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
  static __device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
  static __device__ __forceinline__ double sqrt(double a) { return __dsqrt_rn(a); }
};

template <typename scalar_t>
using Round = std::conditional_t<std::is_same_v<scalar_t, float>, RoundFloat, RoundDouble>;

template <typename scalar_t>
__global__ void adam_scan_kernel(const scalar_t* __restrict__ g,
                                 const AdamStepScalars<scalar_t>* __restrict__ steps,
                                 scalar_t* __restrict__ p, scalar_t* __restrict__ m,
                                 scalar_t* __restrict__ v, int64_t T, int64_t P,
                                 scalar_t lerp_weight, scalar_t beta2, scalar_t one_minus_beta2,
                                 scalar_t eps, int* __restrict__ flags) {
  using R = Round<scalar_t>;
  // torch's lerp: a + w * (b - a) for |w| < 0.5, else b - (b - a) * (1 - w).
  const bool small = fabs(lerp_weight) < scalar_t(0.5);
  const scalar_t one_minus_weight = R::sub(scalar_t(1), lerp_weight);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < P;
       i += stride) {
    scalar_t param = p[i], exp_avg = m[i], exp_avg_sq = v[i];
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t grad = g[t * P + i];
      const scalar_t diff = R::sub(grad, exp_avg);
      exp_avg = small ? R::fma(lerp_weight, diff, exp_avg) : R::fma(-diff, one_minus_weight, grad);
      exp_avg_sq = R::fma(R::mul(one_minus_beta2, grad), grad, R::mul(exp_avg_sq, beta2));
      const AdamStepScalars<scalar_t> s = steps[t];
      const scalar_t denom = R::add(R::div(R::sqrt(exp_avg_sq), s.bias2_sqrt), eps);
      param = R::add(param, R::div(R::mul(s.neg_step_size, exp_avg), denom));
    }
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    if (!(is_finite(param) && is_finite(exp_avg) && is_finite(exp_avg_sq))) flags[kNonFinite] = 1;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_scan_cuda(
    const at::Tensor& param, const at::Tensor& grads, const at::Tensor& exp_avg,
    const at::Tensor& exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
    double eps) {
  check_adam_scan_inputs(param, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps);
  check_cuda(param, "param");
  const c10::cuda::OptionalCUDAGuard guard(param.device());
  auto p = param.contiguous().clone();
  auto m = exp_avg.contiguous().clone();
  auto v = exp_avg_sq.contiguous().clone();
  const auto g = grads.contiguous();
  const int64_t T = g.size(0), P = g.size(1);
  if (P == 0 || T == 0) {  // nothing to step; the inputs' finiteness is still checked
    const bool finite = at::isfinite(at::cat({p, m, v})).all().item<bool>();
    check_finite_flag(finite, "grads`, `param`, `exp_avg` or `exp_avg_sq");
    return {p, m, v};
  }
  auto flags = make_flags(p);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adam_scan_cuda", [&] {
    using Scalars = AdamStepScalars<scalar_t>;
    const auto host = adam_step_scalars<scalar_t>(step, T, lr, beta1, beta2);
    auto table = at::empty({static_cast<int64_t>(T * sizeof(Scalars))}, at::kByte);
    std::memcpy(table.data_ptr(), host.data(), T * sizeof(Scalars));
    table = table.to(p.device());
    adam_scan_kernel<scalar_t><<<num_blocks(P), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), reinterpret_cast<const Scalars*>(table.data_ptr()),
        p.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), T, P,
        static_cast<scalar_t>(1.0 - beta1), static_cast<scalar_t>(beta2),
        static_cast<scalar_t>(1.0 - beta2), static_cast<scalar_t>(eps), flags.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_finite_flag(!read_flags(flags).non_finite, "grads`, `param`, `exp_avg` or `exp_avg_sq");
  return {p, m, v};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylander, CUDA, m) { m.impl("adam_scan", &adam_scan_cuda); }

}  // namespace pylander
