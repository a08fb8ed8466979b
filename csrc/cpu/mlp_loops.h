// The tanh MLP's layers as plain loops, for the CPU kernels of policy_sample and
// actor_critic_grads. Activations are kept transposed, [features, rows] with the rows padded to
// a multiple of kRows, so that every sum runs across rows in vector registers (GCC vector
// extensions); weights are read as nn.Linear stores them, [out, in].
//
// Each loop is built for three vector widths, each with the instruction set it needs: 64 bytes
// (AVX-512), 32 (AVX2 with FMA) and 16 (baseline x86-64, or any other CPU), and the widest the
// CPU runs is picked once (vector_bytes). One 64-byte vector type for every ISA, as before, left
// AVX2 building each vector through the stack: ~50x slower than AVX-512 on the same loop.
//
// For matrices this small (64 units, a few hundred rows) torch's gemm and elementwise kernels
// cost more in calls, allocations and cache misses than in arithmetic: interleaved with env steps
// (Python and Box2D, which evict the caches), its gemm took ~3x as long per call as back to back.
//
// Internal linkage: each kernel file gets its own copies of these small templates.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "fast_math.h"

namespace pylander {
namespace {

constexpr int64_t kRows = 16;  // rows are padded to a multiple of this (64 bytes of floats)
constexpr int64_t kOuts = 4;   // outputs per block: independent sums, so the FMAs overlap
// Vectors of rows (or inputs) per block: kOuts * kVecs = 8 sums in registers (of 32 with
// AVX-512, 16 with AVX2), and each load feeds kOuts FMAs.
constexpr int64_t kVecs = 2;

inline int64_t padded_rows(int64_t rows) { return (rows + kRows - 1) / kRows * kRows; }

// One vector of Bytes bytes of scalar_t (the typedef in a class: an alias template would drop
// the attribute).
template <typename scalar_t, int Bytes>
struct VecOf {
  typedef scalar_t type __attribute__((vector_size(Bytes)));
};
template <typename scalar_t, int Bytes>
using Vec = typename VecOf<scalar_t, Bytes>::type;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(PYLANDER_NO_FMV)
#define PYLANDER_WIDTH_DISPATCH 1
#endif

// The vector width of the loops on this CPU, in bytes: 64 with AVX-512 (F, DQ, BW and VL, as on
// every AVX-512 CPU since Skylake; DQ turns vector compares into masks), 32 with AVX2 and FMA,
// else 16. The environment variable PYLANDER_VECTOR_BYTES (16, 32 or 64) can lower it, so that
// tests and benchmarks run the narrower builds on a wider CPU.
inline int vector_bytes() {
  static const int bytes = [] {
    int widest = 16;
#ifdef PYLANDER_WIDTH_DISPATCH
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      widest = 64;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      widest = 32;
    }
#endif
    const char* asked = std::getenv("PYLANDER_VECTOR_BYTES");
    if (asked == nullptr || *asked == '\0') return widest;
    const std::string value(asked);
    TORCH_CHECK(value == "16" || value == "32" || value == "64",
                "pylander: PYLANDER_VECTOR_BYTES must be 16, 32 or 64, got \"", value, "\"");
    const int want = std::stoi(value);
    TORCH_CHECK(want <= widest, "pylander: PYLANDER_VECTOR_BYTES=", value,
                " is wider than this CPU's vectors (", std::to_string(widest), " bytes)");
    return want;
  }();
  return bytes;
}

// name(params) calls name_impl<scalar_t, Bytes>(args) built for the width vector_bytes() picks.
#ifdef PYLANDER_WIDTH_DISPATCH
#define PYLANDER_BY_WIDTH(name, params, args)                                                \
  template <typename scalar_t>                                                               \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma"))) void name##_64 params {  \
    name##_impl<scalar_t, 64> args;                                                          \
  }                                                                                          \
  template <typename scalar_t>                                                               \
  __attribute__((target("avx2,fma"))) void name##_32 params {                                \
    name##_impl<scalar_t, 32> args;                                                          \
  }                                                                                          \
  template <typename scalar_t>                                                               \
  void name params {                                                                         \
    switch (vector_bytes()) {                                                                \
      case 64: return name##_64<scalar_t> args;                                              \
      case 32: return name##_32<scalar_t> args;                                              \
      default: return name##_impl<scalar_t, 16> args;                                        \
    }                                                                                        \
  }
#else
#define PYLANDER_BY_WIDTH(name, params, args) \
  template <typename scalar_t>                \
  void name params {                          \
    name##_impl<scalar_t, 16> args;           \
  }
#endif

// Helpers take vectors by reference: returned by value from a function built for the baseline
// ISA, a 64-byte vector would change the calling convention (GCC's -Wpsabi).
template <typename V, typename scalar_t>
__attribute__((always_inline)) inline void load(V& v, const scalar_t* p) {
  std::memcpy(&v, p, sizeof v);
}

template <typename V>
__attribute__((always_inline)) inline auto lane_sum(const V& v) {
  auto s = v[0];
  for (size_t k = 1; k < sizeof(V) / sizeof(s); ++k) s += v[k];
  return s;
}

// yt[o, r] = b[o] + sum_i w[o, i] xt[i, r] for outputs [o0, o0 + Outs) and RowVecs vectors
// (Bytes bytes each) of rows from r0. Each output's sum runs over i in order whatever the blocking, so the
// blocks change the speed, never the bits.
template <typename scalar_t, int Bytes, int64_t Outs, int64_t RowVecs>
__attribute__((always_inline)) inline void linear_block(const scalar_t* xt, const scalar_t* w,
                                                       const scalar_t* b, int64_t in,
                                                       int64_t rows, int64_t o0, int64_t r0,
                                                       scalar_t* yt) {
  constexpr int64_t lanes = Bytes / sizeof(scalar_t);
  Vec<scalar_t, Bytes> acc[Outs][RowVecs], x[RowVecs];
  for (int64_t k = 0; k < Outs; ++k) {
    for (int64_t v = 0; v < RowVecs; ++v) acc[k][v] = Vec<scalar_t, Bytes>{} + b[o0 + k];
  }
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t v = 0; v < RowVecs; ++v) load(x[v], xt + i * rows + r0 + v * lanes);
    for (int64_t k = 0; k < Outs; ++k) {
      const scalar_t wk = w[(o0 + k) * in + i];
      for (int64_t v = 0; v < RowVecs; ++v) acc[k][v] += wk * x[v];
    }
  }
  for (int64_t k = 0; k < Outs; ++k) {
    for (int64_t v = 0; v < RowVecs; ++v) {
      std::memcpy(yt + (o0 + k) * rows + r0 + v * lanes, &acc[k][v], Bytes);
    }
  }
}

