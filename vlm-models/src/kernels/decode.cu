// Fused kernels of the decoder step. At one new token per sequence candle issues one
// launch per small op (bias, q/k norms, two RoPEs, two cache copies, the score matmul,
// softmax, the value matmul, the head transpose, the activation and its product): on an
// H100 the host spends longer issuing them than the GPU spends running them. These three
// kernels replace ~15 launches per layer.
//
// Every kernel computes in f32 and rounds once on output. Pointers are raw device
// addresses of contiguous tensors; optional inputs are null.

#include "common.cuh"

// One head of the fused q/k/v projection's output made ready for attention: bias, the
// optional per-head RMSNorm (Qwen3), then rotate-half RoPE. Thread i < d/2 holds the pair
// (i, i + d/2); every thread of the block must call it (the norm reduces over the block).
// Returns false for the threads that hold no pair.
template <typename T>
__device__ bool prepare_head(const T *src, const T *bias, const T *norm_w, float eps,
                             const T *cos, const T *sin, int d, float &y1, float &y2) {
  const int i = threadIdx.x, half = d / 2;
  const bool mine = i < half;
  float x1 = 0.f, x2 = 0.f;
  if (mine) {
    x1 = to_f(src[i]);
    x2 = to_f(src[i + half]);
    if (bias) {
      x1 += to_f(bias[i]);
      x2 += to_f(bias[i + half]);
    }
  }
  if (norm_w) {
    const float r = rsqrtf(block_sum(x1 * x1 + x2 * x2) / (float)d + eps);
    if (mine) {
      x1 *= r * to_f(norm_w[i]);
      x2 *= r * to_f(norm_w[i + half]);
    }
  }
  if (!mine) return false;
  const float c = to_f(cos[i]), s = to_f(sin[i]);
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
  return true;
}

// Writes the new token's key (bias, k-norm, RoPE) and value (bias) into the caches
// [b, nkv, cap, d] at position `pos`. Grid (nkv, b), max(32, d/2) threads.
// qkv [b, (nq + 2 nkv) d]; cos/sin [b, d/2].
template <typename T>
__device__ void kv_write(const T *qkv, const T *bias, const T *cos, const T *sin,
                         const T *k_norm, float eps, T *k_cache, T *v_cache, int nq, int nkv,
                         int d, int cap, int pos) {
  const int kh = blockIdx.x, b = blockIdx.y, half = d / 2, i = threadIdx.x;
  const T *row = qkv + (size_t)b * (nq + 2 * nkv) * d;
  const int ko = (nq + kh) * d, vo = (nq + nkv + kh) * d;
  const size_t dst = (((size_t)b * nkv + kh) * cap + pos) * d;
  float y1, y2;
  if (prepare_head(row + ko, bias ? bias + ko : nullptr, k_norm, eps, cos + (size_t)b * half,
                   sin + (size_t)b * half, d, y1, y2)) {
    k_cache[dst + i] = from_f<T>(y1);
    k_cache[dst + i + half] = from_f<T>(y2);
    float v1 = to_f(row[vo + i]), v2 = to_f(row[vo + i + half]);
    if (bias) {
      v1 += to_f(bias[vo + i]);
      v2 += to_f(bias[vo + i + half]);
    }
    v_cache[dst + i] = from_f<T>(v1);
    v_cache[dst + i + half] = from_f<T>(v2);
  }
}

