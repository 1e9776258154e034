// Kernels for layers every family has, where candle's generic kernels are slow on CUDA:
//
// - add_bias: a linear layer's bias. candle's broadcast add computes every element's
//   offset with 64-bit divisions by dimensions it reads from memory: 206 µs for a
//   [3996, 3420] bf16 tensor on an H200 (ncu, run 14), ~15× a plain pass over the bytes.
// - softmax_rows: softmax over attention scores with the causal and left-padding masks
//   computed from indices. The unfused path builds an additive [b, 1, q, kv] mask on the
//   host, uploads it and adds it with that broadcast add: 615 µs per layer for a
//   1026-token prompt of Qwen2.5-VL-7B, 17 ms of its 53 ms prefill (run 14).
//
// - gated_silu: silu(gate + gate_bias) · (up + up_bias) from two unbiased projections, for
//   the vision MLP of Qwen2.5-VL, whose gate and up are separate biased layers: one pass
//   instead of two bias adds, the activation and the product (5.7 ms of a photo's 35 ms of
//   vision on an H200, run 15).
//
// - add_bias_wide, gated_silu_wide, silu_mul_wide: the same values eight to a thread in
//   16-byte accesses, for the prefill's and vision tower's many rows.
//
// - argmax_partial / argmax_final: greedy decoding's pick, each row's first largest logit
//   and whether the row is finite. candle's argmax reduces a 151,936-logit row in one
//   block (131 µs under ncu, run 39) and the finiteness check took a cast and another
//   one-block sum: ~170 µs of a Qwen3-VL-2B int4 decode step of ~1.7 ms. Here many blocks
//   share the row and a second launch combines their results.
//
// All compute in f32 and round once on output. Pointers are raw device addresses of
// contiguous tensors; optional inputs are null.

#include "common.cuh"

// The score added at masked positions: the value of `MASKED` in layers.rs, so that masked
// scores are what the additive mask makes them.
#define MASKED_SCORE (-3.0e4f)

// y = x + bias for x [rows, n]: grid (column blocks, row blocks), 256 threads.
template <typename T>
__device__ void add_bias(const T *x, const T *bias, T *y, int rows, int n) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= n) return;
  const float b = to_f(bias[c]);
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const size_t i = (size_t)r * n + c;
    y[i] = from_f<T>(to_f(x[i]) + b);
  }
}

// Softmax over each row of x [rows, k]. With `causal`, the rows are attention scores
// [b][h][q] (`rows_per_seq` = h·q rows per sequence of `q_len` queries): query j, at
// absolute position offset + j, sees keys up to offset + j, and sequence b's first
// pad[b] keys are padding (pad may be null). Grid (rows), 256 threads; the row is read
// three times, from the cache after the first.
template <typename T>
__device__ void softmax_rows(const T *x, T *y, const uint32_t *pad, int k, int causal,
                             int q_len, int rows_per_seq, int offset) {
  const size_t row = blockIdx.x;
  const T *xr = x + row * k;
  T *yr = y + row * k;
  int lo = 0, hi = k - 1;
  if (causal) {
    lo = pad ? (int)pad[row / rows_per_seq] : 0;
    hi = offset + (int)(row % q_len);
  }
  auto score = [&](int c) {
    const float s = to_f(xr[c]);
    return (c < lo || c > hi) ? s + MASKED_SCORE : s;
  };
  float mx = -INFINITY;
  for (int c = threadIdx.x; c < k; c += blockDim.x) mx = fmaxf(mx, score(c));
  mx = block_max(mx);
  float sum = 0.f;
  for (int c = threadIdx.x; c < k; c += blockDim.x) sum += expf(score(c) - mx);
  sum = block_sum(sum);
  const float inv = 1.f / sum;
  for (int c = threadIdx.x; c < k; c += blockDim.x) yr[c] = from_f<T>(expf(score(c) - mx) * inv);
}

// out = silu(gate + gb) · (up + ub) for gate, up [rows, n]; gb/ub [n] or null.
// Grid (column blocks, row blocks), 256 threads.
template <typename T>
__device__ void gated_silu(const T *gate, const T *up, const T *gb, const T *ub, T *out,
                           int rows, int n) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= n) return;
  const float bg = gb ? to_f(gb[c]) : 0.f, bu = ub ? to_f(ub[c]) : 0.f;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const size_t i = (size_t)r * n + c;
    const float g = to_f(gate[i]) + bg;
    out[i] = from_f<T>(silu_times(g, to_f(up[i]) + bu));
  }
}