template <typename scalar_t, int Bytes, int64_t RowVecs>
__attribute__((always_inline)) inline void linear_rows(const scalar_t* xt, const scalar_t* w,
                                                      const scalar_t* b, int64_t in,
                                                      int64_t out, int64_t rows, int64_t r0,
                                                      scalar_t* yt) {
  int64_t o0 = 0;
  for (; o0 + kOuts <= out; o0 += kOuts) {
    linear_block<scalar_t, Bytes, kOuts, RowVecs>(xt, w, b, in, rows, o0, r0, yt);
  }
  for (; o0 < out; ++o0) linear_block<scalar_t, Bytes, 1, RowVecs>(xt, w, b, in, rows, o0, r0, yt);
}

// yt = w xt + b: one nn.Linear on transposed activations, in blocks of kOuts outputs by kVecs
// vectors of rows.
template <typename scalar_t, int Bytes>
__attribute__((always_inline)) inline void linear_transposed_impl(
    const scalar_t* xt, const scalar_t* w, const scalar_t* b, int64_t in, int64_t out,
    int64_t rows, scalar_t* yt) {
  constexpr int64_t lanes = Bytes / sizeof(scalar_t);
  int64_t r0 = 0;
  for (; r0 + kVecs * lanes <= rows; r0 += kVecs * lanes) {
    linear_rows<scalar_t, Bytes, kVecs>(xt, w, b, in, out, rows, r0, yt);
  }
  for (; r0 < rows; r0 += lanes) linear_rows<scalar_t, Bytes, 1>(xt, w, b, in, out, rows, r0, yt);
}
PYLANDER_BY_WIDTH(linear_transposed,
                  (const scalar_t* xt, const scalar_t* w, const scalar_t* b, int64_t in,
                   int64_t out, int64_t rows, scalar_t* yt),
                  (xt, w, b, in, out, rows, yt))