// Attention of one new query per sequence over the cache, GQA read in place (query head
// h uses kv head h / (nq / nkv)); keys before pad[b] (left padding) are skipped.
// Grid (nq, b, splits), 256 threads. The query is prepared from qkv like the key (bias,
// q-norm, RoPE; the 1/sqrt(d) scale is already in its weights) and rounded to T as the
// unfused path stores it. Block z takes the z-th of `splits` equal slices of the keys (a
// single block per head left most of the card idle: 28 blocks for the 7B's 28 heads, 38 µs
// per layer at 1026 cached positions on an H200, run 14). In a block D/8 threads share a
// key row, 256/(D/8) rows at a time, each row group keeping an online softmax; the groups
// are merged at the end. With one split the block writes out [b, nq, d]; with several it
// writes its unnormalised sum, max and total to partial [b, nq, splits, d + 2] for
// decode_combine.
template <typename T, int D>
__device__ void decode_attention(const T *qkv, const T *bias, const T *cos, const T *sin,
                                 const T *q_norm, float eps, const T *k_cache,
                                 const T *v_cache, const uint32_t *pad, T *out,
                                 float *partial, int nq, int nkv, int cap, int kv_len) {
  constexpr int G = D / 8;    // threads per key row
  constexpr int R = 256 / G;  // rows in flight
  __shared__ float qs[D];
  __shared__ float gm[R], gl[R];
  __shared__ float gacc[R][D];

  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, half = D / 2;
  const int split = blockIdx.z, splits = gridDim.z;
  const int kh = h / (nq / nkv);
  {
    const T *row = qkv + (size_t)b * (nq + 2 * nkv) * D + (size_t)h * D;
    float y1, y2;
    if (prepare_head(row, bias ? bias + h * D : nullptr, q_norm, eps, cos + (size_t)b * half,
                     sin + (size_t)b * half, D, y1, y2)) {
      qs[tid] = to_f(from_f<T>(y1));
      qs[tid + half] = to_f(from_f<T>(y2));
    }
  }
  __syncthreads();

  const int g = tid / G, lane = tid % G;
  float q8[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) q8[j] = qs[lane * 8 + j];

  const size_t base = ((size_t)b * nkv + kh) * cap * D + lane * 8;
  const T *kb = k_cache + base;
  const T *vb = v_cache + base;
  const int first = pad ? (int)pad[b] : 0;
  const int chunk = (kv_len - first + splits - 1) / splits;
  const int start = first + split * chunk;
  const int end = min(kv_len, start + chunk);
  float m = -INFINITY, l = 0.f, acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.f;

  // Two rows per group per sweep so that four loads are in flight; every lane runs the
  // same number of sweeps, as the shuffles need the whole warp.
  for (int t0 = start; t0 < end; t0 += 2 * R) {
    const int ta = t0 + g, tb = t0 + g + R;
    const bool va = ta < end, vb_ok = tb < end;
    float ka[8], kb8[8], xa[8], xb[8];
    if (va) {
      load8(kb + (size_t)ta * D, ka);
      load8(vb + (size_t)ta * D, xa);
    }
    if (vb_ok) {
      load8(kb + (size_t)tb * D, kb8);
      load8(vb + (size_t)tb * D, xb);
    }
    float sa = 0.f, sb = 0.f;
    if (va) {
#pragma unroll
      for (int j = 0; j < 8; ++j) sa += q8[j] * ka[j];
    }
    if (vb_ok) {
#pragma unroll
      for (int j = 0; j < 8; ++j) sb += q8[j] * kb8[j];
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) {
      sa += __shfl_xor_sync(0xffffffffu, sa, o);
      sb += __shfl_xor_sync(0xffffffffu, sb, o);
    }
    if (va) {
      const float m_new = fmaxf(m, vb_ok ? fmaxf(sa, sb) : sa);
      const float corr = expf(m - m_new);
      const float pa = expf(sa - m_new);
      const float pb = vb_ok ? expf(sb - m_new) : 0.f;
      l = l * corr + pa + pb;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[j] = acc[j] * corr + pa * xa[j] + (vb_ok ? pb * xb[j] : 0.f);
      }
      m = m_new;
    }
  }

  if (lane == 0) {
    gm[g] = m;
    gl[g] = l;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) gacc[g][lane * 8 + j] = acc[j];
  __syncthreads();
  if (tid < D) {
    float mx = -INFINITY;
    for (int r = 0; r < R; ++r) mx = fmaxf(mx, gm[r]);
    float lsum = 0.f, a = 0.f;
    for (int r = 0; r < R; ++r) {
      if (gm[r] == -INFINITY) continue;  // a group that saw no key
      const float w = expf(gm[r] - mx);
      lsum += gl[r] * w;
      a += gacc[r][tid] * w;
    }
    if (splits == 1) {
      out[((size_t)b * nq + h) * D + tid] = from_f<T>(a / lsum);
    } else {
      float *p = partial + (((size_t)b * nq + h) * splits + split) * (D + 2);
      p[tid] = a;
      if (tid == 0) {
        p[D] = mx;
        p[D + 1] = lsum;
      }
    }
  }
}

