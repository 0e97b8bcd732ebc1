// codelm's CPU kernels for decoding one token at a time, on x86 with AVX-512 or AVX2:
//   int8_linear: y (M, N) = x (M, K) @ (q * scale)^T with weight-only int8 q, float x;
//   attend_one:  softmax(q k^T / sqrt(D)) v for one query per row and head over a KV cache,
//                whose heads may be shared by groups of query heads (grouped-query attention).
//
// Decoding at batch 1 reads every weight and the whole cache once per token, so its speed
// is the speed at which these loops stream memory. aten's kernels for CPU do not reach it
// on these 2 cores: _weight_int8pack_mm streams 26-29 GB/s where a plain sum reads 40-70,
// and the flash attention kernel reads a cold `base` cache at about 20-25 GB/s.
// - int8 weights are stored in the order the loop reads them: tiles of R rows, and within
//   a tile the R rows' 16 weights at one column block, one 64-byte line per step. Lines are
//   prefetched PREFETCH bytes ahead. A (4096 x 768) layer streamed from memory: 71 us
//   against aten's 115 (44 against 27 GB/s). Layout: q (N/R, K/16, R, 16) int8, scale (N).
// - attend_one makes one pass over the keys (scores), a vectorized exp, and one pass over
//   the values, each row of the cache read once, in order, from a float or a bf16 cache:
//   per `base` layer at 600 positions, cold, 95 us (float) or 54 us (bf16), against
//   155-250 us for torch's flash kernel in float. Query heads that share a kv head
//   (grouped-query attention) are one task where threads allow, so that head is read once:
//   12 query heads over 2 kv heads of 128 at 2,000 positions, 150 us per layer against 255
//   for a task per query head in float; 165 either way in bf16, where the kv head is small
//   enough to stay in L2 between heads.
// Written once against V, 16 floats: one AVX-512 register, or two AVX2 ones on CPUs without
// AVX-512 (-march=native picks). Built and loaded by native.py. Without AVX-512 or AVX2 with
// FMA this file registers nothing and Python keeps aten's kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

namespace {

// e^x for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r, |r| <= ln2 / 2,
// e^r by its Taylor series to r^6 (relative error under 2e-7), times 2^n. x is clamped at
// -87 so that 2^n stays a normal float.
#ifdef __AVX512F__
constexpr int MB = 4;  // activation rows per pass over a tile: 16 accumulators of 32 registers
struct V {
  __m512 a;
};
inline V vset(float x) { return {_mm512_set1_ps(x)}; }
inline V vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V vload(const at::BFloat16* p) {  // a bf16 is a float's high half
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
}
inline V vload(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
inline void vstore(float* p, V x) { _mm512_storeu_ps(p, x.a); }
inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.a, b.a, c.a)}; }
inline V vmul(V a, V b) { return {_mm512_mul_ps(a.a, b.a)}; }
inline V vadd(V a, V b) { return {_mm512_add_ps(a.a, b.a)}; }
inline float vsum(V x) { return _mm512_reduce_add_ps(x.a); }
inline V vexp_nonpositive(V v) {
  __m512 x = _mm512_max_ps(v.a, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return {_mm512_scalef_ps(p, n)};
}
#else
constexpr int MB = 1;  // AVX2 has 16 registers: 4 accumulators and 4 weight vectors fill them
struct V {
  __m256 lo, hi;
};
inline V vset(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline V vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline V vload(const at::BFloat16* p) {
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(half)), 16);
  __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(half, 1)), 16);
  return {_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi)};
}
inline V vload(const int8_t* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
inline void vstore(float* p, V x) {
  _mm256_storeu_ps(p, x.lo);
  _mm256_storeu_ps(p + 8, x.hi);
}
inline V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline V vmul(V a, V b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline V vadd(V a, V b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline float vsum(V x) {
  __m256 s = _mm256_add_ps(x.lo, x.hi);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}
inline __m256 exp8(__m256 x) {  // 2^n is built in the exponent bits (AVX2 has no scalef)
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}
inline V vexp_nonpositive(V v) { return {exp8(v.lo), exp8(v.hi)}; }
#endif

constexpr int R = 4;              // weight rows per tile: four independent FMA chains
constexpr int PREFETCH = 4096;    // bytes ahead; 1024: 40 GB/s, 4096: 44 GB/s (noisy host)
constexpr int64_t TILE_GRAIN = 8; // tiles per task of at::parallel_for

// acc[i * R + r] = x[i] . w[r] for mc activation rows and one int8 tile of R rows.
inline void int8_tile(const float* x, int64_t K, int mc, const int8_t* q, float* acc) {
  V a[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) a[i][r] = vset(0.0f);
  for (int64_t k = 0; k < K; k += 16) {
    const int8_t* line = q + k * R;  // the R rows' 16 weights at column k: one cache line
    _mm_prefetch(reinterpret_cast<const char*>(line) + PREFETCH, _MM_HINT_T0);
    V w[R];
    for (int r = 0; r < R; ++r) w[r] = vload(line + r * 16);
    for (int i = 0; i < mc; ++i) {
      V xv = vload(x + i * K + k);
      for (int r = 0; r < R; ++r) a[i][r] = vfma(xv, w[r], a[i][r]);
    }
  }
  for (int i = 0; i < mc; ++i)
    for (int r = 0; r < R; ++r) acc[i * R + r] = vsum(a[i][r]);
}

// y (M, N) = x (M, K) @ (q * scale)^T; x contiguous float, q in tiles (see the top).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kChar && q.size(2) == R && q.size(3) == 16, "bad int8 q");
  int64_t M = x.size(0), K = q.size(1) * 16, N = q.size(0) * R;
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (M, K) float");
  TORCH_CHECK(x.size(1) == K, "x's width does not match the weights");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N, "bad int8 scale");
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N / R, TILE_GRAIN, [&](int64_t b0, int64_t b1) {
    float acc[MB * R];
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        int mc = static_cast<int>(std::min<int64_t>(MB, M - m0));
        int8_tile(xp + m0 * K, K, mc, qp + b * R * K, acc);
        for (int i = 0; i < mc; ++i)
          for (int r = 0; r < R; ++r) yp[(m0 + i) * N + b * R + r] = acc[i * R + r] * sp[b * R + r];
      }
  });
  return y;
}