// dw[o, i0 + j] += sum_r gt[o, r] x[r, i0 + j] for outputs [o0, o0 + Outs) and IVecs vectors
// (Bytes bytes each) of inputs from i0: x row-major, so the sums run across inputs in vector registers and
// need no horizontal reduction.
template <typename scalar_t, int Bytes, int64_t Outs, int64_t IVecs>
__attribute__((always_inline)) inline void weight_grad_block(const scalar_t* gt,
                                                            const scalar_t* x, int64_t in,
                                                            int64_t rows, int64_t o0, int64_t i0,
                                                            scalar_t* dw) {
  constexpr int64_t lanes = Bytes / sizeof(scalar_t);
  Vec<scalar_t, Bytes> acc[Outs][IVecs] = {}, xv[IVecs];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < IVecs; ++v) load(xv[v], x + r * in + i0 + v * lanes);
    for (int64_t k = 0; k < Outs; ++k) {
      const scalar_t g = gt[(o0 + k) * rows + r];
      for (int64_t v = 0; v < IVecs; ++v) acc[k][v] += g * xv[v];
    }
  }
  for (int64_t k = 0; k < Outs; ++k) {
    for (int64_t v = 0; v < IVecs; ++v) {
      scalar_t* out = dw + (o0 + k) * in + i0 + v * lanes;
      load(xv[v], out);
      xv[v] += acc[k][v];
      std::memcpy(out, &xv[v], Bytes);
    }
  }
}

template <typename scalar_t, int Bytes, int64_t IVecs>
__attribute__((always_inline)) inline void weight_grad_inputs(const scalar_t* gt,
                                                             const scalar_t* x, int64_t in,
                                                             int64_t out, int64_t rows,
                                                             int64_t i0, scalar_t* dw) {
  int64_t o0 = 0;
  for (; o0 + kOuts <= out; o0 += kOuts) {
    weight_grad_block<scalar_t, Bytes, kOuts, IVecs>(gt, x, in, rows, o0, i0, dw);
  }
  for (; o0 < out; ++o0) weight_grad_block<scalar_t, Bytes, 1, IVecs>(gt, x, in, rows, o0, i0, dw);
}

// Adds a block of rows' share of a layer's parameter gradients, from the gradient of its output,
// gt ([out, rows]), and its input, both transposed (xt, [in, rows]) and row-major (x, [rows, in]):
//   dw[o, i] += sum_r gt[o, r] x[r, i],  db[o] += sum_r gt[o, r].
// Whole vectors of inputs take x; the rest (all of them for the 8 inputs of LunarLander's first
// layer, at 64 bytes) are dot products over the rows of xt.
template <typename scalar_t, int Bytes>
__attribute__((always_inline)) inline void linear_param_grads_impl(
    const scalar_t* gt, const scalar_t* xt, const scalar_t* x, int64_t in, int64_t out,
    int64_t rows, scalar_t* dw, scalar_t* db) {
  constexpr int64_t lanes = Bytes / sizeof(scalar_t);
  int64_t i0 = 0;
  for (; i0 + kVecs * lanes <= in; i0 += kVecs * lanes) {
    weight_grad_inputs<scalar_t, Bytes, kVecs>(gt, x, in, out, rows, i0, dw);
  }
  for (; i0 + lanes <= in; i0 += lanes) {
    weight_grad_inputs<scalar_t, Bytes, 1>(gt, x, in, out, rows, i0, dw);
  }
  Vec<scalar_t, Bytes> gv, xv;
  for (int64_t o = 0; o < out; ++o) {
    const scalar_t* g = gt + o * rows;
    Vec<scalar_t, Bytes> bias{};
    for (int64_t r0 = 0; r0 < rows; r0 += lanes) {
      load(gv, g + r0);
      bias += gv;
    }
    db[o] += lane_sum(bias);
    for (int64_t i = i0; i < in; ++i) {
      Vec<scalar_t, Bytes> acc{};
      for (int64_t r0 = 0; r0 < rows; r0 += lanes) {
        load(gv, g + r0);
        load(xv, xt + i * rows + r0);
        acc += gv * xv;
      }
      dw[o * in + i] += lane_sum(acc);
    }
  }
}
PYLANDER_BY_WIDTH(linear_param_grads,
                  (const scalar_t* gt, const scalar_t* xt, const scalar_t* x, int64_t in,
                   int64_t out, int64_t rows, scalar_t* dw, scalar_t* db),
                  (gt, xt, x, in, out, rows, dw, db))

