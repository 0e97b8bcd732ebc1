// Checks codelm's CPU kernel core (codelm/model/kernels_core.h, kernels_linear.h and
// kernels_block.h) without torch: each kernel against a plain scalar reference in double precision, on random data,
// for whichever vector branch the compiler flags select (AVX-512, AVX2 or NEON). tests/test_kernels.py
// builds it natively (-march=native, and with -mno-avx512f for the AVX2 branch) and
// cross-compiled for aarch64, run under qemu: the NEON branch is tested on an x86 host.
//
// Prints one line per case and exits 1 if any case is off by more than TOL of the largest
// reference value in its output row (a per-row norm, as softmax outputs and dot products
// can cancel to near zero), or 77 (a skip) where the header has no vector branch.
// Sizes are small: under qemu every vector instruction is emulated.
//
//   g++ -O2 -march=native -std=c++17 -I codelm/model tests/kernels_check.cpp -o check && ./check
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels_block.h"
#include "kernels_linear.h"  // and kernels_core.h

#ifndef CODELM_KERNELS
int main() {
  std::puts("kernels_core.h has no vector branch for this target (x86 needs AVX-512 or AVX2 with FMA)");
  return 77;
}
#else
using namespace codelm;

namespace {

constexpr double TOL = 1e-4;
std::mt19937 rng(1234);
int failures = 0;

std::vector<float> randn(size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> x(n);
  for (float& v : x) v = d(rng);
  return x;
}

float from_bf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t to_bf16(float f) {  // rounded to nearest, ties to even (finite values only)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// The largest error over rows of `width` values, each relative to its row's largest |want|.
double row_error(const std::vector<float>& got, const std::vector<double>& want, size_t width) {
  double worst = 0;
  for (size_t r = 0; r < want.size() / width; ++r) {
    double norm = 1e-30, err = 0;
    for (size_t j = 0; j < width; ++j) {
      norm = std::max(norm, std::fabs(want[r * width + j]));
      double e = std::fabs(got[r * width + j] - want[r * width + j]);
      err = std::max(err, std::isnan(e) ? INFINITY : e);
    }
    worst = std::max(worst, err / norm);
  }
  return worst;
}

void report(const char* what, double err, double tol = TOL) {
  bool ok = err <= tol;
  failures += !ok;
  std::printf("%-4s %-64s max error %.2e (tolerance %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
}

void check_exp() {
  std::vector<float> x(4096), got(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = -100.0f * i / (x.size() - 1);  // 0 down to -100
  for (size_t i = 0; i < x.size(); i += 16) vstore(got.data() + i, vexp_nonpositive(vload(x.data() + i)));
  double err = 0;
  for (size_t i = 0; i < x.size(); ++i) {  // below -87 the kernel clamps: e^-87
    double want = std::exp(std::max(static_cast<double>(x[i]), -87.0));
    err = std::max(err, std::fabs(got[i] - want) / want);
  }
  report("vexp_nonpositive on [-100, 0], relative to e^max(x, -87)", err, 1e-6);
}

// y (M, N) = x (M, K) @ (q * scale)^T (+ bias), packed as native.pack_int8 does: (N/R, K/16, R, 16).
void check_int8_linear(int64_t M, int64_t N, int64_t K, bool with_bias) {
  std::vector<float> x = randn(M * K, 1.0f), scale = randn(N, 0.01f), bias = randn(N, 1.0f), y(M * N);
  std::vector<int8_t> q(N * K), tiles(N * K);
  std::uniform_int_distribution<int> d(-127, 127);
  for (int8_t& v : q) v = static_cast<int8_t>(d(rng));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) tiles[((n / R * (K / 16) + k / 16) * R + n % R) * 16 + k % 16] = q[n * K + k];
  int64_t half = N / R / 2;  // two slices, as two threads would take them
  const float* b = with_bias ? bias.data() : nullptr;
  int8_tiles(x.data(), M, K, N, tiles.data(), scale.data(), b, 0, half, y.data());
  int8_tiles(x.data(), M, K, N, tiles.data(), scale.data(), b, half, N / R, y.data());
  std::vector<double> want(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[m * K + k]) * q[n * K + k];
      want[m * N + n] = s * scale[n] + (with_bias ? bias[n] : 0.0);
    }
  char what[96];
  std::snprintf(what, sizeof what, "int8_linear M=%lld N=%lld K=%lld%s", (long long)M, (long long)N, (long long)K,
                with_bias ? " bias" : "");
  report(what, row_error(y, want, N));
}

// `f` rounded to bf16, and `f` set to the values kept: the reference reads what the kernel reads.
std::vector<bf16> round_to_bf16(std::vector<float>& f) {
  std::vector<bf16> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) f[i] = from_bf16((b[i] = bf16{to_bf16(f[i])}).bits);
  return b;
}

// y (M, N) = x (M, K) @ w^T + bias with w (N, K) row-major, bf16 (bf16_linear) or float
// (decode_block's fp32 layers): the reference reads the same weights, widened, in double.
template <typename W>
void check_dense_linear(int64_t M, int64_t N, int64_t K, bool with_bias) {
  std::vector<float> x = randn(M * K, 1.0f), wf = randn(N * K, 0.05f), bias = randn(N, 1.0f), in(M * K), y(M * N);
  std::vector<W> w;
  if constexpr (std::is_same_v<W, bf16>) {
    w = round_to_bf16(wf);
    pair_columns(x.data(), M, K, in.data());  // bf16 weights meet x's columns paired
  } else {
    w = wf;
    in = x;
  }
  int64_t tiles = (N + R - 1) / R, half = tiles / 2;  // two slices, as two threads would take them
  const float* b = with_bias ? bias.data() : nullptr;
  dense_tiles(in.data(), M, K, N, w.data(), b, 0, half, y.data());
  dense_tiles(in.data(), M, K, N, w.data(), b, half, tiles, y.data());
  std::vector<double> want(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = with_bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[m * K + k]) * wf[n * K + k];
      want[m * N + n] = s;
    }
  char what[96];
  std::snprintf(what, sizeof what, "%s M=%lld N=%lld K=%lld%s", std::is_same_v<W, bf16> ? "bf16_linear" : "fp32_linear",
                (long long)M, (long long)N, (long long)K, with_bias ? " bias" : "");
  report(what, row_error(y, want, N));
}

