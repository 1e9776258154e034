// A decode step's Q4_K or Q6_K projection, y = x Wᵀ for up to 8 activation rows already
// quantized to Q8_1 blocks (by the residual norm's or silu·up's kernel, or a quantize
// launch).
//
// candle's MMVQ gives each output row a block of 128 threads; at k = 2,048 (Qwen3-VL-2B)
// such a block reads 1,152 bytes of weights and spends most of its time starting and
// reducing across warps: run 39's profile had its matvecs at 25-45% of the card's
// bandwidth. Here a warp owns an output row, with no shared memory or block barrier: its 32
// lanes read four super-blocks per step, 16 bytes of quants each, and one shuffle
// reduction ends the row. The arithmetic per sub-block is the MMVQ kernel's (integer dot
// products of the 4-bit quants with the int8 activations, the mins against the
// activations' integer sums, then the scales in f32); only the order of the f32 sums over
// sub-blocks differs, so outputs agree to rounding, not bit for bit.
//
// Q4_K super-block, 256 values in 144 bytes: f16 d, f16 dmin, 12 bytes of packed 6-bit
// scales and mins (8 sub-blocks of 32), 128 bytes of quants in four runs of 32 bytes: run c
// holds values 64c..64c+31 in its low nibbles (sub-block 2c) and 64c+32..64c+63 in its high
// nibbles (sub-block 2c+1). x = d·scale·q − dmin·min.

#include "common.cuh"

__device__ __forceinline__ int dot4(int a, int b, int c) {
#if __CUDA_ARCH__ >= 610
  return __dp4a(a, b, c);
#else
  const int8_t *x = reinterpret_cast<const int8_t *>(&a);
  const int8_t *y = reinterpret_cast<const int8_t *>(&b);
  return c + x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
#endif
}

// Rows per block of 256 threads: one per warp.
#define MATVEC_WARPS 8

// y[r, row] for r < M, row < n: weights `w` (n rows of `sbs` super-blocks, 16-byte
// aligned), activations `x` (M rows of `x_blocks` Q8_1 blocks, the first 8·sbs of each
// used).
template <typename T, int M>
__device__ void matvec_q4k(const uint8_t *__restrict__ w, const q8_1_block *__restrict__ x,
                           T *__restrict__ y, int n, int sbs, int x_blocks) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * MATVEC_WARPS + threadIdx.x / 32;
  const bool live = row < n;  // the whole warp: no barrier below
  const uint8_t *wr = w + (size_t)(live ? row : 0) * sbs * 144;
  // Lane's 16 bytes of a super-block's quants: run c, bytes l0..l0+15 of its 32.
  const int part = lane % 8, run = part / 2, l0 = (part % 2) * 16;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  // Each pass requests the next pass's weights (and for one or two rows its activations)
  // before its own arithmetic: a pass used to wait for its own loads, and down's 24
  // super-blocks a row took six such round trips one after the other (run 41: 2,048-row
  // products at 6-7 µs, latency-bound). With more rows the activations are read in their
  // own pass: held a pass ahead they took 237 registers at eight rows.
  constexpr bool ahead = M <= 2;
  int xl[M][4], xh[M][4];
  float dl[M], dh[M];
  auto load_x = [&](int sb) {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const q8_1_block *lo = x + (size_t)r * x_blocks + sb * 8 + 2 * run;
      const int *ul = reinterpret_cast<const int *>(lo->qs + l0);
      const int *uh = reinterpret_cast<const int *>((lo + 1)->qs + l0);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xl[r][i] = ul[i];
        xh[r][i] = uh[i];
      }
      dl[r] = __low2float(lo->ds);
      dh[r] = __low2float((lo + 1)->ds);
    }
  };
  uint4 head_n{}, q_n{};
  auto fetch = [&](int sb) {
    const uint4 *b = reinterpret_cast<const uint4 *>(wr + (size_t)sb * 144);
    // d, dmin and the 12 bytes of scales and mins in one load, the lane's quants in another.
    head_n = __ldg(b);
    q_n = __ldg(b + 1 + part);
  };
  // The first pass's weights are requested before waiting for the activations, which the
  // kernel before writes (early_launch.rs).
  if (live && lane / 8 < sbs) fetch(lane / 8);
  inputs_ready();
  if (!live) return;
  if (ahead && lane / 8 < sbs) load_x(lane / 8);
  for (int sb = lane / 8; sb < sbs; sb += 4) {
    if (!ahead) load_x(sb);
    const uint4 head = head_n, q = q_n;
    int cxl[M][4], cxh[M][4];
    float cdl[M], cdh[M];
#pragma unroll
    for (int r = 0; r < M; ++r) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        cxl[r][i] = xl[r][i];
        cxh[r][i] = xh[r][i];
      }
      cdl[r] = dl[r];
      cdh[r] = dh[r];
    }
    if (sb + 4 < sbs) {
      fetch(sb + 4);
      if (ahead) load_x(sb + 4);
    }
    __half2 dm_h;
    memcpy(&dm_h, &head.x, 4);
    const float2 dm = __half22float2(dm_h);
    int s_lo, m_lo, s_hi, m_hi;
    q4k_scale_min_words(head.y, head.z, head.w, 2 * run, s_lo, m_lo);
    q4k_scale_min_words(head.y, head.z, head.w, 2 * run + 1, s_hi, m_hi);
    const int v[4] = {(int)q.x, (int)q.y, (int)q.z, (int)q.w};