// gt[i, r] *= 1 - yt[i, r]^2: back through the tanh whose output was yt.
template <typename scalar_t, int Bytes>
__attribute__((always_inline)) inline void tanh_backward_impl(scalar_t* __restrict gt,
                                                             const scalar_t* __restrict yt,
                                                             int64_t n) {
  for (int64_t k = 0; k < n; ++k) gt[k] *= scalar_t(1) - yt[k] * yt[k];
}
PYLANDER_BY_WIDTH(tanh_backward, (scalar_t* gt, const scalar_t* yt, int64_t n), (gt, yt, n))

// tanh(x) in float32 as Eigen's generic_fast_tanh_float computes it: x clamped to +-7.9053, then
// an odd degree-13 over even degree-6 rational function of it; max relative error 3.4e-7 (a few
// ulp) over [-12, 12] with FMAs, 4.1e-7 without, and x itself below |x| = 4e-4. One division per
// vector of floats, where fast_math's double-precision tanh spends an exp and a double division
// per vector of doubles. T is a float or a vector of floats (in place, by reference: see load),
// with selects, not branches.
template <typename T>
__attribute__((always_inline)) inline void tanh_floats(T& x) {
  const T limit = T{} + 7.90531110763549805f, tiny = T{} + 0.0004f;
  const T c = x > limit ? limit : (x < -limit ? -limit : x);
  const T x2 = c * c;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = c * p;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  x = (x < tiny) & (x > -tiny) ? x : p / q;
}

// x = tanh(x), in place: float32 as above, float64 through fast_math's loop (glibc's tanhf and
// tanh took ~30 ns a call on the benchmark machine), in chunks that stay in L1.
template <typename scalar_t, int Bytes>
__attribute__((always_inline)) inline void tanh_inplace_impl(scalar_t* x, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float> && Bytes == 64) {
    // AVX-512's masked operations vectorise the loop over floats as written, and GCC lowered
    // the explicit 64-byte selects to scalar compares.
    for (int64_t k = 0; k < n; ++k) tanh_floats(x[k]);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    using V = Vec<float, Bytes>;
    constexpr int64_t lanes = Bytes / sizeof(float);
    V v;
    int64_t k = 0;
    for (; k + lanes <= n; k += lanes) {
      load(v, x + k);
      tanh_floats(v);
      std::memcpy(x + k, &v, Bytes);
    }
    for (; k < n; ++k) tanh_floats(x[k]);
  } else {
    constexpr int64_t chunk = 512;
    for (int64_t k0 = 0; k0 < n; k0 += chunk) fast_math::tanh(x + k0, std::min(chunk, n - k0));
  }
}
PYLANDER_BY_WIDTH(tanh_inplace, (scalar_t* x, int64_t n), (x, n))

// dst[j, r] = src[r, j] for a [rows, cols] block of src with row stride `cols`, into a
// [cols, dst_rows] buffer (its padding rows left as they are), in 16 x 16 tiles so that the
// strided writes stay in L1.
template <typename scalar_t>
void transpose_into(const scalar_t* src, int64_t rows, int64_t cols, int64_t dst_rows,
                    scalar_t* dst) {
  constexpr int64_t tile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t r1 = std::min(rows, r0 + tile);
    for (int64_t j0 = 0; j0 < cols; j0 += tile) {
      const int64_t j1 = std::min(cols, j0 + tile);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t j = j0; j < j1; ++j) dst[j * dst_rows + r] = src[r * cols + j];
      }
    }
  }
}

// y[r, j] = yt[j, r] for the first n of a [cols, rows] block's rows: a layer's transposed
// outputs back to row-major [n, cols], the padding rows left out.
template <typename scalar_t>
void untranspose_rows(const scalar_t* yt, int64_t cols, int64_t rows, int64_t n, scalar_t* y) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = yt[j * rows + r];
  }
}

// Rows per block in the whole-batch kernels (actor_critic_forward, actor_critic_grads): a
// block's activations stay in L2.
constexpr int64_t kBlockRows = 256;

}  // namespace
}  // namespace pylander
