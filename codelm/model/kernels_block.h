// The elementwise loops of a transformer block for one decoded token per row (kernels.cpp's
// decode_block), torch-free like kernels_core.h and on its vector type V: the norms, RoPE, the
// MLP's activations, the residual add and the writes into a KV cache. Each computes what
// codelm/model/transformer.py's modules compute, to float rounding; tests/kernels_check.cpp
// checks each against a scalar reference on every branch of V. Rows are a few hundred to a few
// thousand floats, their widths multiples of 16 (one V): at batch 1 these loops take a few us
// of a step, where the same work through torch's ops took ~40 dispatches per block.
#pragma once

#include <cstring>

#include "kernels_core.h"

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

// out (C) = x / sqrt(mean(x^2) + eps) * w: nn.RMSNorm.
inline void rmsnorm(const float* x, int64_t C, const float* w, float eps, float* out) {
  V squares = vset(0.0f);
  for (int64_t i = 0; i < C; i += 16) squares = vfma(vload(x + i), vload(x + i), squares);
  V r = vset(1.0f / std::sqrt(vsum(squares) / static_cast<float>(C) + eps));
  for (int64_t i = 0; i < C; i += 16) vstore(out + i, vmul(vmul(vload(x + i), r), vload(w + i)));
}

// out (C) = (x - mean(x)) / sqrt(var(x) + eps) * w (+ b), var the biased one: nn.LayerNorm,
// whose bias may be absent (null b).
inline void layernorm(const float* x, int64_t C, const float* w, const float* b, float eps, float* out) {
  V sum = vset(0.0f), squares = vset(0.0f);
  for (int64_t i = 0; i < C; i += 16) sum = vadd(sum, vload(x + i));
  V minus_mean = vset(-vsum(sum) / static_cast<float>(C));
  for (int64_t i = 0; i < C; i += 16) {
    V d = vadd(vload(x + i), minus_mean);
    squares = vfma(d, d, squares);
  }
  V r = vset(1.0f / std::sqrt(vsum(squares) / static_cast<float>(C) + eps));
  for (int64_t i = 0; i < C; i += 16) {
    V y = vmul(vmul(vadd(vload(x + i), minus_mean), r), vload(w + i));
    vstore(out + i, b ? vadd(y, vload(b + i)) : y);
  }
}

// 1 / (1 + e^-x) as a / (a + b) with a = e^min(x, 0) and b = e^min(-x, 0): both exponents are
// non-positive (vexp_nonpositive's domain) whatever x's sign, so neither exp overflows.
inline V vsigmoid(V x) {
  V zero = vset(0.0f);
  V a = vexp_nonpositive(vmin(x, zero)), b = vexp_nonpositive(vmin(vmul(x, vset(-1.0f)), zero));
  return vdiv(a, vadd(a, b));
}

// out (F) = silu(gate) * up, h (2F) being the MLP's fused projection [gate, up] (SwiGLU).
inline void swiglu(const float* h, int64_t F, float* out) {
  for (int64_t i = 0; i < F; i += 16) {
    V gate = vload(h + i);
    vstore(out + i, vmul(vmul(gate, vsigmoid(gate)), vload(h + F + i)));
  }
}

// h (F) <- F.gelu(h, approximate="tanh") = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
// computed as x * sigmoid(2u), the same function (1 + tanh(u) = 2 sigmoid(2u)).
inline void gelu_tanh(float* h, int64_t F) {
  constexpr float TWO_SQRT_2_OVER_PI = 1.5957691216f;
  for (int64_t i = 0; i < F; i += 16) {
    V x = vload(h + i);
    V u2 = vmul(vset(TWO_SQRT_2_OVER_PI), vfma(vset(0.044715f), vmul(vmul(x, x), x), x));
    vstore(h + i, vmul(x, vsigmoid(u2)));
  }
}

// out (D) = one head's x (D) rotated by RoPE at one position: x * cos + swapped(x) * sin, cos
// and sin that position's rows of transformer.py's rope_tables (sin signed per channel), and
// swapped(x) each channel's partner in its pair: 2i and 2i + 1 ("interleaved") or i and
// i + D/2 ("half"), as apply_rope computes it. `swapped` is scratch for D floats.
inline void rope(const float* x, int64_t D, const float* cos, const float* sin, bool half, float* swapped,
                 float* out) {
  if (half) {
    std::memcpy(swapped, x + D / 2, D / 2 * sizeof(float));
    std::memcpy(swapped + D / 2, x, D / 2 * sizeof(float));
  } else {
    for (int64_t i = 0; i < D; i += 2) {
      swapped[i] = x[i + 1];
      swapped[i + 1] = x[i];
    }
  }
  for (int64_t i = 0; i < D; i += 16)
    vstore(out + i, vfma(vload(swapped + i), vload(sin + i), vmul(vload(x + i), vload(cos + i))));
}

// x (n) += y (n): the residual stream.
inline void add_into(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) vstore(x + i, vadd(vload(x + i), vload(y + i)));
}

// x rounded to the nearest bf16, ties to even, a NaN to a NaN: c10::BFloat16's conversion.
inline bf16 bf16_round(float x) {
  if (std::isnan(x)) return {0x7fc0};
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16)};
}

// One head's key or value row (D) into a cache slot, as the cache stores it.
inline void store_row(const float* x, int64_t D, float* out) { std::memcpy(out, x, D * sizeof(float)); }
inline void store_row(const float* x, int64_t D, bf16* out) {
  for (int64_t i = 0; i < D; ++i) out[i] = bf16_round(x[i]);
}

}  // namespace
}  // namespace codelm
#endif  // CODELM_KERNELS