#define GATED_SILU(NAME, T)                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *gate, const T *up, const T *gb, const T *ub, T *out, int rows, int n) { \
    gated_silu<T>(gate, up, gb, ub, out, rows, n);                                         \
  }
GATED_SILU(gated_silu_f32, float)
GATED_SILU(gated_silu_bf16, __nv_bfloat16)
GATED_SILU(gated_silu_f16, __half)

#define ADD_BIAS(NAME, T)                                                                  \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *x, const T *bias, T *y, int rows, int n) {                             \
    add_bias<T>(x, bias, y, rows, n);                                                      \
  }
ADD_BIAS(add_bias_f32, float)
ADD_BIAS(add_bias_bf16, __nv_bfloat16)
ADD_BIAS(add_bias_f16, __half)

// The wide kernels (RuntimeOptions::prefill_kernels): the same values as add_bias,
// gated_silu and decode.cu's silu_mul, eight consecutive values of a row a thread, moved in
// 16-byte loads and stores (two for f32). The one-value-a-thread kernels reached ~1.2 TB/s
// of the H100's 3.35 on the prefill's and vision tower's tensors (run 48: gated_silu 560 µs
// for 8 photos' [31,968, 3,420] gate and up), two-byte accesses leaving few bytes in flight
// a thread. Rows are `row_packs` packs of 8 (n a multiple of 8); every pointer 16-byte
// aligned; `packs` = rows · row_packs, one a thread (the launcher checks all three).

// y = x + bias for x [rows, n].
template <typename T>
__device__ void add_bias_wide(const T *__restrict__ x, const T *__restrict__ bias,
                              T *__restrict__ y, uint32_t packs, uint32_t row_packs) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  float v[8], b[8];
  load8(x + (size_t)i * 8, v);
  load8(bias + (i % row_packs) * 8, b);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] += b[j];
  store8(y + (size_t)i * 8, v);
}

// out = silu(gate + gb) · (up + ub) for gate, up [rows, n]; gb/ub [n] or null.
template <typename T>
__device__ void gated_silu_wide(const T *__restrict__ gate, const T *__restrict__ up,
                                const T *__restrict__ gb, const T *__restrict__ ub,
                                T *__restrict__ out, uint32_t packs, uint32_t row_packs) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  const uint32_t c = (i % row_packs) * 8;
  float g[8], u[8], bg[8], bu[8];
  load8(gate + (size_t)i * 8, g);
  load8(up + (size_t)i * 8, u);
#pragma unroll
  for (int j = 0; j < 8; ++j) bg[j] = bu[j] = 0.f;
  if (gb) load8(gb + c, bg);
  if (ub) load8(ub + c, bu);
#pragma unroll
  for (int j = 0; j < 8; ++j) g[j] = silu_times(g[j] + bg[j], u[j] + bu[j]);
  store8(out + (size_t)i * 8, g);
}

// out = silu(gate) · up for gate_up [rows, 2 · inter] (gate first) → [rows, inter];
// row_packs = inter / 8.
template <typename T>
__device__ void silu_mul_wide(const T *__restrict__ gate_up, T *__restrict__ out,
                              uint32_t packs, uint32_t row_packs) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  const uint32_t r = i / row_packs, c = (i - r * row_packs) * 8;
  const size_t inter = (size_t)row_packs * 8;
  const T *g = gate_up + r * 2 * inter + c;
  float gv[8], uv[8];
  load8(g, gv);
  load8(g + inter, uv);
#pragma unroll
  for (int j = 0; j < 8; ++j) gv[j] = silu_times(gv[j], uv[j]);
  store8(out + (size_t)i * 8, gv);
}

#define WIDE(T, S)                                                                         \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      add_bias_wide_##S(const T *x, const T *bias, T *y, uint32_t packs, uint32_t rp) {    \
    add_bias_wide<T>(x, bias, y, packs, rp);                                               \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      gated_silu_wide_##S(const T *gate, const T *up, const T *gb, const T *ub, T *out,    \
                          uint32_t packs, uint32_t rp) {                                   \
    gated_silu_wide<T>(gate, up, gb, ub, out, packs, rp);                                  \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      silu_mul_wide_##S(const T *gate_up, T *out, uint32_t packs, uint32_t rp) {           \
    silu_mul_wide<T>(gate_up, out, packs, rp);                                             \
  }
WIDE(float, f32)
WIDE(__nv_bfloat16, bf16)
WIDE(__half, f16)

#define SOFTMAX_ROWS(NAME, T)                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *x, T *y, const uint32_t *pad, int k, int causal, int q_len,            \
           int rows_per_seq, int offset) {                                                 \
    softmax_rows<T>(x, y, pad, k, causal, q_len, rows_per_seq, offset);                    \
  }