// Merges decode_attention's slices: partial [b, nq, splits, d + 2] → out [b, nq, d].
// Grid (nq, b), d threads. A slice that saw no key has max -inf and is skipped.
template <typename T>
__device__ void decode_combine(const float *partial, T *out, int nq, int d, int splits) {
  const int h = blockIdx.x, b = blockIdx.y, c = threadIdx.x;
  const float *p = partial + ((size_t)b * nq + h) * splits * (d + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p[s * (d + 2) + d]);
  float l = 0.f, a = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = p[s * (d + 2) + d];
    if (ms == -INFINITY) continue;
    const float w = expf(ms - mx);
    l += p[s * (d + 2) + d + 1] * w;
    a += p[s * (d + 2) + c] * w;
  }
  out[((size_t)b * nq + h) * d + c] = from_f<T>(a / l);
}

// silu(gate) * up for gate_up [rows, 2 inter] (gate first) → [rows, inter].
template <typename T>
__device__ void silu_mul(const T *gate_up, T *out, uint32_t rows, uint32_t inter) {
  const size_t n = (size_t)rows * inter;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t r = i / inter, c = i % inter;
    const float g = to_f(gate_up[r * 2 * inter + c]);
    const float u = to_f(gate_up[r * 2 * inter + inter + c]);
    out[i] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

// Quantizes the warp's 32 consecutive values (lane i holds value i) into `block`, with the
// arithmetic of candle's own quantize kernel (its reductions in the same order), so a
// projection fed from here gives the same bits as one that quantized its input itself.
// Every lane of the warp must call it.
__device__ __forceinline__ void q8_1_store(float v, q8_1_block *block) {
  const int lane = threadIdx.x % 32;
  float amax = fabsf(v), sum = v;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float d = amax / 127.0f;
  block->qs[lane] = amax == 0.0f ? 0 : (int8_t)roundf(v / d);
  if (lane == 0) block->ds = __halves2half2(__float2half(d), __float2half(sum));
}

// The residual add and the RMSNorm after it, for one row per block: sum = x + delta
// (rounded to T, as candle's add), normed = RMSNorm(sum) · w, and with `q8` non-null the
// normed row (as rounded to T) in Q8_1 blocks, `n_padded` values per row, zeros past n.
// `delta` null: normed = RMSNorm(x) and `sum` is not written. The norm repeats candle's
// kernel (block of 32 threads below 1,024 values, else 1,024; the same reduction order),
// so the decode step's tokens do not move. Replaces an add, a norm and a quantize
// launch; a decode step of Qwen3-VL-2B ran ~110 of each (run 37's profile).
template <typename T>
__device__ void add_rms_norm(const T *x, const T *delta, const T *w, T *sum, T *normed,
                             q8_1_block *q8, int n, int n_padded, float eps) {
  const size_t row = blockIdx.x;
  x += row * n;
  normed += row * n;
  const T *src = x;
  if (delta) {
    delta += row * n;
    sum += row * n;
    src = sum;
  }
  float ss = 0.f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = to_f(x[c]);
    if (delta) {
      const T s = from_f<T>(v + to_f(delta[c]));
      sum[c] = s;
      v = to_f(s);
    }
    ss += v * v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (blockDim.x > 32) {
    __shared__ float part[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    ss = part[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  }
  const float scale = rsqrtf(ss / n + eps);
  // Each thread reads back only the sums it wrote itself.
  const int cols = q8 ? n_padded : n;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = 0.f;
    if (c < n) {
      const T o = from_f<T>(scale * to_f(src[c]) * to_f(w[c]));
      normed[c] = o;
      v = to_f(o);
    }
    if (q8) q8_1_store(v, q8 + (row * n_padded + c) / 32);
  }
}

// silu_mul with the product also written as Q8_1 blocks for the down projection:
// `inter_padded` values per row, zeros past `inter`. Warps stay whole (every bound is a
// multiple of 32), as q8_1_store needs.
template <typename T>
__device__ void silu_mul_q8(const T *gate_up, T *out, q8_1_block *q8, uint32_t rows,
                            uint32_t inter, uint32_t inter_padded) {
  const size_t n = (size_t)rows * inter_padded;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t r = i / inter_padded, c = i % inter_padded;
    float v = 0.f;
    if (c < inter) {
      const float g = to_f(gate_up[r * 2 * inter + c]);
      const float u = to_f(gate_up[r * 2 * inter + inter + c]);
      const T o = from_f<T>(g / (1.f + expf(-g)) * u);
      out[r * inter + c] = o;
      v = to_f(o);
    }
    q8_1_store(v, q8 + i / 32);
  }
}

// y = x Wᵀ (+ bias) for a few rows of x: the decode step's projections, where cuBLAS reads
// the weights at 1.7-2.8 TB/s of the card's ~3.3. x [m, k], W [n, k] (a checkpoint's
// [out, in]), y [m, n], m ≤ 8, k a multiple of 8. One warp per output column n: each lane
// reads 8 consecutive weights (16 or 32 bytes) per step, two steps in flight, and keeps m
// f32 sums; 8 warps per block.
template <typename T, int M>
__device__ void gemv(const T *x, const T *w, const T *bias, T *y, int n, int k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = blockIdx.x * 8 + warp;
  if (col >= n) return;
  const T *wr = w + (size_t)col * k;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  for (int k0 = lane * 8; k0 < k; k0 += 2 * 256) {
    const int k1 = k0 + 256;
    const bool second = k1 < k;
    float wa[8], wb[8];
    load8(wr + k0, wa);
    if (second) load8(wr + k1, wb);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float xa[8];
      load8(x + (size_t)r * k + k0, xa);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[r] += xa[j] * wa[j];
      if (second) {
        float xb[8];
        load8(x + (size_t)r * k + k1, xb);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r] += xb[j] * wb[j];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[(size_t)r * n + col] = from_f<T>(v + (bias ? to_f(bias[col]) : 0.f));
  }
}

#define GEMV(NAME, T, M)                                                                   \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *x, const T *w, const T *bias, T *y, int n, int k) {                    \
    gemv<T, M>(x, w, bias, y, n, k);                                                       \
  }