// A KV cache of capacity `cap` positions, (B, Hkv, cap, D), of which the first S are used.
template <typename T>
struct Cache {
  std::vector<T> k, v;
  std::vector<float> kf, vf;  // the same values as floats, for the reference
};


template <typename T>
Cache<T> make_cache(size_t n) {
  Cache<T> c;
  c.kf = randn(n, 3.0f);  // large scores: the exp is exercised far from 0
  c.vf = randn(n, 3.0f);
  if constexpr (std::is_same_v<T, float>) {
    c.k = c.kf;
    c.v = c.vf;
  } else {
    c.k = round_to_bf16(c.kf);
    c.v = round_to_bf16(c.vf);
  }
  return c;
}

template <typename T>
void check_attend_one(const char* dtype, int64_t B, int64_t H, int64_t Hkv, int64_t S, int64_t D, bool with_lens) {
  int64_t cap = S + 5, G = H / Hkv, sh = cap * D, sb = Hkv * sh;
  Cache<T> c = make_cache<T>(B * sb);
  std::vector<float> q = randn(B * H * D, 3.0f);
  std::vector<int64_t> lens(B, S);
  if (with_lens) {
    std::uniform_int_distribution<int64_t> d(1, S);
    for (int64_t& n : lens) n = d(rng);
  }
  std::vector<double> want(B * H * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float* k = c.kf.data() + b * sb + h / G * sh;
      const float* v = c.vf.data() + b * sb + h / G * sh;
      const float* qh = q.data() + (b * H + h) * D;
      std::vector<double> s(lens[b]);
      double top = -INFINITY, total = 0;
      for (int64_t t = 0; t < lens[b]; ++t) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qh[d]) * k[t * D + d];
        s[t] = dot / std::sqrt(static_cast<double>(D));
        top = std::max(top, s[t]);
      }
      for (double& e : s) total += (e = std::exp(e - top));
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t t = 0; t < lens[b]; ++t) o += s[t] * v[t * D + d];
        want[(b * H + h) * D + d] = o / total;
      }
    }
  // Every way attend_rows may split the heads into tasks: n dividing G heads per task (n = G
  // reads each kv head once for its group, n = 1 is attend_head). All give the same floats.
  std::vector<float> first;
  double err = 0;
  bool same = true;
  for (int64_t n = G; n >= 1; --n) {
    if (G % n) continue;
    std::vector<float> got(B * H * D, NAN);
    attend_tasks(0, B * H / n, n, q.data(), c.k.data(), c.v.data(), with_lens ? lens.data() : nullptr, H, G, S, D,
                 sb, sh, got.data());
    err = std::max(err, row_error(got, want, D));
    if (first.empty())
      first = got;
    else
      same = same && std::memcmp(first.data(), got.data(), got.size() * sizeof(float)) == 0;
  }
  char what[96];
  std::snprintf(what, sizeof what, "attend_one %-5s B=%lld H=%lld Hkv=%lld S=%lld D=%lld%s", dtype, (long long)B,
                (long long)H, (long long)Hkv, (long long)S, (long long)D, with_lens ? " lens" : "");
  report(what, err);
  if (!same) {
    ++failures;
    std::printf("FAIL %s: tasks of different sizes gave different floats\n", what);
  }
}