SOFTMAX_ROWS(softmax_rows_f32, float)
SOFTMAX_ROWS(softmax_rows_bf16, __nv_bfloat16)
SOFTMAX_ROWS(softmax_rows_f16, __half)

// The better of two (value, index) candidates: the larger value, the lower index on a tie
// (the first maximum, as torch.argmax and the host's `argmax` pick).
__device__ __forceinline__ void better_of(float &v, uint32_t &i, float v2, uint32_t i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

// Reduces (value, index, non-finite) over the block (256 threads); thread 0 gets the result.
__device__ __forceinline__ void block_argmax(float &v, uint32_t &i, uint32_t &bad) {
  __shared__ float pv[8];
  __shared__ uint32_t pi[8], pb[8];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const uint32_t i2 = __shfl_xor_sync(0xffffffffu, i, o);
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    better_of(v, i, v2, i2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    pv[warp] = v;
    pi[warp] = i;
    pb[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x / 32); ++w) {
      better_of(v, i, pv[w], pi[w]);
      bad |= pb[w];
    }
  }
}

// Stage 1 over x [rows, n]: grid (chunks, rows), 256 threads; block (c, r) reduces columns
// [c·chunk, (c+1)·chunk) of row r into part_v/part_i/part_bad [rows, chunks]. A NaN never
// wins a comparison, so it is caught by the non-finite flag instead.
//
// `hold` (may be null) is [rows + n_eos] u32: each row's min_new_tokens, then the
// end-of-sequence ids. At `step` below its row's value, a row's pick leaves those ids out
// (greedy's pick under min_new_tokens, made on the device when it runs ahead of the host);
// they still count for the non-finite flag, as the host's check sees the whole row.
template <typename T>
__device__ void argmax_partial(const T *x, float *part_v, uint32_t *part_i, uint32_t *part_bad,
                               int n, int chunk, const uint32_t *hold, int n_eos, int step) {
  inputs_ready();
  const size_t row = blockIdx.y;
  const T *xr = x + row * n;
  const int lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
  const bool held = hold != nullptr && step < (int)hold[row];
  const uint32_t *eos = held ? hold + gridDim.y : nullptr;
  float v = -INFINITY;
  uint32_t i = 0xffffffffu, bad = 0;
  for (int c = lo + threadIdx.x; c < hi; c += blockDim.x) {
    const float f = to_f(xr[c]);
    bad |= !isfinite(f);
    if (held) {
      bool skip = false;
      for (int e = 0; e < n_eos; ++e) skip |= eos[e] == (uint32_t)c;
      if (skip) continue;
    }
    if (f > v || i == 0xffffffffu) {
      v = f;
      i = c;
    }
  }
  block_argmax(v, i, bad);
  if (threadIdx.x == 0) {
    const size_t at = row * gridDim.x + blockIdx.x;
    part_v[at] = v;
    part_i[at] = i;
    part_bad[at] = bad;
  }
}

#define ARGMAX_PARTIAL(NAME, T)                                                            \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *x, float *part_v, uint32_t *part_i, uint32_t *part_bad, int n,         \
           int chunk, const uint32_t *hold, int n_eos, int step) {                         \
    argmax_partial<T>(x, part_v, part_i, part_bad, n, chunk, hold, n_eos, step);           \
  }
ARGMAX_PARTIAL(argmax_partial_f32, float)
ARGMAX_PARTIAL(argmax_partial_bf16, __nv_bfloat16)
ARGMAX_PARTIAL(argmax_partial_f16, __half)

// Stage 2: grid (rows), 256 threads; out [rows, 2] = (index, 1 if the row is finite). With
// `ids` (may be null), each row's index also goes to ids [rows]: the token ids the next decode
// step reads, when the device runs ahead of the host.
extern "C" __global__ void __launch_bounds__(256)
    argmax_final(const float *part_v, const uint32_t *part_i, const uint32_t *part_bad,
                 uint32_t *out, uint32_t *ids, int chunks) {
  inputs_ready();
  const size_t row = blockIdx.x;
  float v = -INFINITY;
  uint32_t i = 0xffffffffu, bad = 0;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const size_t at = row * chunks + c;
    better_of(v, i, part_v[at], part_i[at]);
    bad |= part_bad[at];
  }
  block_argmax(v, i, bad);
  if (threadIdx.x == 0) {
    out[2 * row] = i;
    out[2 * row + 1] = bad ? 0u : 1u;
    if (ids) ids[row] = i;
  }
}
