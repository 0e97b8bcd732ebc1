// The torch-free core of codelm's CPU decode kernels (kernels.cpp registers them as torch ops):
// a 16-float vector type V for each instruction set, a vectorized exp and the one-token
// attention loops; the weight loops (int8, bf16, fp32) are in kernels_linear.h and a block's
// elementwise loops (norms, RoPE, activations) in kernels_block.h, on the same V. Kept
// apart from torch so that tests/kernels_check.cpp can compile the same loops on their own,
// natively and cross-compiled for aarch64 (run under qemu), and compare them with a scalar
// reference: the loops are written once, and only V differs between x86 and ARM.
//
// V is 16 floats: one AVX-512 register, two AVX2 ones on x86 CPUs without AVX-512, or four
// NEON ones on aarch64 (-march picks). Where none applies, CODELM_KERNELS stays undefined
// and this header defines nothing else: kernels.cpp then registers no op.
//
// Threads are the caller's: int8_tiles, dense_tiles and attend_tasks each do one slice of the
// work (tiles b0..b1, tasks i0..i1); kernels.cpp hands the slices to at::parallel_for, the
// check program calls them directly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define CODELM_KERNELS 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define CODELM_KERNELS 1
#endif

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

// A bf16 as stored in a cache: a float's high 16 bits (at::BFloat16 has the same layout).
struct bf16 {
  uint16_t bits;
};

// e^x for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r, |r| <= ln2 / 2,
// e^r by its Taylor series to r^6 (relative error under 2e-7), times 2^n. x is clamped at
// -87 so that 2^n stays a normal float. Each branch's vexp_nonpositive computes exactly this.
constexpr float EXP_FLOOR = -87.0f, LOG2E = 1.44269504f;
constexpr float LN2_HI = 0.693145752f, LN2_LO = 1.42860677e-6f;  // ln 2 in two parts
constexpr float EXP_TAYLOR[] = {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};  // Horner's, after 1/720

#if defined(__AVX512F__)
constexpr const char* ISA = "avx512";
constexpr int MB = 4;  // activation rows per pass over a tile: 16 accumulators of 32 registers
struct V {
  __m512 a;
};
inline V vset(float x) { return {_mm512_set1_ps(x)}; }
inline V vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V vload(const bf16* p) {  // a bf16 is a float's high half
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
}
inline V vload(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
// 32 bf16 (one 64-byte line) as floats: the even-indexed ones p[0], p[2] .. p[30] and the odd
// ones. Each 32-bit word holds a pair; a bf16 is a float's high half, so shifting the word left
// 16 bits gives the even one, masking off its low half the odd one: two instructions for 32
// weights, where widening 16 at a time (vload above) takes four (see dense_tile).
inline void vload_pairs(const bf16* p, V& even, V& odd) {
  __m512i w = _mm512_loadu_si512(p);
  even = {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  odd = {_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))))};
}
inline void vstore(float* p, V x) { _mm512_storeu_ps(p, x.a); }
inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.a, b.a, c.a)}; }
inline V vmul(V a, V b) { return {_mm512_mul_ps(a.a, b.a)}; }
inline V vadd(V a, V b) { return {_mm512_add_ps(a.a, b.a)}; }
inline V vdiv(V a, V b) { return {_mm512_div_ps(a.a, b.a)}; }
inline V vmin(V a, V b) { return {_mm512_min_ps(a.a, b.a)}; }
inline float vsum(V x) { return _mm512_reduce_add_ps(x.a); }
inline V vexp_nonpositive(V v) {
  __m512 x = _mm512_max_ps(v.a, _mm512_set1_ps(EXP_FLOOR));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : EXP_TAYLOR) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return {_mm512_scalef_ps(p, n)};
}
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

