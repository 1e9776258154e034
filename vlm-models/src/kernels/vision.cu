// Kernels of the Qwen-VL vision towers' attention. Unfused, one layer of Qwen2.5-VL's
// windowed attention over a 1024×768 photo is ~130 launches: the q/k/v split, RoPE in f32
// (casts, two halves, a negation, a concatenation, products, a sum, a cast back), the
// scale, head transposes, and per run of equal windows three copies, two matmuls and a
// softmax. These two kernels do the same in two launches per layer:
//
// - vision_qkv: the fused projection's output [n, 3, H, D] made ready for attention;
// - segment_attention: softmax attention within each short segment (a window), every
//   segment and head in one launch.
//
// Every kernel computes in f32. Pointers are raw device addresses of contiguous tensors;
// optional inputs are null.

#include "common.cuh"

// qkv [n, 3, H, D]: the projection without its bias; bias [3 H D] or null; cos/sin [n, D]
// in f32 → q, k, v [H, n, D]. q and k get rotate-half RoPE in f32 and are rounded to T as
// the unfused path stores them; q is then multiplied by `scale` and rounded again (the
// unfused path scales the stored q). Grid (n), 256 threads.
template <typename T>
__device__ void vision_qkv(const T *qkv, const T *bias, const float *cos, const float *sin,
                           T *q, T *k, T *v, int n, int heads, int d, float scale) {
  const int row = blockIdx.x, half = d / 2, hd = heads * d;
  const T *src = qkv + (size_t)row * 3 * hd;
  const float *c = cos + (size_t)row * d;
  const float *s = sin + (size_t)row * d;
  const int pairs = heads * half;
  for (int p = threadIdx.x; p < 2 * pairs; p += blockDim.x) {
    const bool is_q = p < pairs;
    const int rem = is_q ? p : p - pairs;
    const int h = rem / half, i = rem % half;
    const int off = (is_q ? 0 : hd) + h * d;
    float x1 = to_f(src[off + i]), x2 = to_f(src[off + i + half]);
    if (bias) {
      x1 += to_f(bias[off + i]);
      x2 += to_f(bias[off + i + half]);
    }
    float y1 = x1 * c[i] - x2 * s[i];
    float y2 = x2 * c[i + half] + x1 * s[i + half];
    if (is_q) {
      y1 = to_f(from_f<T>(y1)) * scale;
      y2 = to_f(from_f<T>(y2)) * scale;
    }
    T *dst = (is_q ? q : k) + ((size_t)h * n + row) * d;
    dst[i] = from_f<T>(y1);
    dst[i + half] = from_f<T>(y2);
  }
  for (int e = threadIdx.x; e < hd; e += blockDim.x) {
    float x = to_f(src[2 * hd + e]);
    if (bias) x += to_f(bias[2 * hd + e]);
    v[((size_t)(e / d) * n + row) * d + e % d] = from_f<T>(x);
  }
}

// Attention within segments of at most `max_len` rows. q (already scaled), k, v [H, n, D];
// segment s is rows [bounds[s], bounds[s + 1]); out [n, H, D], the layout the output
// projection reads. Grid (segments, H), 128 threads (4 warps). Dynamic shared memory: the
// segment's K and V in f32, each row padded to D + 1 floats (D is even, so a warp reading
// one column of 32 key rows touches 32 different banks), then one query row and one row of
// scores per warp. A warp takes one query at a time: lane j scores keys j, j + 32, ...;
// softmax with warp reductions; then lane c sums output columns c, c + 32, ...
template <typename T>
__device__ void segment_attention(const T *q, const T *k, const T *v, const uint32_t *bounds,
                                  T *out, int n, int heads, int d, int max_len) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y;
  const int start = (int)bounds[blockIdx.x];
  const int len = min((int)bounds[blockIdx.x + 1] - start, max_len);
  const int ld = d + 1;
  float *ks = smem;
  float *vs = ks + (size_t)max_len * ld;
  float *qw = vs + (size_t)max_len * ld + warp * d;
  float *pw = vs + (size_t)max_len * ld + warps * d + warp * max_len;
  const size_t base = ((size_t)h * n + start) * d;
  for (int e = threadIdx.x; e < len * d; e += blockDim.x) {
    const int r = e / d, c = e % d;
    ks[r * ld + c] = to_f(k[base + e]);
    vs[r * ld + c] = to_f(v[base + e]);
  }
  __syncthreads();
  for (int i = warp; i < len; i += warps) {
    for (int c = lane; c < d; c += 32) qw[c] = to_f(q[base + (size_t)i * d + c]);
    __syncwarp();
    float mx = -INFINITY;
    for (int j = lane; j < len; j += 32) {
      const float *kr = ks + j * ld;
      float acc = 0.f;
      for (int c = 0; c < d; ++c) acc += qw[c] * kr[c];
      pw[j] = acc;
      mx = fmaxf(mx, acc);
    }
    mx = warp_max(mx);
    float sum = 0.f;
    for (int j = lane; j < len; j += 32) {
      const float e = expf(pw[j] - mx);
      pw[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    __syncwarp();
    const float inv = 1.f / sum;
    T *o = out + ((size_t)(start + i) * heads + h) * d;
    for (int c = lane; c < d; c += 32) {
      float acc = 0.f;
      for (int j = 0; j < len; ++j) acc += pw[j] * vs[j * ld + c];
      o[c] = from_f<T>(acc * inv);
    }
    __syncwarp();  // qw and pw are rewritten for the next query
  }
}

#define VISION_QKV(NAME, T)                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *qkv, const T *bias, const float *cos, const float *sin, T *q, T *k,    \
           T *v, int n, int heads, int d, float scale) {                                   \
    vision_qkv<T>(qkv, bias, cos, sin, q, k, v, n, heads, d, scale);                       \
  }
VISION_QKV(vision_qkv_f32, float)
VISION_QKV(vision_qkv_bf16, __nv_bfloat16)
VISION_QKV(vision_qkv_f16, __half)

#define SEGMENT_ATTENTION(NAME, T)                                                         \
  extern "C" __global__ void __launch_bounds__(128)                                        \
      NAME(const T *q, const T *k, const T *v, const uint32_t *bounds, T *out, int n,      \
           int heads, int d, int max_len) {                                                \
    segment_attention<T>(q, k, v, bounds, out, n, heads, d, max_len);                      \
  }
SEGMENT_ATTENTION(segment_attention_f32, float)
SEGMENT_ATTENTION(segment_attention_bf16, __nv_bfloat16)
SEGMENT_ATTENTION(segment_attention_f16, __half)
