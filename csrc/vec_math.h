// Branch-free exp that GCC/Clang auto-vectorise at -O3 without -ffast-math.
// Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then a polynomial for e^r and
// 2^k built in the exponent bits. Callers clamp the argument (kExpFloor) so results stay
// normal: float exp of arguments below about -87 goes subnormal and runs 9-16x slower.
// Arguments are clamped to [kFloor, -kFloor].
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace pytransfer