// --- kernels_block.h: a decoded token's norms, RoPE, activations and cache writes ----------------

// The largest of |got - want| / max(|want|, floor): relative error, absolute below `floor`
// (an activation of -20 is ~1e-8 wherever it is computed; float cannot match double's 1e-260).
double rel_error(const std::vector<float>& got, const std::vector<double>& want, double floor) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double e = std::fabs(got[i] - want[i]) / std::max(std::fabs(want[i]), floor);
    worst = std::max(worst, std::isnan(e) ? INFINITY : e);
  }
  return worst;
}

// RMSNorm and LayerNorm (with and without its bias) of rows of C, one row far from mean 0.
void check_norms(int64_t C) {
  constexpr int64_t ROWS = 3;
  constexpr float EPS = 1e-5f;
  std::vector<float> x = randn(ROWS * C, 2.0f), w = randn(C, 1.0f), b = randn(C, 1.0f), got(ROWS * C);
  for (int64_t i = 0; i < C; ++i) x[i] += 30.0f;  // LayerNorm must subtract the mean first
  std::vector<double> want(ROWS * C);
  for (int64_t r = 0; r < ROWS; ++r) {
    const float* xr = x.data() + r * C;
    double squares = 0;
    for (int64_t i = 0; i < C; ++i) squares += static_cast<double>(xr[i]) * xr[i];
    for (int64_t i = 0; i < C; ++i) want[r * C + i] = xr[i] / std::sqrt(squares / C + EPS) * w[i];
    rmsnorm(xr, C, w.data(), EPS, got.data() + r * C);
  }
  char what[96];
  std::snprintf(what, sizeof what, "rmsnorm C=%lld", (long long)C);
  report(what, row_error(got, want, C));
  for (bool with_bias : {false, true}) {
    for (int64_t r = 0; r < ROWS; ++r) {
      const float* xr = x.data() + r * C;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < C; ++i) mean += xr[i] / static_cast<double>(C);
      for (int64_t i = 0; i < C; ++i) var += (xr[i] - mean) * (xr[i] - mean) / C;
      for (int64_t i = 0; i < C; ++i)
        want[r * C + i] = (xr[i] - mean) / std::sqrt(var + EPS) * w[i] + (with_bias ? b[i] : 0.0);
      layernorm(xr, C, w.data(), with_bias ? b.data() : nullptr, EPS, got.data() + r * C);
    }
    std::snprintf(what, sizeof what, "layernorm C=%lld%s", (long long)C, with_bias ? " bias" : "");
    report(what, row_error(got, want, C));
  }
}

// SwiGLU's silu(gate) * up and GELU's tanh form over inputs from -20 to 20 and random ones.
void check_activations(int64_t F) {
  std::vector<float> h = randn(2 * F, 3.0f);
  for (int64_t i = 0; i < F; ++i) h[i] = -20.0f + 40.0f * i / (F - 1);  // the gates: every sign and size
  std::vector<float> got(F);
  std::vector<double> want(F);
  for (int64_t i = 0; i < F; ++i) want[i] = h[i] / (1 + std::exp(-static_cast<double>(h[i]))) * h[F + i];
  swiglu(h.data(), F, got.data());
  char what[96];
  std::snprintf(what, sizeof what, "swiglu F=%lld, gates -20 to 20", (long long)F);
  report(what, rel_error(got, want, 1e-6), 1e-5);
  got.assign(h.begin(), h.begin() + F);
  for (int64_t i = 0; i < F; ++i) {
    double x = h[i];
    want[i] = 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  }
  gelu_tanh(got.data(), F);
  std::snprintf(what, sizeof what, "gelu_tanh F=%lld, inputs -20 to 20", (long long)F);
  report(what, rel_error(got, want, 1e-6), 1e-5);
}

