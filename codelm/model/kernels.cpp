// codelm's CPU kernels for decoding one token at a time, on x86 with AVX-512 or AVX2 and on
// aarch64 with NEON, registered as torch ops:
//   int8_linear: y (M, N) = x (M, K) @ (q * scale)^T with weight-only int8 q, float x;
//   bf16_linear: y (M, N) = x (M, K) @ w^T (+ bias) with bf16 w, float x, in float;
//   attend_one:  softmax(q k^T / sqrt(D)) v for one query per row and head over a KV cache,
//                whose heads may be shared by groups of query heads (grouped-query attention);
//   decode_block: a whole transformer block for T new tokens per row (T = 1: a decode step; T > 1:
//                speculation's drafts to verify), on the loops above (kernels_step.h).
//
// Decoding at batch 1 reads every weight and the whole cache once per token, so its speed
// is the speed at which these loops stream memory. aten's kernels for CPU do not reach it
// on these 2 cores: _weight_int8pack_mm streams 26-29 GB/s where a plain sum reads 40-70,
// and the flash attention kernel reads a cold `base` cache at about 20-25 GB/s.
// - int8 weights are stored in the order the loop reads them: tiles of R rows, and within
//   a tile the R rows' 16 weights at one column block, one 64-byte line per step. Lines are
//   prefetched PREFETCH bytes ahead. A (4096 x 768) layer streamed from memory: 71 us
//   against aten's 115 (44 against 27 GB/s). Layout: q (N/R, K/16, R, 16) int8, scale (N).
// - bf16_linear reads w as stored, (N, K) row-major, each weight widened to a float exactly
//   and every sum kept in float: x times the widened weights, as aten's F.linear in float
//   gives it. aten's bf16 F.linear rounds x to bf16 and reads `base`'s layers at 13 GB/s for
//   one row, this at 26-28: `base` decodes 80-92 tokens/s instead of 44-52 (bench/generate.py:
//   58-65% of its bf16 bandwidth bound, from 33-36), 1.05-1.09x llama.cpp's bf16 (bench/interop.py).
//   Why rows and not tiles: kernels_linear.h.
// - attend_one makes one pass over the keys (scores), a vectorized exp, and one pass over
//   the values, each row of the cache read once, in order, from a float or a bf16 cache:
//   per `base` layer at 600 positions, cold, 95 us (float) or 54 us (bf16), against
//   155-250 us for torch's flash kernel in float. Query heads that share a kv head
//   (grouped-query attention) are one task where threads allow, so that head is read once:
//   12 query heads over 2 kv heads of 128 at 2,000 positions, 150 us per layer against 255
//   for a task per query head in float; 165 either way in bf16, where the kv head is small
//   enough to stay in L2 between heads.
// - decode_block runs transformer.py's Block for T = 1: norm, qkv, QK-norm (Qwen3's, where the
//   model has it), RoPE at each row's own position, the cache write, attend_one's loops, proj,
//   residual, norm, up, SwiGLU or GELU, down, residual; int8, bf16 or fp32 weights (fp32: the
//   bf16 loop over float rows; `small`'s six blocks, 42 MB, in 0.94 ms, where its 24 layers
//   alone took 1.72 ms by F.linear). In Python a block was ~40 torch ops whose dispatch cost
//   more than their arithmetic. A step's forward after 512 tokens, in ms, before -> with it:
//   `small` int8 1.86 -> 0.91, bf16 2.06 -> 1.06, fp32 3.13 -> 1.73; `tiny` int8 1.01 -> 0.39;
//   `base` int8 6.6 -> 3.5. `bench/generate.py --presets small,base --weights int8,bf16`:
//   `small` int8 525 -> 1,109 tokens/s (34% -> 72% of its bandwidth bound), `base` 105 -> 207
//   (38% -> 76%); the AVX2 branch 537 -> 1,096 and 86 -> 207. One op per block or one over
//   all blocks timed the same (434 against 427-437 us for `small`'s six). The elementwise
//   loops stay on one thread (a few us a block); the GEMVs take both even at `tiny`'s width
//   of 256 (its blocks: 179 us against 257 on one thread).
//   With T > 1 every linear runs on all B * T rows at once (the weights read once), each token
//   at its own position attending to its row's keys up to it, every row's arithmetic the same
//   whatever B and T: a token's outputs are the bits of a T = 1 call (tests/test_fused.py).
//   `small` / `base` int8 at 200 positions, T = 1, 2, 3, 5, 8, in ms, 1 thread (a busy host):
//   through Python for T > 1, 1.01 2.99 3.46 4.65 5.95 / 9.15 15.0 16.0 22.3 30.1; fused, 0.97
//   1.33 1.78 3.03 4.30 / 8.81 9.35 10.8 16.8 24.4. Many rows make the int8 loop compute-bound.
// (Timings on x86, AVX-512; the NEON branch is checked for correctness under qemu only.)
// The loops themselves live in kernels_core.h (attention), kernels_linear.h (weights) and
// kernels_block.h (norms, RoPE, activations), written once against a 16-float vector type,
// free of torch so that tests/kernels_check.cpp can check them on their own. This file adds
// what torch needs: shape checks, threads (at::parallel_for) and the op registration. Built
// and loaded by native.py. Where the core has no vector type (x86 without AVX-512 or AVX2
// with FMA), this file registers nothing and Python keeps aten's kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "kernels_step.h"  // and kernels_block.h, kernels_linear.h, kernels_core.h

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

static_assert(sizeof(bf16) == sizeof(at::BFloat16), "a cache's or weight's bf16 is read as the core's bf16");

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
  at::parallel_for(0, N / R, TILE_GRAIN,
                   [&](int64_t b0, int64_t b1) { int8_tiles(xp, M, K, N, qp, sp, nullptr, b0, b1, yp); });
  return y;
}

