// codelm's CPU kernels for decoding one token at a time, on x86 with AVX-512:
//   int8_linear: y (M, N) = x (M, K) @ (q * scale)^T with weight-only int8 q, float x;
//   attend_one:  softmax(q k^T / sqrt(D)) v for one query per row and head over a KV cache.
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
//   155-250 us for torch's flash kernel in float.
// Built and loaded by native.py. Without AVX-512 this file registers nothing and Python
// keeps aten's kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>

namespace {

constexpr int R = 4;              // weight rows per tile: four independent FMA chains
constexpr int MB = 4;             // activation rows per pass over a tile
constexpr int PREFETCH = 4096;    // bytes ahead; 1024: 40 GB/s, 4096: 44 GB/s (noisy host)
constexpr int64_t TILE_GRAIN = 8; // tiles per task of at::parallel_for

// acc[i * R + r] = x[i] . w[r] for mc activation rows and one int8 tile of R rows.
inline void int8_tile(const float* x, int64_t K, int mc, const int8_t* q, float* acc) {
  __m512 a[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) a[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const int8_t* line = q + k * R;  // the R rows' 16 weights at column k: one cache line
    _mm_prefetch(reinterpret_cast<const char*>(line) + PREFETCH, _MM_HINT_T0);
    __m512 w[R];
    for (int r = 0; r < R; ++r)
      w[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(line + r * 16))));
    for (int i = 0; i < mc; ++i) {
      __m512 xv = _mm512_loadu_ps(x + i * K + k);
      for (int r = 0; r < R; ++r) a[i][r] = _mm512_fmadd_ps(xv, w[r], a[i][r]);
    }
  }
  for (int i = 0; i < mc; ++i)
    for (int r = 0; r < R; ++r) acc[i * R + r] = _mm512_reduce_add_ps(a[i][r]);
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

// e^x for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r, |r| <= ln2 / 2,
// e^r by its Taylor series to r^6 (relative error under 2e-7), times 2^n by scalef.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// 16 cache values as floats: a cache holds float or bf16 (a bf16 is a float's high half).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// out (C * 16) = sum over t of p[t] * v[t], the rows of v read once each, in order.
template <int C, typename T>
void weighted_rows(const float* p, const T* v, int64_t S, float inv, float* out) {
  __m512 a[C];
  for (int c = 0; c < C; ++c) a[c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < S; ++t) {
    __m512 w = _mm512_set1_ps(p[t]);
    for (int c = 0; c < C; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(v + t * C * 16 + c * 16) + PREFETCH, _MM_HINT_T0);
      a[c] = _mm512_fmadd_ps(w, load16(v + t * C * 16 + c * 16), a[c]);
    }
  }
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + c * 16, _mm512_mul_ps(a[c], _mm512_set1_ps(inv)));
}

// One query row attending over S keys/values of one head: out (D) = softmax(q k^T * scale) v.
template <typename T>
void attend_head(const float* q, const T* k, const T* v, int64_t S, int64_t D, float scale, float* scores,
                 float* out) {
  float top = -INFINITY;
  for (int64_t t = 0; t < S; ++t) {
    const T* kt = k + t * D;
    for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(kt + d) + PREFETCH, _MM_HINT_T0);
    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q), load16(kt));
    for (int64_t d = 16; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(kt + d), a);
    scores[t] = _mm512_reduce_add_ps(a) * scale;
    top = std::max(top, scores[t]);
  }
  __m512 total = _mm512_setzero_ps(), m = _mm512_set1_ps(top);
  for (int64_t t = 0; t < S; t += 16) {
    __mmask16 live = S - t >= 16 ? 0xFFFF : (__mmask16)((1u << (S - t)) - 1);
    __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, scores + t), m));
    e = _mm512_maskz_mov_ps(live, e);
    _mm512_mask_storeu_ps(scores + t, live, e);
    total = _mm512_add_ps(total, e);
  }
  float inv = 1.0f / _mm512_reduce_add_ps(total);
  switch (D / 16) {  // head widths of 16 to 128 keep their sums in registers
    case 1: return weighted_rows<1>(scores, v, S, inv, out);
    case 2: return weighted_rows<2>(scores, v, S, inv, out);
    case 4: return weighted_rows<4>(scores, v, S, inv, out);
    case 8: return weighted_rows<8>(scores, v, S, inv, out);
  }
  for (int64_t d = 0; d < D; d += 16) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t t = 0; t < S; ++t) a = _mm512_fmadd_ps(_mm512_set1_ps(scores[t]), load16(v + t * D + d), a);
    _mm512_storeu_ps(out + d, _mm512_mul_ps(a, _mm512_set1_ps(inv)));
  }
}

template <typename T>
void attend_rows(const float* qp, const T* kp, const T* vp, const int64_t* lens, int64_t B, int64_t H, int64_t S,
                 int64_t D, int64_t sb, int64_t sh, float* op) {
  float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(S + 16);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t b = i / H, h = i % H, off = b * sb + h * sh;
      attend_head(qp + i * D, kp + off, vp + off, lens ? lens[b] : S, D, scale, scores.data(), op + i * D);
    }
  });
}

// q (B, H, 1, D) float; k, v (B, H, S, D) float or bf16, rows of D contiguous values (slices
// of the cache). With `lens` (B), row b attends to its first lens[b] positions only (the
// server's rows, each at its own length).
at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& lens) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat, "q must be (B, H, 1, D) float");
  TORCH_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides() && k.scalar_type() == v.scalar_type(), "bad k, v");
  int64_t B = q.size(0), H = q.size(1), D = q.size(3), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && D % 16 == 0, "k, v do not match q");
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
    attend_rows(qc.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), lp, B, H, S, D, k.stride(0),
                k.stride(1), out.data_ptr<float>());
  else if (k.scalar_type() == at::kBFloat16)
    attend_rows(qc.data_ptr<float>(), k.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>(), lp, B, H, S, D,
                k.stride(0), k.stride(1), out.data_ptr<float>());
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
