// codelm's weight loops for decoding, torch-free like kernels_core.h and on its vector type V:
// y (M, N) = x (M, K) @ w^T (+ bias) for the few rows of x of a decode step, from int8 weights
// in tiles (int8_tiles) or plain row-major bf16 or fp32 weights (dense_tiles), every sum in
// float. Each reads the weights once per MB rows of x: decoding streams them from memory, and
// these loops are that stream. kernels.cpp registers them as int8_linear and bf16_linear and
// runs them inside decode_block (fp32 weights only there); tests/kernels_check.cpp checks them.
#pragma once

#include "kernels_core.h"

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

constexpr int R = 4;  // weight rows per tile: four independent FMA chains

// acc[i * R + r] = x[i] . w[r] for mc activation rows and one int8 tile of R rows.
inline void int8_tile(const float* x, int64_t K, int mc, const int8_t* q, float* acc) {
  V a[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) a[i][r] = vset(0.0f);
  for (int64_t k = 0; k < K; k += 16) {
    const int8_t* line = q + k * R;  // the R rows' 16 weights at column k: one cache line
    prefetch(line + PREFETCH);
    V w[R];
    for (int r = 0; r < R; ++r) w[r] = vload(line + r * 16);
    CODELM_UNROLL_ROWS
    for (int i = 0; i < mc; ++i) {
      V xv = vload(x + i * K + k);
      for (int r = 0; r < R; ++r) a[i][r] = vfma(xv, w[r], a[i][r]);
    }
  }
  for (int i = 0; i < mc; ++i)
    for (int r = 0; r < R; ++r) acc[i * R + r] = vsum(a[i][r]);
}

// Tiles b0..b1 of y (M, N) = x (M, K) @ (q * scale)^T (+ bias): y's columns b0 * R to b1 * R,
// all M rows. x contiguous float; q (N/R, K/16, R, 16) int8, scale (N) (see kernels.cpp's top);
// bias (N) or null.
inline void int8_tiles(const float* x, int64_t M, int64_t K, int64_t N, const int8_t* q, const float* scale,
                       const float* bias, int64_t b0, int64_t b1, float* y) {
  float acc[MB * R];
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
      int mc = static_cast<int>(std::min<int64_t>(MB, M - m0));
      int8_tile(x + m0 * K, K, mc, q + b * R * K, acc);
      for (int i = 0; i < mc; ++i)
        for (int r = 0; r < R; ++r) {
          float v = acc[i * R + r] * scale[b * R + r];
          y[(m0 + i) * N + b * R + r] = bias ? v + bias[b * R + r] : v;
        }
    }
}

// The bf16 GEMV reads the weights as they are, (N, K) row-major, R rows at a time, each row's
// next line prefetched DENSE_PREFETCH bytes ahead along it. Timed in a standalone loop over the
// 4 layer shapes of `base` and its head (195 MB, 2 threads, AVX-512), in GB/s of weights read
// at 1 | 4 rows of x: rows prefetched 16 KB ahead 29-31 | 21-22, 4 KB ahead 28 | 20; int8's
// tile order (one line of R rows per step) 24-28 | 21-25 at its best distance. Tiles gain
// nothing here, and row-major weights serve the prompt's GEMM as they are. Widening in pairs
// (vload_pairs) rather than 16 at a time: 29-31 against 26-28 at 1 row. _mm512_dpbf16_ps
// would need x rounded to bf16; split into three bf16 parts to stay exact, it read 17-18 | 8-10.
constexpr int DENSE_PREFETCH = 16384;

// x (M, K) with the columns of each block of 32 in the order vload_pairs gives the weights':
// the 16 even-indexed ones, then the 16 odd ones. K a multiple of 32.
inline void pair_columns(const float* x, int64_t M, int64_t K, float* out) {
  for (int64_t i = 0; i < M * K; i += 32)
    for (int j = 0; j < 16; ++j) {
      out[i + j] = x[i + 2 * j];
      out[i + 16 + j] = x[i + 2 * j + 1];
    }
}