#elif defined(__AVX2__)
constexpr const char* ISA = "avx2";
constexpr int MB = 1;  // AVX2 has 16 registers: 4 accumulators and 4 weight vectors fill them
struct V {
  __m256 lo, hi;
};
inline V vset(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline V vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline V vload(const bf16* p) {
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(half)), 16);
  __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(half, 1)), 16);
  return {_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi)};
}
inline V vload(const int8_t* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
inline void vload_pairs(const bf16* p, V& even, V& odd) {  // as on AVX-512, in two halves
  const __m256i* q = reinterpret_cast<const __m256i*>(p);
  __m256i lo = _mm256_loadu_si256(q), hi = _mm256_loadu_si256(q + 1);
  __m256i mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  even = {_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16))};
  odd = {_mm256_castsi256_ps(_mm256_and_si256(lo, mask)), _mm256_castsi256_ps(_mm256_and_si256(hi, mask))};
}
inline void vstore(float* p, V x) {
  _mm256_storeu_ps(p, x.lo);
  _mm256_storeu_ps(p + 8, x.hi);
}
inline V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline V vmul(V a, V b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline V vadd(V a, V b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline V vdiv(V a, V b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
inline V vmin(V a, V b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
inline float vsum(V x) {
  __m256 s = _mm256_add_ps(x.lo, x.hi);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}
inline __m256 exp8(__m256 x) {  // 2^n is built in the exponent bits (AVX2 has no scalef)
  x = _mm256_max_ps(x, _mm256_set1_ps(EXP_FLOOR));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  for (float c : EXP_TAYLOR) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}
inline V vexp_nonpositive(V v) { return {exp8(v.lo), exp8(v.hi)}; }
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

#else  // aarch64: NEON is in every aarch64 CPU
constexpr const char* ISA = "neon";
// 32 registers of 4 floats: R = 4 accumulators and 4 weight vectors, 4 registers each, take
// all 32 with one activation row, so one row per pass, as on AVX2 (not timed on ARM yet).
constexpr int MB = 1;
struct V {
  float32x4_t a, b, c, d;  // floats 0-3, 4-7, 8-11, 12-15
};
inline V vset(float x) {
  float32x4_t s = vdupq_n_f32(x);
  return {s, s, s, s};
}
inline V vload(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4), vld1q_f32(p + 8), vld1q_f32(p + 12)}; }
inline V vload(const bf16* p) {  // widen each 16 bits to 32 and shift them into the high half
  const uint16_t* u = reinterpret_cast<const uint16_t*>(p);
  uint16x8_t lo = vld1q_u16(u), hi = vld1q_u16(u + 8);
  return {vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(lo), 16)), vreinterpretq_f32_u32(vshll_high_n_u16(lo, 16)),
          vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(hi), 16)), vreinterpretq_f32_u32(vshll_high_n_u16(hi, 16))};
}
inline V vload(const int8_t* p) {  // int8 -> int16 -> int32 -> float
  int8x16_t b = vld1q_s8(p);
  int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_high_s8(b);
  return {vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), vcvtq_f32_s32(vmovl_high_s16(lo)),
          vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), vcvtq_f32_s32(vmovl_high_s16(hi))};
}
inline void vload_pairs(const bf16* p, V& even, V& odd) {  // as on AVX-512, in four quarters
  const uint32_t* u = reinterpret_cast<const uint32_t*>(p);
  uint32x4_t a = vld1q_u32(u), b = vld1q_u32(u + 4), c = vld1q_u32(u + 8), d = vld1q_u32(u + 12);
  uint32x4_t m = vdupq_n_u32(0xffff0000u);
  even = {vreinterpretq_f32_u32(vshlq_n_u32(a, 16)), vreinterpretq_f32_u32(vshlq_n_u32(b, 16)),
          vreinterpretq_f32_u32(vshlq_n_u32(c, 16)), vreinterpretq_f32_u32(vshlq_n_u32(d, 16))};
  odd = {vreinterpretq_f32_u32(vandq_u32(a, m)), vreinterpretq_f32_u32(vandq_u32(b, m)),
         vreinterpretq_f32_u32(vandq_u32(c, m)), vreinterpretq_f32_u32(vandq_u32(d, m))};
}
inline void vstore(float* p, V x) {
  vst1q_f32(p, x.a);
  vst1q_f32(p + 4, x.b);
  vst1q_f32(p + 8, x.c);
  vst1q_f32(p + 12, x.d);
}
inline V vfma(V a, V b, V c) {  // vfmaq_f32(c, a, b) = c + a * b, fused
  return {vfmaq_f32(c.a, a.a, b.a), vfmaq_f32(c.b, a.b, b.b), vfmaq_f32(c.c, a.c, b.c), vfmaq_f32(c.d, a.d, b.d)};
}
inline V vmul(V a, V b) { return {vmulq_f32(a.a, b.a), vmulq_f32(a.b, b.b), vmulq_f32(a.c, b.c), vmulq_f32(a.d, b.d)}; }
inline V vadd(V a, V b) { return {vaddq_f32(a.a, b.a), vaddq_f32(a.b, b.b), vaddq_f32(a.c, b.c), vaddq_f32(a.d, b.d)}; }
inline V vdiv(V a, V b) { return {vdivq_f32(a.a, b.a), vdivq_f32(a.b, b.b), vdivq_f32(a.c, b.c), vdivq_f32(a.d, b.d)}; }
inline V vmin(V a, V b) { return {vminq_f32(a.a, b.a), vminq_f32(a.b, b.b), vminq_f32(a.c, b.c), vminq_f32(a.d, b.d)}; }
inline float vsum(V x) { return vaddvq_f32(vaddq_f32(vaddq_f32(x.a, x.b), vaddq_f32(x.c, x.d))); }
inline float32x4_t exp4(float32x4_t x) {  // 2^n built in the exponent bits, as on AVX2
  x = vmaxq_f32(x, vdupq_n_f32(EXP_FLOOR));
  float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));  // to nearest, ties to even
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));           // x - n * LN2_HI, fused
  r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
  float32x4_t p = vdupq_n_f32(1.0f / 720);
  for (float c : EXP_TAYLOR) p = vfmaq_f32(vdupq_n_f32(c), p, r);
  int32x4_t two_n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(two_n));
}
inline V vexp_nonpositive(V v) { return {exp4(v.a), exp4(v.b), exp4(v.c), exp4(v.d)}; }
inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }  // PRFM PLDL1KEEP
// GCC 12 for aarch64 judges int8_tile's loop over activation rows too big to unroll (a V is
// four registers here) and then keeps all 16 accumulators in memory: a load and a store on
// the stack around every FMA of the loop (seen in its assembly). Unrolled, 15 of the 16 stay
// in registers. x86 compilers unroll it unasked, so x86 goes without the hint, unchanged.
#define CODELM_UNROLL_ROWS _Pragma("GCC unroll 4")
#endif
#ifndef CODELM_UNROLL_ROWS
#define CODELM_UNROLL_ROWS
#endif