#pragma unroll
    for (int r = 0; r < M; ++r) {
      int dot_lo = 0, dot_hi = 0, sum_lo = 0, sum_hi = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int a = cxl[r][i], c = cxh[r][i];
        dot_lo = dot4(v[i] & 0x0F0F0F0F, a, dot_lo);
        dot_hi = dot4((v[i] >> 4) & 0x0F0F0F0F, c, dot_hi);
        sum_lo = dot4(0x01010101, a, sum_lo);
        sum_hi = dot4(0x01010101, c, sum_hi);
      }
      const float sum_d = cdl[r] * (float)(dot_lo * s_lo) + cdh[r] * (float)(dot_hi * s_hi);
      const float sum_m = cdl[r] * (float)(sum_lo * m_lo) + cdh[r] * (float)(sum_hi * m_hi);
      acc[r] += dm.x * sum_d - dm.y * sum_m;
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) y[(size_t)r * n + row] = from_f<T>(v);
  }
}

// Q6_K super-block, 256 values in 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits),
// int8 scales[16] (one per 16 values), f16 d. Half h (128 values) reads ql[64h..64h+64],
// qh[32h..32h+32], scales[8h..8h+8]; its quarter j (32 values), value l, takes the low
// (j < 2) or high nibble of ql[64h + 32(j%2) + l] and bits 2j, 2j+1 of qh[32h + l], scale
// scales[8h + 2j + l/16]; x = d·scale·(q − 32). Blocks are only 2-byte aligned (210 bytes),
// so a lane reads its bytes in 16-bit loads: half h, values l0..l0+7 of its four quarters.
__device__ __forceinline__ int load4_u16(const uint8_t *p) {
  const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
  return (int)((uint32_t)__ldg(h) | ((uint32_t)__ldg(h + 1) << 16));
}

template <typename T, int M>
__device__ void matvec_q6k(const uint8_t *__restrict__ w, const q8_1_block *__restrict__ x,
                           T *__restrict__ y, int n, int sbs, int x_blocks) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * MATVEC_WARPS + threadIdx.x / 32;
  inputs_ready();
  if (row >= n) return;  // the whole warp: no barrier below
  const uint8_t *wr = w + (size_t)row * sbs * 210;
  const int part = lane % 8, h = part / 4, l0 = (part % 4) * 8;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  for (int sb = lane / 8; sb < sbs; sb += 4) {
    const uint8_t *b = wr + (size_t)sb * 210;
    // ql bytes l0..l0+7 of the half's two 32-byte runs, qh bytes l0..l0+7.
    int ql[2][2], qh[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      ql[0][i] = load4_u16(b + 64 * h + l0 + 4 * i);
      ql[1][i] = load4_u16(b + 64 * h + 32 + l0 + 4 * i);
      qh[i] = load4_u16(b + 128 + 32 * h + l0 + 4 * i);
    }
    const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 8 * h + l0 / 16;
    const float d = __half2float(*reinterpret_cast<const __half *>(b + 208));
    // The 6-bit values of quarter j, 4 per int, and its scale.
    int q[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int low = (ql[j % 2][i] >> (j < 2 ? 0 : 4)) & 0x0F0F0F0F;
        const int high = ((qh[i] >> (2 * j)) & 0x03030303) << 4;
        q[j][i] = low | high;
      }
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const q8_1_block *blk = x + (size_t)r * x_blocks + sb * 8 + 4 * h + j;
        const int *u = reinterpret_cast<const int *>(blk->qs + l0);
        const int dot = dot4(q[j][1], u[1], dot4(q[j][0], u[0], 0));
        const int total = dot4(0x01010101, u[1], dot4(0x01010101, u[0], 0));
        sum += __low2float(blk->ds) * (float)((dot - 32 * total) * sc[2 * j]);
      }
      acc[r] += d * sum;
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) y[(size_t)r * n + row] = from_f<T>(v);
  }
}

#define MATVEC(BLOCK, NAME, T, M)                                                          \
  extern "C" __global__ void __launch_bounds__(32 * MATVEC_WARPS)                          \
      NAME(const uint8_t *w, const void *x, T *y, int n, int sbs, int x_blocks) {          \
    matvec_##BLOCK<T, M>(w, (const q8_1_block *)x, y, n, sbs, x_blocks);                   \
  }
#define MATVEC_ALL_ROWS(BLOCK, T, S)                                                       \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m1, T, 1)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m2, T, 2)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m3, T, 3)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m4, T, 4)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m5, T, 5)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m6, T, 6)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m7, T, 7)                                           \
  MATVEC(BLOCK, matvec_##BLOCK##_##S##_m8, T, 8)
MATVEC_ALL_ROWS(q4k, float, f32)
MATVEC_ALL_ROWS(q4k, __nv_bfloat16, bf16)
MATVEC_ALL_ROWS(q4k, __half, f16)
MATVEC_ALL_ROWS(q6k, float, f32)
MATVEC_ALL_ROWS(q6k, __nv_bfloat16, bf16)
MATVEC_ALL_ROWS(q6k, __half, f16)
