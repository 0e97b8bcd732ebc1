// codelm's CPU kernels for decoding one token at a time, on x86 with AVX-512 or AVX2 and on
// aarch64 with NEON, registered as torch ops:
//   int8_linear: y (M, N) = x (M, K) @ (q * scale)^T with weight-only int8 q, float x;
//   bf16_linear: y (M, N) = x (M, K) @ w^T (+ bias) with bf16 w, float x, in float;
//   attend_one:  softmax(q k^T / sqrt(D)) v for one query per row and head over a KV cache,
//                whose heads may be shared by groups of query heads (grouped-query attention);
//   decode_block: a whole transformer block for one new token per row, on the loops above.
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
// - decode_block runs transformer.py's Block for T = 1: norm, qkv, RoPE at each row's own
//   position, the cache write, attend_one's loops, proj, residual, norm, up, SwiGLU or GELU,
//   down, residual; int8, bf16 or fp32 weights (fp32: the bf16 loop over float rows; `small`'s
//   six blocks, 42 MB, in 0.94 ms, where its 24 layers alone took 1.72 ms by F.linear). In
//   Python a block was ~40 torch ops whose dispatch cost more than their arithmetic. A step's
//   forward after 512 tokens, in ms, before -> with it: `small` int8 1.86 -> 0.91, bf16 2.06 ->
//   1.06, fp32 3.13 -> 1.73; `tiny` int8 1.01 -> 0.39; `base` int8 6.6 -> 3.5. `bench/generate.py
//   --presets small,base --weights int8,bf16`: `small` int8 525 -> 1,109 tokens/s (34% -> 72%
//   of its bandwidth bound), `base` 105 -> 207 (38% -> 76%); the AVX2 branch 537 -> 1,096 and
//   86 -> 207. One op per block or one over all blocks timed the same (434 against 427-437 us
//   for `small`'s six). The elementwise loops stay on one thread (a few us a block); the GEMVs
//   take both even at `tiny`'s width of 256 (its blocks: 179 us against 257 on one thread).
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

#include "kernels_block.h"
#include "kernels_linear.h"  // and kernels_core.h

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

static_assert(sizeof(bf16) == sizeof(at::BFloat16), "a cache's or weight's bf16 is read as the core's bf16");

constexpr int64_t TILE_GRAIN = 8;  // tiles per task of at::parallel_for

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