// y (M, N) = x (M, K) @ w^T (+ bias); x contiguous float, w (N, K) contiguous bf16 with K a
// multiple of 32 (a line of bf16), bias (N) float. Threads take tiles of R output columns.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous(), "w must be (N, K) bf16");
  int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(K % 32 == 0, "w's width must be a multiple of 32");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (M, K) float");
  TORCH_CHECK(x.size(1) == K, "x's width does not match the weights");
  if (bias)
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N, "bad bias");
  int64_t M = x.size(0);
  auto paired = at::empty_like(x);
  pair_columns(x.data_ptr<float>(), M, K, paired.data_ptr<float>());
  auto y = at::empty({M, N}, x.options());
  const float* xp = paired.data_ptr<float>();
  const bf16* wp = reinterpret_cast<const bf16*>(w.data_ptr<at::BFloat16>());
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (N + R - 1) / R, TILE_GRAIN,
                   [&](int64_t b0, int64_t b1) { dense_tiles(xp, M, K, N, wp, bp, b0, b1, yp); });
  return y;
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
    attend_rows(qc.data_ptr<float>(), reinterpret_cast<const bf16*>(k.data_ptr<at::BFloat16>()),
                reinterpret_cast<const bf16*>(v.data_ptr<at::BFloat16>()), lp, B, H, H / Hkv, S, D, k.stride(0),
                k.stride(1), out.data_ptr<float>());
  else
    TORCH_CHECK(false, "k, v must be float or bf16");
  return out;
}

// x (B, T, C) float: the residual stream of B rows, T new tokens each, after one transformer
// block (transformer.py's Block) whose tensors `params` lists (see PER_BLOCK), writing its keys
// and values into layer `layer` of k, v (L, B, Hkv, max_len, D), float or bf16: the KVCache, or
// a view of its rows. pos (T) shared or (B, T) per row: each token's position, a row's tokens at
// consecutive ones (each token sees its row's keys up to its own position). cos, sin
// (rows, D): transformer.py's rope_tables, or None (learned positions). The norm is RMSNorm or
// LayerNorm (eps), the MLP SwiGLU or GELU's tanh form.
at::Tensor decode_block(const at::Tensor& x, const Params& params, const at::Tensor& k, const at::Tensor& v,
                        int64_t layer, const at::Tensor& pos, const std::optional<at::Tensor>& cos,
                        const std::optional<at::Tensor>& sin, int64_t n_head, bool layernorm, double eps, bool gelu,
                        bool half_rope) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(), "decode_block: bad x");
  TORCH_CHECK(k.dim() == 5 && k.sizes() == v.sizes() && k.strides() == v.strides() &&
                  k.scalar_type() == v.scalar_type() && k.device().is_cpu() &&
                  (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16),
              "decode_block: k, v must be alike (L, B, Hkv, max_len, D) float or bf16 caches");
  int64_t B = k.size(1), C = x.size(-1), D = k.size(4), Hkv = k.size(2);
  TORCH_CHECK(x.dim() == 3 && x.size(0) == B && x.size(1) >= 1, "decode_block: x must be (B, T, C), B cache rows");
  TORCH_CHECK(k.stride(4) == 1 && k.stride(3) == D && layer >= 0 && layer < k.size(0) &&
                  params.size() == PER_BLOCK && n_head % Hkv == 0 && D % 16 == 0,
              "decode_block: the cache, params and x do not match");
  Step s{B * x.size(1), x.size(1), C, n_head, Hkv, D, static_cast<float>(eps), layernorm, gelu, half_rope};
  int64_t table_rows = k.size(3);
  if (cos || sin) {
    TORCH_CHECK(cos && sin && cos->sizes() == sin->sizes() && cos->dim() == 2 && cos->size(1) == D &&
                    cos->scalar_type() == at::kFloat && sin->scalar_type() == at::kFloat && cos->is_contiguous() &&
                    sin->is_contiguous() && cos->device().is_cpu() && sin->device().is_cpu(),
                "decode_block: cos, sin must be (rows, D) contiguous float tables");
    s.cos = cos->data_ptr<float>();
    s.sin = sin->data_ptr<float>();
    table_rows = cos->size(0);
  }
  read_positions(s, pos, k.size(3), table_rows);
  Block blk = block_of(s, params);
  at::Tensor buf = scratch(s, blk);
  at::Tensor out = x.clone();
  int64_t off = layer * k.stride(0), sb = k.stride(1), sh = k.stride(2);
  if (k.scalar_type() == at::kFloat)
    block_step(s, blk, k.data_ptr<float>() + off, v.data_ptr<float>() + off, sb, sh, out.data_ptr<float>());
  else  // bf16: at::BFloat16's bits
    block_step(s, blk, static_cast<bf16*>(k.data_ptr()) + off, static_cast<bf16*>(v.data_ptr()) + off, sb, sh,
               out.data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace codelm

TORCH_LIBRARY(codelm, m) {
  m.def("attend_one(Tensor q, Tensor k, Tensor v, Tensor? lens=None) -> Tensor", &codelm::attend_one);
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale) -> Tensor", &codelm::int8_linear);
  m.def("bf16_linear(Tensor x, Tensor w, Tensor? bias=None) -> Tensor", &codelm::bf16_linear);
  m.def(
      "decode_block(Tensor x, Tensor?[] params, Tensor k, Tensor v, int layer, Tensor pos, Tensor? cos, Tensor? sin, "
      "int n_head, bool layernorm, float eps, bool gelu, bool half_rope) -> Tensor",
      &codelm::decode_block);
}
#endif
