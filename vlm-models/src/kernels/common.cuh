// What the kernel files share: conversions between the stored dtypes and f32, 16-byte
// loads and stores of eight elements, the gated SiLU, and block/warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

// Eight consecutive elements (16- or 32-byte aligned) as loaded, converted to f32 later
// by unpack8: a thread waits for a load only where its value is first used, so loads
// whose values wait in registers can be issued ahead of the arithmetic on earlier ones.
template <typename T> struct raw8 { uint4 u; };
template <> struct raw8<float> { float4 a, b; };

template <typename T> __device__ __forceinline__ raw8<T> load_raw8(const T *p) {
  raw8<T> r;
  r.u = *reinterpret_cast<const uint4 *>(p);
  return r;
}
template <> __device__ __forceinline__ raw8<float> load_raw8<float>(const float *p) {
  raw8<float> r;
  r.a = *reinterpret_cast<const float4 *>(p);
  r.b = *reinterpret_cast<const float4 *>(p + 4);
  return r;
}

__device__ __forceinline__ void unpack8(const raw8<float> &r, float *o) {
  o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w;
  o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
}
__device__ __forceinline__ void unpack8(const raw8<__nv_bfloat16> &r, float *o) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&r.u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void unpack8(const raw8<__half> &r, float *o) {
  const __half2 *h = reinterpret_cast<const __half2 *>(&r.u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}

// Eight consecutive elements (16- or 32-byte aligned) as f32.
template <typename T> __device__ __forceinline__ void load8(const T *p, float *o) {
  unpack8(load_raw8(p), o);
}

// Eight f32 values rounded to T and stored at `p` (16- or 32-byte aligned) in 16-byte
// pieces; each value rounded to nearest, as from_f rounds it.
template <typename T> __device__ __forceinline__ void store8(T *p, const float *v);
template <> __device__ __forceinline__ void store8<float>(float *p, const float *v) {
  *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4 *>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
template <> __device__ __forceinline__ void store8<__nv_bfloat16>(__nv_bfloat16 *p, const float *v) {
  uint4 u;
  __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4 *>(p) = u;
}
template <> __device__ __forceinline__ void store8<__half>(__half *p, const float *v) {
  uint4 u;
  __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4 *>(p) = u;
}

// silu(g) · u in f32: every kernel that applies a gated SiLU computes it with this one
// expression, so that they agree bit for bit.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.f + expf(-g)) * u; }

// Sum over the block (blockDim.x a multiple of 32); every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float part[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `part` may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += part[w];
  return total;
}

// Max over the block (blockDim.x a multiple of 32); every thread gets it.
__device__ float block_max(float v) {
  __shared__ float part[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `part` may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) m = fmaxf(m, part[w]);
  return m;
}

// Max and sum over one warp; every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One Q8_1 block as candle's MMVQ kernels read a quantized projection's activations
// (ggml's layout): scale d = amax / 127 and the block's sum as halves, then 32 int8 values.
struct q8_1_block {
  __half2 ds;
  int8_t qs[32];
};

// The 6-bit scale and min number j (0-7) of a Q4_K block's 12 packed bytes, held as three
// little-endian words (bytes 0-3, 4-7, 8-11): numbers 0-3 in the low 6 bits of bytes j and
// j + 4; numbers 4-7 from the nibbles of byte j + 4 with their top 2 bits in the high bits
// of bytes j − 4 (scale) and j (min). From registers, so that a kernel can fetch the bytes
// with its other loads (a per-byte read of a lane-dependent index went through memory).
__device__ __forceinline__ void q4k_scale_min_words(uint32_t w0, uint32_t w1, uint32_t w2,
                                                    int j, int &s, int &m) {
  // Selects, not branches: a branch here kept the compiler from issuing the loads after it
  // before the scales' own load had arrived.
  const int i = (j & 3) * 8;
  const int b0 = (w0 >> i) & 0xFF, b1 = (w1 >> i) & 0xFF, b2 = (w2 >> i) & 0xFF;
  s = j < 4 ? b0 & 63 : (b2 & 0xF) | ((b0 >> 6) << 4);
  m = j < 4 ? b1 & 63 : (b2 >> 4) | ((b1 >> 6) << 4);
}

// q4k_scale_min_words for the 12 bytes at `sc` (4-byte aligned: a block's start + 4).
__device__ __forceinline__ void q4k_scale_min(const uint8_t *sc, int j, int &s, int &m) {
  const uint32_t *w = reinterpret_cast<const uint32_t *>(sc);
  q4k_scale_min_words(w[0], w[1], w[2], j, s, m);
}

// Programmatic dependent launch (early_launch.rs): a kernel launched early may be running
// while the kernel before it in the stream still is. wait_for_inputs() returns once every
// earlier kernel has ended and its writes are visible; every thread of such a kernel calls
// it before reading anything an earlier kernel writes (weights, written by none, may be
// read before) and before it ends, so that its own end still implies theirs.
// let_next_start() then lets the next kernel's blocks come up. Both do nothing below
// compute capability 9.0 or when the kernel was launched the ordinary way.
__device__ __forceinline__ void wait_for_inputs() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void let_next_start() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Both, for a kernel with nothing to request before its inputs.
__device__ __forceinline__ void inputs_ready() {
  wait_for_inputs();
  let_next_start();
}
