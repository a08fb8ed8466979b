// The tanh MLP's layers as plain loops, for the CPU kernels of policy_sample and
// actor_critic_grads. Activations are kept transposed, [features, rows] with the rows padded to
// a multiple of kRows, so that every sum runs across rows in vector registers (GCC vector
// extensions: one AVX-512 register of 64 bytes, or two AVX2 ones); weights are read as nn.Linear
// stores them, [out, in].
//
// For matrices this small (64 units, a few hundred rows) torch's gemm and elementwise kernels
// cost more in calls, allocations and cache misses than in arithmetic: interleaved with env steps
// (Python and Box2D, which evict the caches), its gemm took ~3x as long per call as back to back.
//
// Internal linkage: GCC's target_clones make a resolver per translation unit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fast_math.h"

namespace pylander {
namespace {

constexpr int64_t kRows = 16;  // rows are padded to a multiple of this (64 bytes of floats)
constexpr int64_t kOuts = 4;   // outputs per block: independent sums, so the FMAs overlap
// 64-byte vectors of rows (or inputs) per block: kOuts * kVecs sums fill 8 of AVX-512's 32
// registers, or 16 AVX2 ones, and each load feeds kOuts FMAs.
constexpr int64_t kVecs = 2;

inline int64_t padded_rows(int64_t rows) { return (rows + kRows - 1) / kRows * kRows; }

// One 64-byte vector of scalar_t (the typedef in a class: an alias template would drop the
// attribute).
template <typename scalar_t>
struct Vec64Of {
  typedef scalar_t type __attribute__((vector_size(64)));
};
template <typename scalar_t>
using Vec64 = typename Vec64Of<scalar_t>::type;

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

// yt[o, r] = b[o] + sum_i w[o, i] xt[i, r] for outputs [o0, o0 + Outs) and RowVecs 64-byte
// blocks of rows from r0. Each output's sum runs over i in order whatever the blocking, so the
// blocks change the speed, never the bits.
template <typename scalar_t, int64_t Outs, int64_t RowVecs>
__attribute__((always_inline)) inline void linear_block(const scalar_t* xt, const scalar_t* w,
                                                       const scalar_t* b, int64_t in,
                                                       int64_t rows, int64_t o0, int64_t r0,
                                                       scalar_t* yt) {
  constexpr int64_t lanes = 64 / sizeof(scalar_t);
  Vec64<scalar_t> acc[Outs][RowVecs], x[RowVecs];
  for (int64_t k = 0; k < Outs; ++k) {
    for (int64_t v = 0; v < RowVecs; ++v) acc[k][v] = Vec64<scalar_t>{} + b[o0 + k];
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
      std::memcpy(yt + (o0 + k) * rows + r0 + v * lanes, &acc[k][v], 64);
    }
  }
}

template <typename scalar_t, int64_t RowVecs>
__attribute__((always_inline)) inline void linear_rows(const scalar_t* xt, const scalar_t* w,
                                                      const scalar_t* b, int64_t in,
                                                      int64_t out, int64_t rows, int64_t r0,
                                                      scalar_t* yt) {
  int64_t o0 = 0;
  for (; o0 + kOuts <= out; o0 += kOuts) {
    linear_block<scalar_t, kOuts, RowVecs>(xt, w, b, in, rows, o0, r0, yt);
  }
  for (; o0 < out; ++o0) linear_block<scalar_t, 1, RowVecs>(xt, w, b, in, rows, o0, r0, yt);
}

// yt = w xt + b: one nn.Linear on transposed activations, in blocks of kOuts outputs by kVecs
// vectors of rows.
template <typename scalar_t>
PYLANDER_TARGET_CLONES void linear_transposed(const scalar_t* xt, const scalar_t* w,
                                              const scalar_t* b, int64_t in, int64_t out,
                                              int64_t rows, scalar_t* yt) {
  constexpr int64_t lanes = 64 / sizeof(scalar_t);
  int64_t r0 = 0;
  for (; r0 + kVecs * lanes <= rows; r0 += kVecs * lanes) {
    linear_rows<scalar_t, kVecs>(xt, w, b, in, out, rows, r0, yt);
  }
  for (; r0 < rows; r0 += lanes) linear_rows<scalar_t, 1>(xt, w, b, in, out, rows, r0, yt);
}

// dw[o, i0 + j] += sum_r gt[o, r] x[r, i0 + j] for outputs [o0, o0 + Outs) and IVecs 64-byte
// blocks of inputs from i0: x row-major, so the sums run across inputs in vector registers and
// need no horizontal reduction.
template <typename scalar_t, int64_t Outs, int64_t IVecs>
__attribute__((always_inline)) inline void weight_grad_block(const scalar_t* gt,
                                                            const scalar_t* x, int64_t in,
                                                            int64_t rows, int64_t o0, int64_t i0,
                                                            scalar_t* dw) {
  constexpr int64_t lanes = 64 / sizeof(scalar_t);
  Vec64<scalar_t> acc[Outs][IVecs] = {}, xv[IVecs];
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
      std::memcpy(out, &xv[v], 64);
    }
  }
}