// Query heads are grouped into tasks by heads_per_task (kernels_core.h): whole groups that
// share a kv head where that leaves every thread a task.
template <typename T>
void attend_rows(const float* qp, const T* kp, const T* vp, const int64_t* lens, int64_t B, int64_t H, int64_t G,
                 int64_t S, int64_t D, int64_t sb, int64_t sh, float* op) {
  int64_t n = heads_per_task(G, B * H, at::get_num_threads());
  at::parallel_for(0, B * H / n, 1, [&](int64_t i0, int64_t i1) {
    attend_tasks(i0, i1, n, qp, kp, vp, lens, H, G, S, D, sb, sh, op);
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
    attend_rows(qc.data_ptr<float>(), reinterpret_cast<const bf16*>(k.data_ptr<at::BFloat16>()),
                reinterpret_cast<const bf16*>(v.data_ptr<at::BFloat16>()), lp, B, H, H / Hkv, S, D, k.stride(0),
                k.stride(1), out.data_ptr<float>());
  else
    TORCH_CHECK(false, "k, v must be float or bf16");
  return out;
}

// --- decode_block: a transformer block for one new token per row -------------------------------

// A block's tensors in decode_block's `params`, in this order (quantize.py's fused_step lists
// them): norm1's weight and bias, qkv's weight, scale and bias, proj's three, norm2's two, up's
// three, down's three; biases and non-int8 scales may be None.
constexpr int64_t PER_BLOCK = 16;
using Params = c10::List<std::optional<at::Tensor>>;

// A linear layer as generation stores it (codelm/generate/quantize.py): int8 tiles (N/R, K/16,
// R, 16) with float scales (N), or (N, K) row-major bf16 or float; a float bias (N) or none.
struct Linear {
  at::ScalarType type;
  const void* w;
  const float* scale;
  const float* bias;
  int64_t N, K;
};

struct Norm {
  const float* w;
  const float* b;  // LayerNorm's bias, or null
};

struct Block {
  Norm norm1;
  Linear qkv, proj;
  Norm norm2;
  Linear up, down;
};

// params[i]: null when None, else its n contiguous floats.
const float* floats(const Params& params, int64_t i, int64_t n) {
  std::optional<at::Tensor> t = params.get(i);
  if (!t) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n && t->device().is_cpu(),
              "decode_block: parameter ", i, " must be ", n, " contiguous floats");
  return t->data_ptr<float>();
}

// The linear layer at params[i .. i+2] (weight, scale, bias), whose input is K wide.
Linear linear_at(const Params& params, int64_t i, int64_t K) {
  std::optional<at::Tensor> w = params.get(i);
  TORCH_CHECK(w && w->is_contiguous() && w->device().is_cpu(), "decode_block: parameter ", i, " must be a weight");
  Linear l{w->scalar_type(), w->data_ptr(), nullptr, nullptr, 0, K};
  if (l.type == at::kChar) {
    TORCH_CHECK(w->dim() == 4 && w->size(1) * 16 == K && w->size(2) == R && w->size(3) == 16,
                "decode_block: parameter ", i, " is not int8 tiles for an input of ", K);
    l.N = w->size(0) * R;
    l.scale = floats(params, i + 1, l.N);
    TORCH_CHECK(l.scale, "decode_block: int8 weights need their scales");
  } else {
    TORCH_CHECK((l.type == at::kBFloat16 || l.type == at::kFloat) && w->dim() == 2 && w->size(1) == K && K % 32 == 0,
                "decode_block: parameter ", i, " must be int8 tiles or (N, ", K, ") bf16 or float, K a multiple of 32");
    l.N = w->size(0);
  }
  l.bias = floats(params, i + 2, l.N);
  return l;
}

// y (M, N) = x (M, K) @ w^T (+ bias), threads taking tiles of R outputs as in the ops above;
// `paired` has room for x, in bf16's column order.
void linear(const Linear& l, const float* x, int64_t M, float* paired, float* y) {
  auto tiles = [&](auto slice) { at::parallel_for(0, (l.N + R - 1) / R, TILE_GRAIN, slice); };
  if (l.type == at::kChar) {
    auto q = static_cast<const int8_t*>(l.w);
    tiles([&](int64_t b0, int64_t b1) { int8_tiles(x, M, l.K, l.N, q, l.scale, l.bias, b0, b1, y); });
  } else if (l.type == at::kBFloat16) {
    pair_columns(x, M, l.K, paired);
    auto w = static_cast<const bf16*>(l.w);
    tiles([&](int64_t b0, int64_t b1) { dense_tiles(paired, M, l.K, l.N, w, l.bias, b0, b1, y); });
  } else {
    auto w = static_cast<const float*>(l.w);
    tiles([&](int64_t b0, int64_t b1) { dense_tiles(x, M, l.K, l.N, w, l.bias, b0, b1, y); });
  }
}

// A block's step: the shapes, the norm and MLP kinds, RoPE's tables (null for learned
// positions) and each row's position; scratch rows for the activations.
struct Step {
  int64_t B, C, H, Hkv, D;
  float eps;
  bool layernorm, gelu, half_rope;
  const float* cos;
  const float* sin;
  std::vector<int64_t> pos, lens;  // row b's new token sits at pos[b] and sees lens[b] = pos[b] + 1 keys
  int64_t S;                       // the most keys a row sees
  float *h, *qkv, *q, *att, *up, *act, *y, *paired, *swapped, *rotated;
};

void normalize(const Step& s, const Norm& n, const float* x, float* out) {
  for (int64_t b = 0; b < s.B; ++b) {
    if (s.layernorm)
      layernorm(x + b * s.C, s.C, n.w, n.b, s.eps, out + b * s.C);
    else
      rmsnorm(x + b * s.C, s.C, n.w, s.eps, out + b * s.C);
  }
}

// One head of row b at `x` into `out`, rotated by RoPE at the row's position if the model has it.
void rotate(const Step& s, int64_t b, const float* x, float* out) {
  if (s.cos)
    rope(x, s.D, s.cos + s.pos[b] * s.D, s.sin + s.pos[b] * s.D, s.half_rope, s.swapped, out);
  else
    std::memcpy(out, x, s.D * sizeof(float));
}

// Row b's query heads into s.q (B, H, D), rotated; its key (rotated) and value heads into the
// cache slot of its position, k and v (Hkv, ..., D) at head stride sh.
template <typename T>
void place_heads(const Step& s, int64_t b, T* k, T* v, int64_t sh) {
  const float* row = s.qkv + b * (s.H + 2 * s.Hkv) * s.D;  // q heads, then k heads, then v heads
  for (int64_t h = 0; h < s.H; ++h) rotate(s, b, row + h * s.D, s.q + (b * s.H + h) * s.D);
  for (int64_t h = 0; h < s.Hkv; ++h) {
    rotate(s, b, row + (s.H + h) * s.D, s.rotated);
    store_row(s.rotated, s.D, k + h * sh);
    store_row(row + (s.H + s.Hkv + h) * s.D, s.D, v + h * sh);
  }
}

// x (B, C) <- one block of transformer.py's Block.forward, its layer's cache k, v (B, Hkv, max_len,
// D) at row stride sb and head stride sh.
template <typename T>
void block_step(const Step& s, const Block& blk, T* k, T* v, int64_t sb, int64_t sh, float* x) {
  int64_t B = s.B, F = blk.down.K;
  normalize(s, blk.norm1, x, s.h);
  linear(blk.qkv, s.h, B, s.paired, s.qkv);
  for (int64_t b = 0; b < B; ++b) place_heads(s, b, k + b * sb + s.pos[b] * s.D, v + b * sb + s.pos[b] * s.D, sh);
  attend_rows(s.q, k, v, s.lens.data(), B, s.H, s.H / s.Hkv, s.S, s.D, sb, sh, s.att);
  linear(blk.proj, s.att, B, s.paired, s.y);
  add_into(x, s.y, B * s.C);
  normalize(s, blk.norm2, x, s.h);
  linear(blk.up, s.h, B, s.paired, s.up);
  for (int64_t b = 0; b < B; ++b) {
    if (s.gelu)
      gelu_tanh(s.up + b * F, F);
    else
      swiglu(s.up + b * 2 * F, F, s.act + b * F);
  }
  linear(blk.down, s.gelu ? s.up : s.act, B, s.paired, s.y);
  add_into(x, s.y, B * s.C);
}

// The block's tensors from params, checked against the step's shapes.
Block block_of(const Step& s, const Params& params) {
  int64_t C = s.C;
  Norm norm1{floats(params, 0, C), floats(params, 1, C)}, norm2{floats(params, 8, C), floats(params, 9, C)};
  TORCH_CHECK(norm1.w && norm2.w, "decode_block: a norm needs its weight");
  Linear up = linear_at(params, 10, C);
  int64_t F = s.gelu ? up.N : up.N / 2;  // SwiGLU's up is [gate, up], each F wide
  Block blk{norm1, linear_at(params, 2, C), linear_at(params, 5, C), norm2, up, linear_at(params, 13, F)};
  TORCH_CHECK(blk.qkv.N == (s.H + 2 * s.Hkv) * s.D && blk.proj.N == C && blk.down.N == C && F % 16 == 0 &&
                  (s.gelu || up.N == 2 * F),
              "decode_block: the block's layers do not match the model's shapes");
  return blk;
}

// Each row's position, pos (1) shared or (B) one per row, and the keys each row sees after it.
void read_positions(Step& s, const at::Tensor& pos, int64_t max_len, int64_t table_rows) {
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.device().is_cpu() && (pos.numel() == 1 || pos.numel() == s.B),
              "decode_block: pos must hold one position, or one per row");
  at::Tensor p = pos.contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  s.pos.resize(s.B);
  s.lens.resize(s.B);
  s.S = 0;
  for (int64_t b = 0; b < s.B; ++b) {
    s.pos[b] = pp[pos.numel() == 1 ? 0 : b];
    TORCH_CHECK(s.pos[b] >= 0 && s.pos[b] < max_len && s.pos[b] < table_rows, "decode_block: position ", s.pos[b],
                " is out of range");
    s.lens[b] = s.pos[b] + 1;
    s.S = std::max(s.S, s.lens[b]);
  }
}

