// Branch-free exp (and float log) that GCC/Clang auto-vectorise at -O3 without -ffast-math.
// Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then a polynomial for e^r and
// 2^k built in the exponent bits. Callers clamp the argument (kExpFloor) so results stay
// normal: float exp of arguments below about -87 goes subnormal and runs 9-16x slower.
// Arguments are clamped to [kFloor, -kFloor].
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace pytransfer {

template <typename T> struct ExpTraits;

template <> struct ExpTraits<float> {
  static constexpr float kFloor = -80.0f;  // e^-80 ~ 1.8e-35: normal, negligible
};
template <> struct ExpTraits<double> {
  static constexpr double kFloor = -700.0;
};

inline float vexp(float x) {
  x = x < ExpTraits<float>::kFloor ? ExpTraits<float>::kFloor : x;
  x = x > -ExpTraits<float>::kFloor ? -ExpTraits<float>::kFloor : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: rounds x*log2e to an integer in the mantissa
  float t = x * 1.44269504088896341f + shifter;
  float k = t - shifter;
  float r = x - k * 0.693359375f;     // ln2 hi
  r = r - k * -2.12194440e-4f;        // ln2 lo
  // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t ki;
  std::memcpy(&ki, &t, sizeof ki);
  ki = (ki - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &ki, sizeof scale);
  return p * scale;
}

inline double vexp(double x) {
  x = x < ExpTraits<double>::kFloor ? ExpTraits<double>::kFloor : x;
  x = x > -ExpTraits<double>::kFloor ? -ExpTraits<double>::kFloor : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  double t = x * 1.4426950408889634 + shifter;
  double k = t - shifter;
  double r = x - k * 6.93147180369123816490e-01;  // ln2 hi
  r = r - k * 1.90821492927058770002e-10;         // ln2 lo
  // Taylor series to degree 12: truncation error < 2e-16 on |r| <= ln2/2.
  double p = 1.0 / 479001600.0;
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
  int64_t ki;
  std::memcpy(&ki, &t, sizeof ki);
  ki = (ki - 0x4338000000000000LL + 1023) << 52;
  double scale;
  std::memcpy(&scale, &ki, sizeof scale);
  return p * scale;
}

// log x for x > 0 (subnormals and +inf included), branch-free: x = 2^e m with m in
// [sqrt(1/2), sqrt(2)), then the Cephes logf polynomial in m - 1 (about 1 ulp).
inline float vlog(float x) {
  const bool sub = x < std::numeric_limits<float>::min();
  const float y = sub ? x * 8388608.0f : x;  // 2^23: subnormals to normal
  int32_t bits;
  std::memcpy(&bits, &y, sizeof bits);
  float e = static_cast<float>((bits >> 23) - 126 - (sub ? 23 : 0));
  const int32_t mbits = (bits & 0x007FFFFF) | 0x3F000000;  // mantissa in [0.5, 1)
  float mant;
  std::memcpy(&mant, &mbits, sizeof mant);
  const bool low = mant < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  const float r = (low ? mant + mant : mant) - 1.0f;
  const float z = r * r;
  float p = 7.0376836292e-2f;
  p = p * r - 1.1514610310e-1f;
  p = p * r + 1.1676998740e-1f;
  p = p * r - 1.2420140846e-1f;
  p = p * r + 1.4249322787e-1f;
  p = p * r - 1.6668057665e-1f;
  p = p * r + 2.0000714765e-1f;
  p = p * r - 2.4999993993e-1f;
  p = p * r + 3.3333331174e-1f;
  float res = p * r * z;
  res += e * -2.12194440e-4f;
  res += -0.5f * z;
  res = r + res;
  res += e * 0.693359375f;
  return x == std::numeric_limits<float>::infinity() ? x : res;
}

// log x in double: the libm one (no double kernel depends on its speed).
inline double vlog(double x) { return std::log(x); }

}  // namespace pytransfer