constexpr int PREFETCH = 4096;  // bytes ahead; 1024: 40 GB/s, 4096: 44 GB/s (noisy host)

// out (C * 16) = sum over t of p[t] * v[t], the rows of v read once each, in order.
template <int C, typename T>
void weighted_rows(const float* p, const T* v, int64_t S, float inv, float* out) {
  V a[C];
  for (int c = 0; c < C; ++c) a[c] = vset(0.0f);
  for (int64_t t = 0; t < S; ++t) {
    V w = vset(p[t]);
    for (int c = 0; c < C; ++c) {
      prefetch(reinterpret_cast<const char*>(v + t * C * 16 + c * 16) + PREFETCH);
      a[c] = vfma(w, vload(v + t * C * 16 + c * 16), a[c]);
    }
  }
  for (int c = 0; c < C; ++c) vstore(out + c * 16, vmul(a[c], vset(inv)));
}

// out (C * 16) += sum over t of p[t] * v[t]: weighted_rows for one block of rows, its sums
// kept in `out` between blocks (the same additions in the same order, so the same floats).
template <int C, typename T>
void add_weighted_rows(const float* p, const T* v, int64_t S, float* out) {
  V a[C];
  for (int c = 0; c < C; ++c) a[c] = vload(out + c * 16);
  for (int64_t t = 0; t < S; ++t) {
    V w = vset(p[t]);
    for (int c = 0; c < C; ++c) {
      prefetch(reinterpret_cast<const char*>(v + t * C * 16 + c * 16) + PREFETCH);
      a[c] = vfma(w, vload(v + t * C * 16 + c * 16), a[c]);
    }
  }
  for (int c = 0; c < C; ++c) vstore(out + c * 16, a[c]);
}

template <typename T>
void add_weighted_rows(const float* p, const T* v, int64_t S, int64_t D, float* out) {
  switch (D / 16) {
    case 1: return add_weighted_rows<1>(p, v, S, out);
    case 2: return add_weighted_rows<2>(p, v, S, out);
    case 4: return add_weighted_rows<4>(p, v, S, out);
    case 8: return add_weighted_rows<8>(p, v, S, out);
  }
  for (int64_t d = 0; d < D; d += 16) {
    V a = vload(out + d);
    for (int64_t t = 0; t < S; ++t) a = vfma(vset(p[t]), vload(v + t * D + d), a);
    vstore(out + d, a);
  }
}

// scores (S) <- e^(scores - top), padded to a multiple of 16; returns 1 / their sum.
inline float exp_scores(float* scores, int64_t S, float top) {
  int64_t padded = (S + 15) / 16 * 16;
  for (int64_t t = S; t < padded; ++t) scores[t] = -INFINITY;  // e^-87 each: 1e-38 of a sum >= 1
  V total = vset(0.0f), minus_top = vset(-top);
  for (int64_t t = 0; t < padded; t += 16) {
    V e = vexp_nonpositive(vadd(vload(scores + t), minus_top));
    vstore(scores + t, e);
    total = vadd(total, e);
  }
  return 1.0f / vsum(total);
}

