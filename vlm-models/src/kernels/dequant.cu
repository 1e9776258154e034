// Quantized weights dequantized straight to bf16 for a prefill's GEMM, and the rows of a
// quantized embedding table looked up straight to bf16. candle's dequantize
// kernels write f16 or f32, so a bf16 model took an f16 copy of each weight and then a
// cast pass over it: for Qwen2.5-VL-7B at int4 ~13 GB moved per prefill by the cast alone,
// and the f16 copy held beside the bf16 one. Each thread writes 8 consecutive values (one
// 16-byte store); the arithmetic per value is candle's (scale products in f32, then the
// quantized integer), rounded once to bf16.
//
// Block layouts (GGML's, as candle stores them; all little-endian):
//   Q8_0  34 bytes / 32 values:  f16 d, int8 q[32];                 x = d·q
//   Q4_0  18 bytes / 32 values:  f16 d, u8 q[16];                   x = d·(nibble − 8),
//         values 0-15 the low nibbles of q[0..16], 16-31 the high ones
//   Q4_K 144 bytes / 256 values: f16 d, f16 dmin, u8 sc[12], u8 q[128]; four runs of 64:
//         run c reads q[32c..32c+32], its first 32 values the low nibbles with 6-bit scale
//         and min number 2c, the next 32 the high nibbles with number 2c+1;
//         x = (d·scale)·nibble − dmin·min
//   Q6_K 210 bytes / 256 values: u8 ql[128], u8 qh[64], int8 sc[16], f16 d; two halves of
//         128, each four quarters of 32: quarter j of half h, value l takes 4 bits from
//         ql[64h + 32(j%2) + l] (low nibble for j < 2, high for j ≥ 2) and 2 bits from
//         qh[32h + l] >> 2j, scale sc[8h + 2j + l/16]; x = (d·scale)·(q − 32)

#include "common.cuh"

__device__ __forceinline__ float half_at(const uint8_t *p) {
  return __half2float(*reinterpret_cast<const __half *>(p));
}

// Values 8t..8t+8 of the weight, t = this thread's group.
__device__ __forceinline__ void q8_0_group(const uint8_t *w, size_t t, float *v) {
  const uint8_t *b = w + (t / 4) * 34;
  const float d = half_at(b);
  const int8_t *q = reinterpret_cast<const int8_t *>(b + 2) + (t % 4) * 8;
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = d * q[i];
}

__device__ __forceinline__ void q4_0_group(const uint8_t *w, size_t t, float *v) {
  const uint8_t *b = w + (t / 4) * 18;
  const float d = half_at(b);
  const int part = t % 4;
  const uint8_t *q = b + 2 + (part % 2) * 8;
  const int shift = part < 2 ? 0 : 4;
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = d * (float)(((q[i] >> shift) & 0xF) - 8);
}

__device__ __forceinline__ void q4k_group(const uint8_t *w, size_t t, float *v) {
  const uint8_t *b = w + (t / 32) * 144;
  const int first = (t % 32) * 8;  // within the block's 256 values
  const int run = first / 64, high = (first % 64) / 32, l = first % 32;
  int s, m;
  q4k_scale_min(b + 4, 2 * run + high, s, m);
  const float d = half_at(b) * (float)s, mn = half_at(b + 2) * (float)m;
  const uint8_t *q = b + 16 + 32 * run + l;
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = d * (float)((q[i] >> (4 * high)) & 0xF) - mn;
}

__device__ __forceinline__ void q6k_group(const uint8_t *w, size_t t, float *v) {
  const uint8_t *b = w + (t / 32) * 210;
  const int first = (t % 32) * 8;
  const int half = first / 128, j = (first % 128) / 32, l = first % 32;
  const uint8_t *ql = b + 64 * half + 32 * (j % 2) + l;
  const uint8_t *qh = b + 128 + 32 * half + l;
  const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192);
  const float d = half_at(b + 208) * (float)sc[8 * half + 2 * j + l / 16];
  const int low_shift = j < 2 ? 0 : 4;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int q = ((ql[i] >> low_shift) & 0xF) | (((qh[i] >> (2 * j)) & 3) << 4);
    v[i] = d * (float)(q - 32);
  }
}

#define DEQUANT_BF16(NAME, GROUP)                                                          \
  extern "C" __global__ void NAME(const uint8_t *w, __nv_bfloat16 *out, size_t groups) {   \
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < groups;             \
         t += (size_t)blockDim.x * gridDim.x) {                                            \
      float v[8];                                                                          \
      GROUP(w, t, v);                                                                      \
      store8<__nv_bfloat16>(out + 8 * t, v);                                                         \
    }                                                                                      \
  }
// An embedding lookup: row ids[r] of a table of `rows` rows (`row_bytes` bytes, `row_groups`
// groups of 8 values each) into output row r, for `count` ids. The ids stay on the card,
// so a decode step's lookup is one launch inside its graph. An id past the table writes
// zeros rather than read outside it (the tokenizer never makes one).
#define EMBED_BF16(NAME, GROUP)                                                            \
  extern "C" __global__ void NAME(const uint8_t *w, const uint32_t *ids, __nv_bfloat16 *out, \
                                  size_t count, size_t row_groups, size_t row_bytes,       \
                                  uint32_t rows) {                                         \
    const size_t groups = count * row_groups;                                              \
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < groups;             \
         t += (size_t)blockDim.x * gridDim.x) {                                            \
      const uint32_t id = ids[t / row_groups];                                             \
      float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};                               \
      if (id < rows) GROUP(w + (size_t)id * row_bytes, t % row_groups, v);                 \
      store8<__nv_bfloat16>(out + 8 * t, v);                                                         \
    }                                                                                      \
  }

#define BLOCK_TYPE(SUFFIX, GROUP)                                                          \
  DEQUANT_BF16(dequantize_##SUFFIX##_bf16, GROUP)                                          \
  EMBED_BF16(embed_##SUFFIX##_bf16, GROUP)
BLOCK_TYPE(q8_0, q8_0_group)
BLOCK_TYPE(q4_0, q4_0_group)
BLOCK_TYPE(q4k, q4k_group)
BLOCK_TYPE(q6k, q6k_group)