template <typename scalar_t, int64_t IVecs>
__attribute__((always_inline)) inline void weight_grad_inputs(const scalar_t* gt,
                                                             const scalar_t* x, int64_t in,
                                                             int64_t out, int64_t rows,
                                                             int64_t i0, scalar_t* dw) {
  int64_t o0 = 0;
  for (; o0 + kOuts <= out; o0 += kOuts) {
    weight_grad_block<scalar_t, kOuts, IVecs>(gt, x, in, rows, o0, i0, dw);
  }
  for (; o0 < out; ++o0) weight_grad_block<scalar_t, 1, IVecs>(gt, x, in, rows, o0, i0, dw);
}

// Adds a block of rows' share of a layer's parameter gradients, from the gradient of its output,
// gt ([out, rows]), and its input, both transposed (xt, [in, rows]) and row-major (x, [rows, in]):
//   dw[o, i] += sum_r gt[o, r] x[r, i],  db[o] += sum_r gt[o, r].
// Whole 64-byte blocks of inputs take x; the rest (all of them for the 8 inputs of
// LunarLander's first layer) are dot products over the rows of xt.
template <typename scalar_t>
PYLANDER_TARGET_CLONES void linear_param_grads(const scalar_t* gt, const scalar_t* xt,
                                               const scalar_t* x, int64_t in, int64_t out,
                                               int64_t rows, scalar_t* dw, scalar_t* db) {
  constexpr int64_t lanes = 64 / sizeof(scalar_t);
  int64_t i0 = 0;
  for (; i0 + kVecs * lanes <= in; i0 += kVecs * lanes) {
    weight_grad_inputs<scalar_t, kVecs>(gt, x, in, out, rows, i0, dw);
  }
  for (; i0 + lanes <= in; i0 += lanes) weight_grad_inputs<scalar_t, 1>(gt, x, in, out, rows, i0, dw);
  Vec64<scalar_t> gv, xv;
  for (int64_t o = 0; o < out; ++o) {
    const scalar_t* g = gt + o * rows;
    Vec64<scalar_t> bias{};
    for (int64_t r0 = 0; r0 < rows; r0 += lanes) {
      load(gv, g + r0);
      bias += gv;
    }
    db[o] += lane_sum(bias);
    for (int64_t i = i0; i < in; ++i) {
      Vec64<scalar_t> acc{};
      for (int64_t r0 = 0; r0 < rows; r0 += lanes) {
        load(gv, g + r0);
        load(xv, xt + i * rows + r0);
        acc += gv * xv;
      }
      dw[o * in + i] += lane_sum(acc);
    }
  }
}

// gt[i, r] *= 1 - yt[i, r]^2: back through the tanh whose output was yt.
template <typename scalar_t>
PYLANDER_TARGET_CLONES void tanh_backward(scalar_t* __restrict gt, const scalar_t* __restrict yt,
                                          int64_t n) {
  for (int64_t k = 0; k < n; ++k) gt[k] *= scalar_t(1) - yt[k] * yt[k];
}

// tanh(x) in float32 as Eigen's generic_fast_tanh_float computes it: x clamped to +-7.9053, then
// an odd degree-13 over even degree-6 rational function of it; max relative error 3.4e-7 (a few
// ulp) over [-12, 12], and x itself below |x| = 4e-4. One division per 16 lanes, where
// fast_math's double-precision tanh (below) spends an exp and a double division per 8.
__attribute__((always_inline)) inline float tanh_float(float x) {
  const float c = std::min(std::max(x, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = c * c;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = c * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return std::fabs(x) < 0.0004f ? x : p / q;
}

// x = tanh(x), in place: float32 as above, float64 through fast_math's loop (glibc's tanhf and
// tanh took ~30 ns a call on the benchmark machine), in chunks that stay in L1.
template <typename scalar_t>
PYLANDER_TARGET_CLONES void tanh_inplace(scalar_t* x, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (int64_t k = 0; k < n; ++k) x[k] = tanh_float(x[k]);
  } else {
    constexpr int64_t chunk = 512;
    for (int64_t k0 = 0; k0 < n; k0 += chunk) fast_math::tanh(x + k0, std::min(chunk, n - k0));
  }
}

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

}  // namespace
}  // namespace pylander
