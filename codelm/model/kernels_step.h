// The torch side of kernels.cpp's decode_block: a transformer block's step for B rows of T new
// tokens each, on the loops of kernels_linear.h (weights), kernels_core.h (attention) and
// kernels_block.h (norms, RoPE, activations), with at::parallel_for's threads. Included by
// kernels.cpp only (the loops themselves stay torch-free, for tests/kernels_check.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "kernels_block.h"
#include "kernels_linear.h"  // and kernels_core.h

#ifdef CODELM_KERNELS
namespace codelm {
namespace {

constexpr int64_t TILE_GRAIN = 8;  // tiles per task of at::parallel_for

// B query rows, row b over its first lens[b] keys of cache row b / per_row (decode_block's T
// tokens of a row share its cache row). Query heads are grouped into tasks by heads_per_task
// (kernels_core.h): whole groups that share a kv head where that leaves every thread a task.
template <typename T>
void attend_rows(const float* qp, const T* kp, const T* vp, const int64_t* lens, int64_t B, int64_t H, int64_t G,
                 int64_t S, int64_t D, int64_t sb, int64_t sh, float* op, int64_t per_row = 1) {
  int64_t n = heads_per_task(G, B * H, at::get_num_threads());
  at::parallel_for(0, B * H / n, 1, [&](int64_t i0, int64_t i1) {
    attend_tasks(i0, i1, n, qp, kp, vp, lens, H, G, S, D, sb, sh, op, per_row);
  });
}

// --- decode_block: a transformer block for T new tokens per row ----------------------------------

// A block's tensors in decode_block's `params`, in this order (quantize.py's fused_step lists
// them): norm1's weight and bias, qkv's weight, scale and bias, proj's three, norm2's two, up's
// three, down's three, then QK-norm's q and k weights (Qwen3); biases, non-int8 scales and
// QK-norm's weights may be None.
constexpr int64_t PER_BLOCK = 18;
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
  const float* q_norm;  // RMSNorm weights over each head's D channels, or null: no QK-norm
  const float* k_norm;
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
// positions) and each token's position; scratch rows for the activations. x's M rows are the
// cache's M / T rows' T new tokens each: row m is token m % T of cache row m / T. The H heads
// of D channels need not split C (Qwen3's are wider): the attention's output is H * D wide.
struct Step {
  int64_t M, T, C, H, Hkv, D;
  float eps;
  bool layernorm, gelu, half_rope;
  const float* cos;
  const float* sin;
  std::vector<int64_t> pos, lens;  // row m's token sits at pos[m] and sees lens[m] = pos[m] + 1 keys
  int64_t S;                       // the most keys a token sees
  float *h, *qkv, *q, *att, *up, *act, *y, *paired, *swapped, *rotated, *normed;
};

void normalize(const Step& s, const Norm& n, const float* x, float* out) {
  for (int64_t b = 0; b < s.M; ++b) {
    if (s.layernorm)
      layernorm(x + b * s.C, s.C, n.w, n.b, s.eps, out + b * s.C);
    else
      rmsnorm(x + b * s.C, s.C, n.w, s.eps, out + b * s.C);
  }
}

// One head of row b at `x` into `out`: RMSNorm'd by `norm` if the model has QK-norm, then
// rotated by RoPE at the row's position if the model has it.
void rotate(const Step& s, int64_t b, const float* x, const float* norm, float* out) {
  if (norm) {
    rmsnorm(x, s.D, norm, s.eps, s.normed);
    x = s.normed;
  }
  if (s.cos)
    rope(x, s.D, s.cos + s.pos[b] * s.D, s.sin + s.pos[b] * s.D, s.half_rope, s.swapped, out);
  else
    std::memcpy(out, x, s.D * sizeof(float));
}

// Row b's query heads into s.q (B, H, D), rotated; its key (rotated) and value heads into the
// cache slot of its position, k and v (Hkv, ..., D) at head stride sh.
template <typename T>
void place_heads(const Step& s, const Block& blk, int64_t b, T* k, T* v, int64_t sh) {
  const float* row = s.qkv + b * (s.H + 2 * s.Hkv) * s.D;  // q heads, then k heads, then v heads
  for (int64_t h = 0; h < s.H; ++h) rotate(s, b, row + h * s.D, blk.q_norm, s.q + (b * s.H + h) * s.D);
  for (int64_t h = 0; h < s.Hkv; ++h) {
    rotate(s, b, row + (s.H + h) * s.D, blk.k_norm, s.rotated);
    store_row(s.rotated, s.D, k + h * sh);
    store_row(row + (s.H + s.Hkv + h) * s.D, s.D, v + h * sh);
  }
}

// x (M, C) <- one block of transformer.py's Block.forward, its layer's cache k, v (M / T, Hkv,
// max_len, D) at row stride sb and head stride sh. Every token's key and value go into the cache
// before any token attends, token m then reading its cache row's first lens[m] keys: causal by
// position, as Where's masks have it. Each of the M rows takes the same operations in the same
// order whatever M and T are (kernels_linear.h's loops keep a sum per row), so a token's output
// is the same floats as from a call of T = 1 after the tokens before it (tests/test_fused.py).
template <typename T>
void block_step(const Step& s, const Block& blk, T* k, T* v, int64_t sb, int64_t sh, float* x) {
  int64_t M = s.M, F = blk.down.K;
  normalize(s, blk.norm1, x, s.h);
  linear(blk.qkv, s.h, M, s.paired, s.qkv);
  for (int64_t m = 0; m < M; ++m) {
    int64_t slot = m / s.T * sb + s.pos[m] * s.D;
    place_heads(s, blk, m, k + slot, v + slot, sh);
  }
  attend_rows(s.q, k, v, s.lens.data(), M, s.H, s.H / s.Hkv, s.S, s.D, sb, sh, s.att, s.T);
  linear(blk.proj, s.att, M, s.paired, s.y);
  add_into(x, s.y, M * s.C);
  normalize(s, blk.norm2, x, s.h);
  linear(blk.up, s.h, M, s.paired, s.up);
  for (int64_t b = 0; b < M; ++b) {
    if (s.gelu)
      gelu_tanh(s.up + b * F, F);
    else
      swiglu(s.up + b * 2 * F, F, s.act + b * F);
  }
  linear(blk.down, s.gelu ? s.up : s.act, M, s.paired, s.y);
  add_into(x, s.y, M * s.C);
}

// The block's tensors from params, checked against the step's shapes.
Block block_of(const Step& s, const Params& params) {
  int64_t C = s.C;
  Norm norm1{floats(params, 0, C), floats(params, 1, C)}, norm2{floats(params, 8, C), floats(params, 9, C)};
  TORCH_CHECK(norm1.w && norm2.w, "decode_block: a norm needs its weight");
  Linear up = linear_at(params, 10, C);
  int64_t F = s.gelu ? up.N : up.N / 2;  // SwiGLU's up is [gate, up], each F wide
  Block blk{norm1, linear_at(params, 2, C), linear_at(params, 5, s.H * s.D), norm2, up, linear_at(params, 13, F),
            floats(params, 16, s.D), floats(params, 17, s.D)};
  TORCH_CHECK(!blk.q_norm == !blk.k_norm, "decode_block: QK-norm needs both weights");
  TORCH_CHECK(blk.qkv.N == (s.H + 2 * s.Hkv) * s.D && blk.proj.N == C && blk.down.N == C && F % 16 == 0 &&
                  (s.gelu || up.N == 2 * F),
              "decode_block: the block's layers do not match the model's shapes");
  return blk;
}

// Each token's position, pos (T) shared by every row or (B, T) per row, and the keys it sees.
void read_positions(Step& s, const at::Tensor& pos, int64_t max_len, int64_t table_rows) {
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.device().is_cpu() && (pos.numel() == s.T || pos.numel() == s.M),
              "decode_block: pos must hold T positions, or T per row");
  at::Tensor p = pos.contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  s.pos.resize(s.M);
  s.lens.resize(s.M);
  s.S = 0;
  for (int64_t b = 0; b < s.M; ++b) {
    s.pos[b] = pp[pos.numel() == s.M ? b : b % s.T];
    TORCH_CHECK(s.pos[b] >= 0 && s.pos[b] < max_len && s.pos[b] < table_rows, "decode_block: position ", s.pos[b],
                " is out of range");
    s.lens[b] = s.pos[b] + 1;
    s.S = std::max(s.S, s.lens[b]);
  }
}

// Scratch for the block's activations, carved out of one float tensor.
at::Tensor scratch(Step& s, const Block& blk) {
  int64_t B = s.M, W = (s.H + 2 * s.Hkv) * s.D, F = blk.up.N, HD = s.H * s.D;
  int64_t K = std::max({s.C, blk.down.K, HD});  // the widest input a linear layer pairs
  int64_t sizes[] = {B * s.C, B * W, B * HD, B * HD, B * F, B * F, B * s.C, B * K, s.D, s.D, s.D};
  float** parts[] = {&s.h, &s.qkv, &s.q,       &s.att,     &s.up,
                     &s.act, &s.y, &s.paired, &s.swapped, &s.rotated, &s.normed};
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  at::Tensor buf = at::empty({total}, at::kFloat);
  float* p = buf.data_ptr<float>();
  for (int i = 0; i < 11; ++i) {
    *parts[i] = p;
    p += sizes[i];
  }
  return buf;
}

}  // namespace
}  // namespace codelm
#endif  // CODELM_KERNELS