// One query row attending over S keys/values of one head: out (D) = softmax(q k^T * scale) v.
// `scores` has room for S rounded up to 16.
template <typename T>
void attend_head(const float* q, const T* k, const T* v, int64_t S, int64_t D, float scale, float* scores,
                 float* out) {
  float top = -INFINITY;
  for (int64_t t = 0; t < S; ++t) {
    const T* kt = k + t * D;
    for (int64_t d = 0; d < D; d += 16) prefetch(reinterpret_cast<const char*>(kt + d) + PREFETCH);
    V a = vmul(vload(q), vload(kt));
    for (int64_t d = 16; d < D; d += 16) a = vfma(vload(q + d), vload(kt + d), a);
    scores[t] = vsum(a) * scale;
    top = std::max(top, scores[t]);
  }
  float inv = exp_scores(scores, S, top);
  switch (D / 16) {  // head widths of 16 to 128 keep their sums in registers (NEON: to 64)
    case 1: return weighted_rows<1>(scores, v, S, inv, out);
    case 2: return weighted_rows<2>(scores, v, S, inv, out);
    case 4: return weighted_rows<4>(scores, v, S, inv, out);
    case 8: return weighted_rows<8>(scores, v, S, inv, out);
  }
  for (int64_t d = 0; d < D; d += 16) {
    V a = vset(0.0f);
    for (int64_t t = 0; t < S; ++t) a = vfma(vset(scores[t]), vload(v + t * D + d), a);
    vstore(out + d, vmul(a, vset(inv)));
  }
}

constexpr int64_t VBLOCK = 32;  // value rows per block of attend_group: 4-16 KB, stays in L1

// n query rows sharing one kv head (grouped-query attention), q and out (n, D): attend_head
// for each, giving the same floats, but each key and value row read from memory once for
// all n. A key row stays in L1 for its n dot products; values go in blocks of VBLOCK rows,
// each block added into the n outputs in turn. `scores` has room for n rows of S rounded
// up to 16, then n more floats.
template <typename T>
void attend_group(const float* q, int64_t n, const T* k, const T* v, int64_t S, int64_t D, float scale,
                  float* scores, float* out) {
  int64_t P = (S + 15) / 16 * 16;
  float* top = scores + n * P;  // each row's largest score, then 1 / its sum of exps
  for (int64_t g = 0; g < n; ++g) top[g] = -INFINITY;
  for (int64_t t = 0; t < S; ++t) {
    const T* kt = k + t * D;
    for (int64_t d = 0; d < D; d += 16) prefetch(reinterpret_cast<const char*>(kt + d) + PREFETCH);
    for (int64_t g = 0; g < n; ++g) {
      const float* qg = q + g * D;
      V a = vmul(vload(qg), vload(kt));
      for (int64_t d = 16; d < D; d += 16) a = vfma(vload(qg + d), vload(kt + d), a);
      scores[g * P + t] = vsum(a) * scale;
      top[g] = std::max(top[g], scores[g * P + t]);
    }
  }
  for (int64_t g = 0; g < n; ++g) top[g] = exp_scores(scores + g * P, S, top[g]);
  std::fill(out, out + n * D, 0.0f);
  for (int64_t t0 = 0; t0 < S; t0 += VBLOCK)
    for (int64_t g = 0; g < n; ++g)
      add_weighted_rows(scores + g * P + t0, v + t0 * D, std::min(VBLOCK, S - t0), D, out + g * D);
  for (int64_t g = 0; g < n; ++g)
    for (int64_t d = 0; d < D; d += 16) vstore(out + g * D + d, vmul(vload(out + g * D + d), vset(top[g])));
}

// Query heads per task of attend_tasks: n dividing G (query heads per kv head), the whole
// group so that the kv head streams from memory once, unless that leaves some of `threads`
// without a task (B * H query heads in all).
inline int64_t heads_per_task(int64_t G, int64_t BH, int64_t threads) {
  int64_t n = G;
  while (n > 1 && BH / n < threads) {
    do --n;
    while (G % n);
  }
  return n;
}

// Tasks i0..i1 of one-token attention, task i being query heads i * n to i * n + n - 1 (n
// dividing G) of the B * H: query head h of row b reads kv head h / G at k + c * sb + h / G * sh,
// c = b / per_row its cache row (rows of D contiguous values; per_row > 1: the tokens of one
// cache row, each a query row), over its first lens[b] positions (all S without `lens`).
// q and out (B, H, D) contiguous.
template <typename T>
void attend_tasks(int64_t i0, int64_t i1, int64_t n, const float* qp, const T* kp, const T* vp, const int64_t* lens,
                  int64_t H, int64_t G, int64_t S, int64_t D, int64_t sb, int64_t sh, float* op,
                  int64_t per_row = 1) {
  float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> scores(n * (S + 16) + n);
  for (int64_t i = i0; i < i1; ++i) {
    int64_t first = i * n, b = first / H, h = first % H, len = lens ? lens[b] : S;
    int64_t off = b / per_row * sb + h / G * sh;
    if (n == 1)
      attend_head(qp + first * D, kp + off, vp + off, len, D, scale, scores.data(), op + first * D);
    else
      attend_group(qp + first * D, n, kp + off, vp + off, len, D, scale, scores.data(), op + first * D);
  }
}

}  // namespace
}  // namespace codelm
#endif  // CODELM_KERNELS
