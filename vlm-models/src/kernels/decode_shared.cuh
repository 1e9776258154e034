// What the two decode attentions (decode.cu on CUDA cores, decode_mma.cu on the tensor
// cores) share: a head's preparation from the fused q/k/v output, the output's store
// (with its Q8_1 blocks for the output projection) and the merge of key slices.
#pragma once

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

// The new token's key (bias, k-norm, RoPE) and value (bias) of kv head kh, rounded to T,
// from batch row `row` of the fused q/k/v output: the pair (i, i + d/2) for thread i < d/2,
// as prepare_head hands it out (every thread of the block calls it; false for the threads
// that hold no pair). What kv_write stores and what the decode attentions write themselves.
template <typename T>
__device__ bool prepare_new_kv(const T *row, const T *bias, const T *k_norm, float eps,
                               const T *cos, const T *sin, int nq, int nkv, int kh, int d,
                               T &k1, T &k2, T &x1, T &x2) {
  const int i = threadIdx.x, half = d / 2;
  const int ko = (nq + kh) * d, vo = (nq + nkv + kh) * d;
  float y1, y2;
  if (!prepare_head(row + ko, bias ? bias + ko : nullptr, k_norm, eps, cos, sin, d, y1, y2))
    return false;
  float v1 = to_f(row[vo + i]), v2 = to_f(row[vo + i + half]);
  if (bias) {
    v1 += to_f(bias[vo + i]);
    v2 += to_f(bias[vo + i + half]);
  }
  k1 = from_f<T>(y1);
  k2 = from_f<T>(y2);
  x1 = from_f<T>(v1);
  x2 = from_f<T>(v2);
  return true;
}

// Slice `split` of `splits` equal slices of sequence b's cached keys [pad[b], kv_len)
// (pad may be null): keys [start, end), possibly empty. Both decode attentions cut them
// so; kernels/cuda.rs's decode_splits picks `splits`.
struct KeySlice {
  int start, end;
};
__device__ __forceinline__ KeySlice key_slice(const uint32_t *pad, int b, int kv_len, int split,
                                              int splits) {
  const int first = pad ? (int)pad[b] : 0;
  const int chunk = (kv_len - first + splits - 1) / splits;
  const int start = first + split * chunk;
  return {start, min(kv_len, start + chunk)};
}

// A decode attention's first cache reads (`fetch`, none for an empty slice) and
// inputs_ready() in the order early launch allows (early_launch.rs): with new_pos ≥ 0 the
// rows read were written by earlier steps and are requested before the kernel waits for
// its inputs; with new_pos −1 the new row comes from the kernel before, so they follow.
template <typename F>
__device__ __forceinline__ void first_reads_and_inputs(int new_pos, const KeySlice &slice,
                                                       F fetch) {
  if (new_pos >= 0) {
    if (slice.start < slice.end) fetch(slice.start);
    inputs_ready();
  } else {
    inputs_ready();
    if (slice.start < slice.end) fetch(slice.start);
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

// An attention output value, column `col` of batch row `b` of out [b, cols], rounded to T;
// with `q8` also as the output projection's Q8_1 input (rows of `k_padded` values). The
// caller's warps hold 32 consecutive columns each, as q8_1_store needs.
template <typename T>
__device__ __forceinline__ void store_attention_out(T *out, q8_1_block *q8, int cols,
                                                    int k_padded, size_t b, int col, float v) {
  const T o = from_f<T>(v);
  out[b * cols + col] = o;
  if (q8) q8_1_store(to_f(o), q8 + (b * k_padded + col) / 32);
}

// Zero Q8_1 blocks for batch row b's columns cols..k_padded (the padding candle's quantized
// rows carry), written by the whole block; cols and k_padded are multiples of 32.
__device__ __forceinline__ void q8_zero_padding(q8_1_block *q8, int cols, int k_padded,
                                                size_t b) {
  for (int c = cols + threadIdx.x; c < k_padded; c += blockDim.x)
    q8_1_store(0.f, q8 + (b * k_padded + c) / 32);
}

// Merges decode_attention's slices for head h of batch row b: partial [b, nq, splits, d + 2]
// → out [b, nq, d], splits ≤ COMBINE_SPLITS, at least max(d, 32) threads; `q8` as
// decode_attention's `out_q8` (d ≥ 32: every thread a column). A slice that saw no key has
// max -inf and weight 0. The first warp reads every slice's max and total at once and
// leaves the weights in shared memory; each column then sums its slices with independent
// loads. (Reading them in two dependent loops over the slices cost two L2 round trips per
// slice: 6.6 µs at 6 slices, 9.1 at 12 under ncu, runs 40-41.) The slices are read from
// L2 (__ldcg): in decode_attention's last block they were written by other blocks. Every
// thread of the block calls it; a block may call it for several heads in turn (the barrier
// first: the shared weights of the last call may still be read).
#define COMBINE_SPLITS 512
template <typename T>
__device__ void combine_slices(const float *partial, T *out, int nq, int d, int splits,
                               q8_1_block *q8, int k_padded, int h, int b) {
  __shared__ float ws[COMBINE_SPLITS];
  __shared__ float total;
  const int c = threadIdx.x;
  const float *p = partial + ((size_t)b * nq + h) * splits * (d + 2);
  __syncthreads();
  if (c < 32) {
    float mx = -INFINITY;
    for (int s = c; s < splits; s += 32) mx = fmaxf(mx, __ldcg(p + s * (d + 2) + d));
    mx = warp_max(mx);
    float l = 0.f;
    for (int s = c; s < splits; s += 32) {
      const float ms = __ldcg(p + s * (d + 2) + d);
      const float w = ms == -INFINITY ? 0.f : expf(ms - mx);
      ws[s] = w;
      l += __ldcg(p + s * (d + 2) + d + 1) * w;
    }
    l = warp_sum(l);
    if (c == 0) total = l;
  }
  __syncthreads();
  if (q8 && h == nq - 1) q8_zero_padding(q8, nq * d, k_padded, b);
  if (c >= d) return;
  float a = 0.f;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) a += __ldcg(p + s * (d + 2) + c) * ws[s];
  store_attention_out(out, q8, nq * d, k_padded, b, h * d + c, a / total);
}