#define GEMV_ALL_ROWS(T, S)                                                                \
  GEMV(gemv_##S##_m1, T, 1)                                                                \
  GEMV(gemv_##S##_m2, T, 2)                                                                \
  GEMV(gemv_##S##_m3, T, 3)                                                                \
  GEMV(gemv_##S##_m4, T, 4)                                                                \
  GEMV(gemv_##S##_m5, T, 5)                                                                \
  GEMV(gemv_##S##_m6, T, 6)                                                                \
  GEMV(gemv_##S##_m7, T, 7)                                                                \
  GEMV(gemv_##S##_m8, T, 8)
GEMV_ALL_ROWS(float, f32)
GEMV_ALL_ROWS(__nv_bfloat16, bf16)
GEMV_ALL_ROWS(__half, f16)

#define KV_WRITE(NAME, T)                                                                  \
  extern "C" __global__ void NAME(const T *qkv, const T *bias, const T *cos, const T *sin, \
                                  const T *k_norm, float eps, T *k_cache, T *v_cache,      \
                                  int nq, int nkv, int d, int cap, int pos) {              \
    kv_write<T>(qkv, bias, cos, sin, k_norm, eps, k_cache, v_cache, nq, nkv, d, cap, pos); \
  }
KV_WRITE(kv_write_f32, float)
KV_WRITE(kv_write_bf16, __nv_bfloat16)
KV_WRITE(kv_write_f16, __half)

// The same with the cache length after the write read from device memory (len[0]), for a
// step captured in a CUDA graph: each replay writes where that step's buffer says. The
// test is uniform over the block, so returning before the block-wide norm is safe.
#define KV_WRITE_DEV(NAME, T)                                                              \
  extern "C" __global__ void NAME(const T *qkv, const T *bias, const T *cos, const T *sin, \
                                  const T *k_norm, float eps, T *k_cache, T *v_cache,      \
                                  int nq, int nkv, int d, int cap, const uint32_t *len) {  \
    const int pos = (int)len[0] - 1;                                                       \
    if (pos < 0 || pos >= cap) return;                                                     \
    kv_write<T>(qkv, bias, cos, sin, k_norm, eps, k_cache, v_cache, nq, nkv, d, cap, pos); \
  }
KV_WRITE_DEV(kv_write_dev_f32, float)
KV_WRITE_DEV(kv_write_dev_bf16, __nv_bfloat16)
KV_WRITE_DEV(kv_write_dev_f16, __half)

#define DECODE_ATTENTION(NAME, T, D)                                                       \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm,       \
           float eps, const T *k_cache, const T *v_cache, const uint32_t *pad, T *out,     \
           float *partial, int nq, int nkv, int cap, int kv_len) {                         \
    decode_attention<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad, out,   \
                           partial, nq, nkv, cap, kv_len);                                 \
  }                                                                                        \
  /* The length from device memory, as KV_WRITE_DEV. */                                    \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME##_dev(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm, \
                 float eps, const T *k_cache, const T *v_cache, const uint32_t *pad,       \
                 T *out, float *partial, int nq, int nkv, int cap, const uint32_t *len) {  \
    decode_attention<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad, out,   \
                           partial, nq, nkv, cap, min((int)len[0], cap));                  \
  }
DECODE_ATTENTION(decode_attention_f32_d16, float, 16)
DECODE_ATTENTION(decode_attention_f32_d32, float, 32)
DECODE_ATTENTION(decode_attention_f32_d64, float, 64)
DECODE_ATTENTION(decode_attention_f32_d128, float, 128)
DECODE_ATTENTION(decode_attention_f32_d256, float, 256)
DECODE_ATTENTION(decode_attention_bf16_d16, __nv_bfloat16, 16)
DECODE_ATTENTION(decode_attention_bf16_d32, __nv_bfloat16, 32)
DECODE_ATTENTION(decode_attention_bf16_d64, __nv_bfloat16, 64)
DECODE_ATTENTION(decode_attention_bf16_d128, __nv_bfloat16, 128)
DECODE_ATTENTION(decode_attention_bf16_d256, __nv_bfloat16, 256)
DECODE_ATTENTION(decode_attention_f16_d16, __half, 16)
DECODE_ATTENTION(decode_attention_f16_d32, __half, 32)
DECODE_ATTENTION(decode_attention_f16_d64, __half, 64)
DECODE_ATTENTION(decode_attention_f16_d128, __half, 128)
DECODE_ATTENTION(decode_attention_f16_d256, __half, 256)

#define DECODE_COMBINE(NAME, T)                                                            \
  extern "C" __global__ void NAME(const float *partial, T *out, int nq, int d, int splits) { \
    decode_combine<T>(partial, out, nq, d, splits);                                        \
  }
DECODE_COMBINE(decode_combine_f32, float)
DECODE_COMBINE(decode_combine_bf16, __nv_bfloat16)
DECODE_COMBINE(decode_combine_f16, __half)

#define SILU_MUL(NAME, T)                                                                  \
  extern "C" __global__ void NAME(const T *gate_up, T *out, uint32_t rows, uint32_t inter) { \
    silu_mul<T>(gate_up, out, rows, inter);                                                \
  }
SILU_MUL(silu_mul_f32, float)
SILU_MUL(silu_mul_bf16, __nv_bfloat16)
SILU_MUL(silu_mul_f16, __half)

#define ADD_RMS_NORM(NAME, T)                                                              \
  extern "C" __global__ void NAME(const T *x, const T *delta, const T *w, T *sum,          \
                                  T *normed, void *q8, int n, int n_padded, float eps) {   \
    add_rms_norm<T>(x, delta, w, sum, normed, (q8_1_block *)q8, n, n_padded, eps);         \
  }
ADD_RMS_NORM(add_rms_norm_f32, float)
ADD_RMS_NORM(add_rms_norm_bf16, __nv_bfloat16)
ADD_RMS_NORM(add_rms_norm_f16, __half)

#define SILU_MUL_Q8(NAME, T)                                                               \
  extern "C" __global__ void NAME(const T *gate_up, T *out, void *q8, uint32_t rows,       \
                                  uint32_t inter, uint32_t inter_padded) {                 \
    silu_mul_q8<T>(gate_up, out, (q8_1_block *)q8, rows, inter, inter_padded);             \
  }
SILU_MUL_Q8(silu_mul_q8_f32, float)
SILU_MUL_Q8(silu_mul_q8_bf16, __nv_bfloat16)
SILU_MUL_Q8(silu_mul_q8_f16, __half)