// Scratch for the block's activations, carved out of one float tensor.
at::Tensor scratch(Step& s, const Block& blk) {
  int64_t B = s.B, W = (s.H + 2 * s.Hkv) * s.D, F = blk.up.N, K = std::max(s.C, blk.down.K);
  int64_t sizes[] = {B * s.C, B * W, B * s.C, B * s.C, B * F, B * F, B * s.C, B * K, s.D, s.D};
  float** parts[] = {&s.h, &s.qkv, &s.q, &s.att, &s.up, &s.act, &s.y, &s.paired, &s.swapped, &s.rotated};
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  at::Tensor buf = at::empty({total}, at::kFloat);
  float* p = buf.data_ptr<float>();
  for (int i = 0; i < 10; ++i) {
    *parts[i] = p;
    p += sizes[i];
  }
  return buf;
}

// x (..., C) float: the residual stream of B = x.numel() / C rows, one new token each, after
// one transformer block (transformer.py's Block) whose tensors `params` lists (see PER_BLOCK),
// writing its keys and values into layer `layer` of k, v (L, B, Hkv, max_len, D), float or
// bf16: the KVCache, or a view of its rows. pos (1) or (B): each row's position. cos, sin
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
  int64_t C = x.size(-1), B = x.numel() / C, D = k.size(4), Hkv = k.size(2);
  TORCH_CHECK(k.stride(4) == 1 && k.stride(3) == D && k.size(1) == B && layer >= 0 && layer < k.size(0) &&
                  params.size() == PER_BLOCK && n_head * D == C && n_head % Hkv == 0 && D % 16 == 0,
              "decode_block: the cache, params and x do not match");
  Step s{B, C, n_head, Hkv, D, static_cast<float>(eps), layernorm, gelu, half_rope};
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
