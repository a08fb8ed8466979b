// Vectorisable exp, log and tanh over arrays, for the CPU kernels' softmax statistics and the
// actor's hidden layers, and a macro to build vectorisable loops once per instruction set.
//
// std::exp / std::log are scalar library calls (~10-20 ns each on the benchmark machine); these
// loops are plain arithmetic and bit operations that the compiler vectorises. The extension is
// compiled for baseline x86-64, so they are built several times (GCC function multi-versioning,
// resolved once when the library loads): the AVX-512 and AVX2 versions run the polynomial loops,
// and the default version, for CPUs without AVX2, calls the library functions. The polynomial
// versions are accurate to 1 ulp (exp) and 2 ulp (log) in double precision.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pylander {
namespace fast_math {

inline double from_bits(uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

inline uint64_t to_bits(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split of ln 2: k * kLn2Hi
constexpr double kLn2Lo = 1.90821492927058770002e-10;  // is exact for |k| < 2^20
constexpr double kShifter = 6755399441055744.0;         // 1.5 * 2^52: x + kShifter rounds x

// exp(x) for x <= 0. Arguments below -746 give 0, as exp does.
__attribute__((always_inline)) inline double exp_nonpositive_one(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kTwoToMinus60 = 8.673617379884035e-19;
  const uint64_t shifter_bits = to_bits(kShifter);
  const uint64_t limit_bits = to_bits(-746.0);
  // max(x, -746) as an unsigned min of the bit patterns (x <= 0); an integer select
  // vectorises where a floating-point comparison would leave a branch.
  uint64_t xb = to_bits(x);
  xb = xb < limit_bits ? xb : limit_bits;
  const double xi = from_bits(xb);
  // x = k ln2 + r with |r| <= ln2 / 2; t's low mantissa bits hold the integer k.
  const double t = xi * kLog2e + kShifter;
  const double k = t - kShifter;
  const double r = (xi - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // Taylor series of exp(r) to r^13 / 13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k built as 2^(k + 60) * 2^-60, so that k down to -1076 stays a normal number until the
  // last multiply, which rounds into the subnormal range (or to 0) as exp would.
  const uint64_t scale_bits = (to_bits(t) - shifter_bits + (1023 + 60)) << 52;
  return (p * from_bits(scale_bits)) * kTwoToMinus60;
}

// x[i] = exp(x[i]) for x[i] <= 0, in place.
__attribute__((always_inline)) inline void exp_nonpositive_poly(double* __restrict x,
                                                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_nonpositive_one(x[i]);
}

// x[i] = tanh(x[i]), in place: (1 - e) / (1 + e) with e = exp(-2|x|), and the series
// a - a^3/3 + 2a^5/15 below |x| = 1e-3, where 1 - e loses digits (relative error about 1e-13
// at the crossover). A NaN takes the series branch, so it stays NaN.
__attribute__((always_inline)) inline void tanh_poly(double* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(x[i]);
    const double e = exp_nonpositive_one(-2.0 * a);
    const double a2 = a * a;
    const double series = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0)));
    const double t = a >= 1e-3 ? (1.0 - e) / (1.0 + e) : series;
    x[i] = std::copysign(t, x[i]);
  }
}

// x[i] = log(x[i]) for positive, finite, normal x[i], in place.
__attribute__((always_inline)) inline void log_positive_poly(double* __restrict x, int64_t n) {
  constexpr uint64_t kMantissa = (uint64_t(1) << 52) - 1;
  constexpr uint64_t kSqrt2Mantissa = 0x6A09E667F3BCDull;  // mantissa bits of sqrt(2)
  const uint64_t shifter_bits = to_bits(kShifter);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t b = to_bits(x[i]);
    // x = m 2^k with m in [sqrt(2)/2, sqrt(2)).
    const uint64_t mantissa = b & kMantissa;
    const uint64_t high = mantissa > kSqrt2Mantissa ? 1 : 0;
    const uint64_t biased_k = (b >> 52) + high;  // k + 1023
    const double m = from_bits(mantissa | ((1023 - high) << 52));
    // k as a double without an int64 -> double conversion (none in AVX2).
    const double k = from_bits(shifter_bits + biased_k) - (kShifter + 1023.0);
    // log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1), |s| <= 0.1716.
    const double s = (m - 1.0) / (m + 1.0);
    const double s2 = s * s;
    double q = 1.0 / 23.0;
    q = q * s2 + 1.0 / 21.0;
    q = q * s2 + 1.0 / 19.0;
    q = q * s2 + 1.0 / 17.0;
    q = q * s2 + 1.0 / 15.0;
    q = q * s2 + 1.0 / 13.0;
    q = q * s2 + 1.0 / 11.0;
    q = q * s2 + 1.0 / 9.0;
    q = q * s2 + 1.0 / 7.0;
    q = q * s2 + 1.0 / 5.0;
    q = q * s2 + 1.0 / 3.0;
    const double log_m = 2.0 * s + 2.0 * s * s2 * q;
    x[i] = k * kLn2Hi + (k * kLn2Lo + log_m);
  }
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__) && !defined(PYLANDER_NO_FMV)
#define PYLANDER_FAST_MATH_FMV 1
#endif

// For loops that vectorise as written: one build per ISA, picked when the library loads.
#if defined(PYLANDER_FAST_MATH_FMV) && !defined(__clang__)
#define PYLANDER_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYLANDER_TARGET_CLONES
#endif

#ifdef PYLANDER_FAST_MATH_FMV
__attribute__((target("default"))) inline void exp_nonpositive(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}
__attribute__((target("avx2"))) inline void exp_nonpositive(double* x, int64_t n) {
  exp_nonpositive_poly(x, n);
}
__attribute__((target("avx512f"))) inline void exp_nonpositive(double* x, int64_t n) {
  exp_nonpositive_poly(x, n);
}
__attribute__((target("default"))) inline void tanh(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i]);
}
__attribute__((target("avx2"))) inline void tanh(double* x, int64_t n) { tanh_poly(x, n); }
__attribute__((target("avx512f"))) inline void tanh(double* x, int64_t n) { tanh_poly(x, n); }
__attribute__((target("default"))) inline void log_positive(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::log(x[i]);
}
__attribute__((target("avx2"))) inline void log_positive(double* x, int64_t n) {
  log_positive_poly(x, n);
}
__attribute__((target("avx512f"))) inline void log_positive(double* x, int64_t n) {
  log_positive_poly(x, n);
}
#else
inline void exp_nonpositive(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}
inline void tanh(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i]);
}
inline void log_positive(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::log(x[i]);
}
#endif

}  // namespace fast_math
}  // namespace pylander