// out (C * 16) = sum over t of p[t] * v[t], the rows of v read once each, in order.
template <int C, typename T>
void weighted_rows(const float* p, const T* v, int64_t S, float inv, float* out) {
  V a[C];
  for (int c = 0; c < C; ++c) a[c] = vset(0.0f);
  for (int64_t t = 0; t < S; ++t) {
    V w = vset(p[t]);
    for (int c = 0; c < C; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(v + t * C * 16 + c * 16) + PREFETCH, _MM_HINT_T0);
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
      _mm_prefetch(reinterpret_cast<const char*>(v + t * C * 16 + c * 16) + PREFETCH, _MM_HINT_T0);
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
    for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(kt + d) + PREFETCH, _MM_HINT_T0);
    V a = vmul(vload(q), vload(kt));
    for (int64_t d = 16; d < D; d += 16) a = vfma(vload(q + d), vload(kt + d), a);
    scores[t] = vsum(a) * scale;
    top = std::max(top, scores[t]);
  }
  float inv = exp_scores(scores, S, top);
  switch (D / 16) {  // head widths of 16 to 128 keep their sums in registers
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
    for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(kt + d) + PREFETCH, _MM_HINT_T0);
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

// Query head h reads kv head h / G (G query heads per kv head; 1 without grouping). A task
// takes n consecutive query heads of a group, n dividing G: the whole group, so that the kv
// head streams from memory once, unless that leaves threads without a task.
template <typename T>
void attend_rows(const float* qp, const T* kp, const T* vp, const int64_t* lens, int64_t B, int64_t H, int64_t G,
                 int64_t S, int64_t D, int64_t sb, int64_t sh, float* op) {
  float scale = 1.0f / std::sqrt(static_cast<float>(D));
  int64_t n = G;
  while (n > 1 && B * H / n < at::get_num_threads()) {
    do --n;
    while (G % n);
  }
  at::parallel_for(0, B * H / n, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(n * (S + 16) + n);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t first = i * n, b = first / H, h = first % H, off = b * sb + h / G * sh, len = lens ? lens[b] : S;
      if (n == 1)
        attend_head(qp + first * D, kp + off, vp + off, len, D, scale, scores.data(), op + first * D);
      else
        attend_group(qp + first * D, n, kp + off, vp + off, len, D, scale, scores.data(), op + first * D);
    }
  });
}

// q (B, H, 1, D) float; k, v (B, Hkv, S, D) float or bf16, Hkv dividing H, rows of D
// contiguous values (slices of the cache). With `lens` (B), row b attends to its first
// lens[b] positions only (the server's rows, each at its own length).
at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& lens) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat, "q must be (B, H, 1, D) float");
  TORCH_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides() && k.scalar_type() == v.scalar_type(), "bad k, v");
  int64_t B = q.size(0), H = q.size(1), D = q.size(3), S = k.size(2), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && Hkv >= 1 && H % Hkv == 0 && k.size(3) == D && D % 16 == 0, "k, v do not match q");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == D, "k, v rows must be contiguous");
  TORCH_CHECK(S >= 1, "no keys to attend to");
  at::Tensor lc;
  if (lens) {
    lc = lens->to(at::kLong).contiguous();
    TORCH_CHECK(lc.numel() == B && lc.min().item<int64_t>() >= 1 && lc.max().item<int64_t>() <= S, "bad lens");
  }
  const int64_t* lp = lens ? lc.data_ptr<int64_t>() : nullptr;
  auto qc = q.contiguous();
  auto out = at::empty_like(qc);
  if (k.scalar_type() == at::kFloat)
    attend_rows(qc.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), lp, B, H, H / Hkv, S, D,
                k.stride(0), k.stride(1), out.data_ptr<float>());
  else if (k.scalar_type() == at::kBFloat16)
    attend_rows(qc.data_ptr<float>(), k.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>(), lp, B, H, H / Hkv,
                S, D, k.stride(0), k.stride(1), out.data_ptr<float>());
  else
    TORCH_CHECK(false, "k, v must be float or bf16");
  return out;
}

}  // namespace

TORCH_LIBRARY(codelm, m) {
  m.def("attend_one(Tensor q, Tensor k, Tensor v, Tensor? lens=None) -> Tensor", &attend_one);
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale) -> Tensor", &int8_linear);
}
#endif