// 32 weights of a row in the column order of the x they meet: bf16 as vload_pairs widens them
// (x paired by pair_columns), floats as stored (x as it is). fp32 weights take the same loops
// as bf16 (decode_block's small models): a line of 32 is two cache lines there.
inline void vload_line(const bf16* w, V& a, V& b) { vload_pairs(w, a, b); }
inline void vload_line(const float* w, V& a, V& b) {
  a = vload(w);
  b = vload(w + 16);
}

// acc[i * R + r] = x[i] . w[r] for MC rows of x and NR rows of w (row stride K), x in the
// order vload_line gives w's columns. x's rows are loaded first and each weight line used as
// soon as it is widened, so that the sums, x and one line fit in registers on every branch
// (NEON: 16 + 8 + 8 of 32); widening all NR lines first, GCC kept 7 of NEON's sums on the
// stack (28 stack accesses in the loop, seen in its assembly), at the same speed on x86.
template <int NR, int MC, typename W>
void dense_tile(const float* x, int64_t K, const W* w, float* acc) {
  V a[MC][NR];
  for (int i = 0; i < MC; ++i)
    for (int r = 0; r < NR; ++r) a[i][r] = vset(0.0f);
  for (int64_t k = 0; k < K; k += 32) {
    V xe[MC], xo[MC];
    for (int i = 0; i < MC; ++i) {
      xe[i] = vload(x + i * K + k);
      xo[i] = vload(x + i * K + k + 16);
    }
    for (int r = 0; r < NR; ++r) {
      for (size_t line = 0; line < 32 * sizeof(W); line += 64)
        prefetch(reinterpret_cast<const char*>(w + r * K + k) + line + DENSE_PREFETCH);
      V lo, hi;
      vload_line(w + r * K + k, lo, hi);
      for (int i = 0; i < MC; ++i) a[i][r] = vfma(xo[i], hi, vfma(xe[i], lo, a[i][r]));
    }
  }
  for (int i = 0; i < MC; ++i)
    for (int r = 0; r < NR; ++r) acc[i * R + r] = vsum(a[i][r]);
}

// dense_tile for mc <= MB rows, mc made a constant: with a variable count (int8_tile's loop)
// bf16_linear read `base`'s layers at 24-25 GB/s for one row, with a constant at 26-28.
template <int NR, int MC = MB, typename W>
void dense_rows(const float* x, int64_t K, int mc, const W* w, float* acc) {
  if constexpr (MC > 1)
    if (mc < MC) return dense_rows<NR, MC - 1>(x, K, mc, w, acc);
  dense_tile<NR, MC>(x, K, w, acc);
}

// Tiles b0..b1 of y (M, N) = x (M, K) @ w^T (+ bias): tile b is y's columns b * R to
// min(b * R + R, N), all M rows; the last tile of an N that R does not divide is done a row
// at a time. w (N, K) bf16 or float row-major with K a multiple of 32, x in the order
// vload_line gives w's columns (bf16: paired, pair_columns), bias (N) or null.
template <typename W>
void dense_tiles(const float* x, int64_t M, int64_t K, int64_t N, const W* w, const float* bias, int64_t b0,
                 int64_t b1, float* y) {
  float acc[MB * R];
  for (int64_t b = b0; b < b1; ++b) {
    int64_t n0 = b * R;
    int nr = static_cast<int>(std::min<int64_t>(R, N - n0));
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
      int mc = static_cast<int>(std::min<int64_t>(MB, M - m0));
      if (nr == R)
        dense_rows<R>(x + m0 * K, K, mc, w + n0 * K, acc);
      else
        for (int r = 0; r < nr; ++r) dense_rows<1>(x + m0 * K, K, mc, w + (n0 + r) * K, acc + r);
      for (int i = 0; i < mc; ++i)
        for (int r = 0; r < nr; ++r) {
          float v = acc[i * R + r];
          y[(m0 + i) * N + n0 + r] = bias ? v + bias[n0 + r] : v;
        }
    }
  }
}

}  // namespace
}  // namespace codelm
#endif  // CODELM_KERNELS
