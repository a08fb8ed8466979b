// Helpers shared by the CUDA kernels: launch geometry, device-side error flags and
// IEEE-exact arithmetic. Only included by csrc/cuda/*.cu (CMake compiles those only when the
// torch being built against has CUDA).
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h), so building needs no cuBLAS,
// cuSPARSE or cuSOLVER headers; at::cuda::getCurrentCUDAStream is c10::cuda's, aliased by torch.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"

namespace pylander {
namespace cuda_detail {

constexpr int kThreads = 256;
// Kernels use grid-stride loops, so the grid can be capped well below the hardware limit.
constexpr int64_t kMaxBlocks = 65535;

// Blocks for `n` > 0 independent work items (callers skip the launch when n == 0).
inline unsigned int num_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// Indices of flags written by the kernels; a flag is set to 1 when the condition is seen.
enum Flag : int { kNonFinite = 0, kBadAction = 1, kNonFiniteOld = 2, kNumFlags = 3 };

// Zeroed int32 flags on the device of `like`, on the current stream.
inline at::Tensor make_flags(const at::Tensor& like) {
  return at::zeros({kNumFlags}, like.options().dtype(at::kInt));
}

// Copies the flags to the host (this synchronises with the current stream).
struct HostFlags {
  bool non_finite = false;
  bool bad_action = false;
  bool non_finite_old = false;  // old_log_probs (pg_loss's clipped surrogate)
};

inline HostFlags read_flags(const at::Tensor& flags) {
  const auto host = flags.to(at::kCPU);
  const int* f = host.data_ptr<int>();
  return {f[kNonFinite] != 0, f[kBadAction] != 0, f[kNonFiniteOld] != 0};
}

// The `is on X but Y is on Z` message of check_same_device, for a generator.
inline void check_generator_device(const std::optional<at::Generator>& generator,
                                   const at::Tensor& ref, const char* ref_name) {
  if (!generator.has_value() || !generator->defined()) return;
  // torch.Generator(device="cuda") has no device index: it draws on the current device.
  const auto device = generator->device();
  const bool same = device.type() == ref.device().type() &&
                    (device.has_index() ? device.index() == ref.device().index()
                                        : ref.device().index() == c10::cuda::current_device());
  TORCH_CHECK(same, "pylander: `generator` is on ", device, " but `", ref_name, "` is on ",
              ref.device(), "; move them to the same device");
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "pylander: `", name, "` must be on a CUDA device here, got ",
              t.device());
}

// Finite test that needs neither <cmath> in device code nor relaxed constexpr.
__device__ __forceinline__ bool is_finite(double x) { return isfinite(x); }

// Round-to-nearest double multiply, add and subtract that nvcc never contracts into an FMA, so
// the scans round exactly like the CPU kernels' separate operations.
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

__device__ __forceinline__ double neg_infinity() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}

}  // namespace cuda_detail
}  // namespace pylander
