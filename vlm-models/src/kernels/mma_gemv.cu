// y = x Wᵀ (+ bias) for 2 to 32 rows of x on the tensor cores: the projections of a
// batch's decode step. The one-warp-per-column gemv (decode.cu) re-reads x once per row for
// each weight it loads, so from 2 rows on cuBLAS took these products; this kernel reads
// every weight byte once whatever the rows. Measured (H100, run 46, Qwen2.5-VL-7B's
// shapes): faster than cuBLAS from 2 to 16 rows (o_proj 10.4 → 9.4 µs at 8 rows, 16.1 →
// 10.7 at 16; down 54.0 → 52.0), slower at 32 (gate/up 98 → 108 µs), hence
// RuntimeOptions::mma_gemv_max_rows' default of 16.
//
// Each warp computes 16 outputs (A: 16 rows of W) against up to 8 rows of x per m16n8k16
// (B: x's rows as its columns), over a share of k; the 8 warps of a block take the same
// 16 outputs, interleaved 32-wide chunks of k, and add their sums in shared memory. A
// product's k order does not matter as long as A and B agree, so each lane loads 16
// contiguous bytes where PTX's fragments want scattered pairs: lane 4·g + t reads
// elements 8t to 8t + 7 of a chunk from W's rows g and g + 8 and from x's row g, and the
// first MMA takes elements 8t..8t+3 as the fragment's k positions {2t, 2t+1, 2t+8, 2t+9},
// the second 8t+4..8t+7. Every byte of W is read once, in 64-byte runs per row.
//
// x [m, k], W [n, k] (a checkpoint's [out, in]), y [m, n]; k a multiple of 8, x and W
// starting on 16 bytes. Built only for compute capability 8.0 and above (build.rs).

#include "common.cuh"
#include "mma.cuh"

namespace {

constexpr int WARPS = 8;  // warps of a block, each a share of k for the block's 16 outputs

__device__ __forceinline__ uint4 zero16() { return make_uint4(0, 0, 0, 0); }

// NT: 8-row tiles of x (m ≤ 8·NT). U: chunks of 32 whose loads a warp issues before their
// products; fewer with more tiles, whose x fragments take registers too. FT: 16-output
// tiles of a warp (and so of its block): with two, each x fragment feeds two products,
// which halves x's reads from L2 per weight byte where x has many rows.
template <typename T, int NT, int U, int FT>
__device__ void mma_gemv(const T *x, const T *w, const T *bias, T *y, int m, int n, int k) {
  __shared__ float part[WARPS][FT * NT * 4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int f0 = blockIdx.x * 16 * FT;
  // W's rows g and g + 8 of each output tile; rows past n read row n − 1, whose sums are
  // never stored.
  const T *wr[2 * FT];
#pragma unroll
  for (int r = 0; r < 2 * FT; ++r) wr[r] = w + (size_t)min(f0 + g + 8 * r, n - 1) * k;
  const int step = WARPS * U * 32;
  uint4 a[U][2 * FT];
  // Weights are streamed once per step: loaded evict-first, and the first ones requested
  // before waiting for the kernel that writes x (early_launch.rs).
  auto fetch = [&](int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * WARPS * 32;
#pragma unroll
      for (int r = 0; r < 2 * FT; ++r)
        a[u][r] = kk < k ? __ldcs(reinterpret_cast<const uint4 *>(wr[r] + kk)) : zero16();
    }
  };
  const int first = warp * 32 + 8 * t;
  fetch(first);
  inputs_ready();
  float acc[FT][NT][4];
#pragma unroll
  for (int f = 0; f < FT; ++f)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[f][j][0] = acc[f][j][1] = acc[f][j][2] = acc[f][j][3] = 0.f;
  for (int k0 = first; k0 - 8 * t < k; k0 += step) {
    uint4 xs[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * WARPS * 32;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int row = g + 8 * j;
        xs[u][j] = kk < k && row < m ? *reinterpret_cast<const uint4 *>(x + (size_t)row * k + kk)
                                     : zero16();
      }
    }
    uint4 c[U][2 * FT];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < 2 * FT; ++r) c[u][r] = a[u][r];
    if (k0 + step - 8 * t < k) fetch(k0 + step);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int f = 0; f < FT; ++f) {
        const uint4 &lo = c[u][2 * f], &hi = c[u][2 * f + 1];
        const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
        const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t b0[2] = {xs[u][j].x, xs[u][j].y};
          const uint32_t b1[2] = {xs[u][j].z, xs[u][j].w};
          Mma<T>::run(acc[f][j], a0, b0);
          Mma<T>::run(acc[f][j], a1, b1);
        }
      }
  }
#pragma unroll
  for (int f = 0; f < FT; ++f)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[warp][(f * NT + j) * 4 + e][lane] = acc[f][j][e];
  __syncthreads();
  // Accumulator e of tile (f, j) in lane 4·gg + tt: output f0 + 16f + gg (+ 8 for e ≥ 2),
  // row 8j + 2tt (+ 1 for odd e).
  for (int i = threadIdx.x; i < FT * NT * 4 * 32; i += blockDim.x) {
    const int v = i / 32, l = i % 32, f = v / (4 * NT), j = v / 4 % NT, e = v % 4;
    const int o = f0 + 16 * f + l / 4 + (e >= 2 ? 8 : 0), row = 8 * j + 2 * (l % 4) + (e & 1);
    if (o >= n || row >= m) continue;
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < WARPS; ++q) s += part[q][v][l];
    if (bias) s += to_f(bias[o]);
    y[(size_t)row * n + o] = from_f<T>(s);
  }
}

}  // namespace

#define MMA_GEMV(NAME, T, NT, U, FT)                                                       \
  extern "C" __global__ void __launch_bounds__(32 * WARPS)                                 \
      NAME(const T *x, const T *w, const T *bias, T *y, int m, int n, int k) {             \
    mma_gemv<T, NT, U, FT>(x, w, bias, y, m, n, k);                                        \
  }
// _w2: two output tiles a warp (kernels::mma_gemv_wide).
#define MMA_GEMV_ALL_TILES(T, S)                                                           \
  MMA_GEMV(mma_gemv_##S##_t1, T, 1, 4, 1)                                                  \
  MMA_GEMV(mma_gemv_##S##_t2, T, 2, 4, 1)                                                  \
  MMA_GEMV(mma_gemv_##S##_t3, T, 3, 2, 1)                                                  \
  MMA_GEMV(mma_gemv_##S##_t4, T, 4, 2, 1)                                                  \
  MMA_GEMV(mma_gemv_##S##_t1_w2, T, 1, 2, 2)                                               \
  MMA_GEMV(mma_gemv_##S##_t2_w2, T, 2, 2, 2)                                               \
  MMA_GEMV(mma_gemv_##S##_t3_w2, T, 3, 1, 2)                                               \
  MMA_GEMV(mma_gemv_##S##_t4_w2, T, 4, 1, 2)
MMA_GEMV_ALL_TILES(__nv_bfloat16, bf16)
MMA_GEMV_ALL_TILES(__half, f16)