// RoPE on heads of D at random angles, tables laid out as transformer.py's rope_tables: the
// reference rotates each pair (2i, 2i+1, or i, i + D/2) by its angle, in double.
void check_rope(int64_t D, bool half) {
  constexpr int64_t HEADS = 3;
  std::vector<float> x = randn(HEADS * D, 2.0f), cos(D), sin(D), swapped(D), got(HEADS * D);
  std::uniform_real_distribution<float> angle(0.0f, 6.3f);
  std::vector<int64_t> first(D / 2), second(D / 2);  // each pair's channels
  for (int64_t i = 0; i < D / 2; ++i) {
    first[i] = half ? i : 2 * i;
    second[i] = half ? i + D / 2 : 2 * i + 1;
    float a = angle(rng);
    cos[first[i]] = cos[second[i]] = std::cos(a);
    sin[first[i]] = -std::sin(a);  // the rotation's sign: -sin on a pair's first channel
    sin[second[i]] = std::sin(a);
  }
  std::vector<double> want(HEADS * D);
  for (int64_t h = 0; h < HEADS; ++h) {
    const float* xh = x.data() + h * D;
    for (int64_t i = 0; i < D / 2; ++i) {
      double x1 = xh[first[i]], x2 = xh[second[i]], c = cos[second[i]], s = sin[second[i]];
      want[h * D + first[i]] = x1 * c - x2 * s;
      want[h * D + second[i]] = x2 * c + x1 * s;
    }
    rope(xh, D, cos.data(), sin.data(), half, swapped.data(), got.data() + h * D);
  }
  char what[96];
  std::snprintf(what, sizeof what, "rope D=%lld %s", (long long)D, half ? "half" : "interleaved");
  report(what, row_error(got, want, D));
}

// The cache's bf16 against this file's rounding (ties to even included), and add_into.
void check_cache_write_and_residual() {
  std::vector<float> x = randn(4096, 5.0f);
  for (size_t i = 0; i < 64; ++i) {  // exact ties: halfway between two bf16, odd and even
    uint32_t u = 0x3f800000u + (static_cast<uint32_t>(i) << 16) + 0x8000u;
    std::memcpy(&x[i], &u, 4);
  }
  std::vector<bf16> got(x.size());
  store_row(x.data(), static_cast<int64_t>(x.size()), got.data());
  double wrong = 0;
  for (size_t i = 0; i < x.size(); ++i) wrong += got[i].bits != to_bf16(x[i]);
  wrong += !std::isnan(from_bf16(bf16_round(NAN).bits));
  report("bf16_round (the cache's writes) of 4096 values and 64 ties, exact", wrong, 0);
  std::vector<float> y = randn(x.size(), 1.0f), sum = x;
  add_into(sum.data(), y.data(), static_cast<int64_t>(x.size()));
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = static_cast<double>(x[i]) + y[i];
  report("add_into n=4096", rel_error(sum, want, 1e-6), 1e-6);
}

}  // namespace

int main() {
  std::printf("kernels_core.h: %s branch\n", ISA);
  check_exp();
  // Rows of M beyond MB (4 on AVX-512) take a second, partial pass over each tile.
  for (auto [M, N, K] : {std::array<int64_t, 3>{1, 4, 16}, {1, 64, 256}, {3, 12, 48}, {5, 36, 160}, {9, 8, 1024}})
    for (bool with_bias : {false, true}) check_int8_linear(M, N, K, with_bias);
  // N not a multiple of R (a last tile done row by row), N under R, M beyond MB, long rows.
  for (auto [M, N, K] : {std::array<int64_t, 3>{1, 4, 32}, {1, 37, 64}, {3, 3, 96}, {5, 12, 256}, {9, 6, 1024}})
    for (bool with_bias : {false, true}) {
      check_dense_linear<bf16>(M, N, K, with_bias);
      check_dense_linear<float>(M, N, K, with_bias);
    }
  // Head widths 16-128 keep their sums in registers; 48 and 160 take the generic loops.
  // Grouped-query (H > Hkv) and multi-query (Hkv = 1) heads; S = 1; S past VBLOCK (32).
  struct Shape {
    int64_t B, H, Hkv, S, D;
  };
  for (Shape s : {Shape{1, 4, 4, 50, 64}, {3, 2, 2, 1, 16}, {2, 4, 4, 33, 32}, {1, 2, 2, 17, 48}, {1, 6, 2, 70, 64},
                  {2, 4, 1, 33, 32}, {3, 6, 3, 17, 48}, {1, 4, 1, 70, 160}, {2, 4, 2, 40, 128}})
    for (bool with_lens : {false, true}) {
      check_attend_one<float>("float", s.B, s.H, s.Hkv, s.S, s.D, with_lens);
      check_attend_one<bf16>("bf16", s.B, s.H, s.Hkv, s.S, s.D, with_lens);
    }
  for (int64_t C : {16, 64, 384}) check_norms(C);
  for (int64_t F : {16, 96, 1024}) check_activations(F);
  for (int64_t D : {16, 48, 64, 128})
    for (bool half : {false, true}) check_rope(D, half);
  check_cache_write_and_residual();
  std::printf("%s: %d failed\n", failures ? "FAILED" : "all passed", failures);
  return failures ? 1 : 0;
}
#endif
