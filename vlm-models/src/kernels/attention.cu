// Attention over long rows on the tensor cores, without materialising the scores: the
// vision towers' full attention within each image (and their windows), and the language
// model's causal prefill with GQA read in place from the KV cache.
//
// Unfused, a 1024×768 photo's full attention writes 16 heads × 3942² bf16 scores per
// layer and reads them back twice (softmax, then the product with V); a batch-8 prefill
// does the same with 28 heads × 1026² per sequence and layer. Profiled at batch 8 (H200,
// 2026-12-04), those score matmuls and softmaxes took ~120 of the call's 482 ms of GPU time.
//
// One block takes 64 query rows of one head (4 warps, 16 rows each) and walks the visible
// keys in tiles of 64 staged in shared memory: scores with mma.sync m16n8k16 (bf16 or f16
// in, f32 accumulated), an online softmax in f32 registers, the probabilities rounded to
// the input type and multiplied with V by the same instruction. The fragment layouts are
// PTX's (ISA, "Matrix Fragments for mma.m16n8k16"): lane = 4·g + t holds rows g and g + 8
// of the accumulators, columns 2t and 2t + 1 of each 8-wide tile; an accumulator tile of
// scores is, re-packed in place, the A operand of the product with V.
//
// The tiles are copied with cp.async, which writes shared memory without a round trip
// through registers, and each copy overlaps a product: V's tile lands while the scores
// against K's are computed, the next K tile while p · V is. K and V fragments come out of
// shared memory through ldmatrix, four 8×8 matrices per instruction (V's transposed on
// the way, since its rows are keys): the first version gathered V's fragments two
// 16-bit loads per register, eight loads per two MMAs where ldmatrix takes one.
//
// Built only for compute capability 8.0 and above (build.rs); the f32 path stays the
// unfused one.

#include "common.cuh"
#include "mma.cuh"

namespace {

constexpr int ROWS = 64;   // query rows per block
constexpr int KEYS = 64;   // keys per shared-memory tile
constexpr int THREADS = 128;

// Rows [row0, row0 + KEYS) of a [rows, d] matrix with row stride `stride` (elements) into
// shared memory [KEYS][DP + 8], zero outside rows [lo, hi) and columns ≥ d, issued as
// asynchronous copies (copies_wait, then __syncthreads, before reading). Eight elements
// (16 bytes) per copy: d, the strides and the base are multiples of 8.
template <typename T, int DP>
__device__ __forceinline__ void stage(T (*dst)[DP + 8], const T *src, long long stride, int row0,
                                      int lo, int hi, int d) {
  constexpr int CHUNKS = DP / 8;
  for (int e = threadIdx.x; e < KEYS * CHUNKS; e += THREADS) {
    const int r = e / CHUNKS, c = (e % CHUNKS) * 8;
    const int row = row0 + r;
    const bool full = row >= lo && row < hi && c < d;
    // A zero-filling copy still names an address: the matrix's start is always valid.
    copy16(&dst[r][c], full ? src + (long long)row * stride + c : src, full);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

}  // namespace

// Softmax attention of q against k, v with `scale` applied to the scores.
//
// Sequence (or segment) y = blockIdx.y, query head h = blockIdx.z, query rows
// 64·blockIdx.x onward. With `bounds` (u32 [segments + 1]): one sequence of rows, segment
// y is rows [bounds[y], bounds[y + 1]) of queries and keys alike. Without: sequence y has
// `q_len` queries and `kv_len` keys; with `causal`, query i (at position kv_len − q_len + i)
// sees keys up to itself, after the first pad[y] (pad may be null). Query head h reads
// key/value head h / rep. Element (y, h, row) of x is at x + y·sb + h·sh + row·sr, d
// contiguous elements per row. A row that sees no key gets zeros.
template <typename T, int DP>
__device__ void flash_attention(const T *q, const T *k, const T *v, T *out,
                                const uint32_t *bounds, const uint32_t *pad, int q_len, int kv_len,
                                int rep, int causal, int d, float scale, long long q_sb,
                                long long q_sh, long long q_sr, long long k_sb, long long k_sh,
                                long long k_sr, long long v_sb, long long v_sh, long long v_sr,
                                long long o_sb, long long o_sh, long long o_sr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ __align__(16) T ks[KEYS][DP + 8];
  __shared__ __align__(16) T vs[KEYS][DP + 8];
  constexpr int DK = DP / 16;  // k-steps of the score product
  constexpr int DN = DP / 8;   // 8-wide column tiles of the output
  // Each ldmatrix.x4 feeds two neighbouring tiles.
  static_assert(DN % 2 == 0 && KEYS % 16 == 0, "tiles are loaded in pairs");

  const int y = blockIdx.y, h = blockIdx.z, hk = h / rep;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int q_lo, q_hi, k_lo, k_hi, offset;
  const T *qb = q + (long long)h * q_sh;
  const T *kb = k + (long long)hk * k_sh;
  const T *vb = v + (long long)hk * v_sh;
  T *ob = out + (long long)h * o_sh;
  if (bounds) {
    q_lo = k_lo = (int)bounds[y];
    q_hi = k_hi = (int)bounds[y + 1];
    offset = 0;
  } else {
    q_lo = 0;
    q_hi = q_len;
    k_lo = pad ? (int)pad[y] : 0;
    k_hi = kv_len;
    offset = kv_len - q_len;
    qb += y * q_sb;
    kb += y * k_sb;
    vb += y * v_sb;
    ob += y * o_sb;
  }
  const int row0 = q_lo + blockIdx.x * ROWS;
  if (row0 >= q_hi) return;
  // Keys past the block's last visible one are never loaded.
  int k_end = k_hi;
  if (causal) k_end = min(k_end, min(row0 + ROWS, q_hi) - 1 + offset + 1);
  // Key tiles start at k_lo (segments) or at 0 (the cache: padding is masked per key).
  const int k_first = bounds ? k_lo : 0;

  // This warp's 16 query rows as A fragments, zero past the rows or columns.
  const int r_a = row0 + warp * 16 + g, r_b = r_a + 8;
  uint32_t qa[DK][4];
#pragma unroll
  for (int kk = 0; kk < DK; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = (i & 1) ? r_b : r_a;
      const int c = kk * 16 + 2 * t + ((i & 2) ? 8 : 0);
      qa[kk][i] = (r < q_hi && c < d)
                      ? *reinterpret_cast<const uint32_t *>(qb + (long long)r * q_sr + c)
                      : 0u;
    }
  }

  float o[DN][4];
#pragma unroll
  for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  // Running max (in log2 units) and this lane's share of the sum, rows g and g + 8.
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  const float scale2 = scale * 1.4426950408889634f;
  const int lim_a = causal ? r_a + offset : 0x7fffffff, lim_b = causal ? r_b + offset : 0x7fffffff;

  // Lane l addresses row l % 8 of matrix l / 8 in load_matrices.
  const int mat = lane / 8, mrow = lane % 8;
  if (k_first < k_end) stage<T, DP>(ks, kb, k_sr, k_first, k_lo, k_end, d);
  for (int j0 = k_first; j0 < k_end; j0 += KEYS) {
    copies_wait();
    __syncthreads();  // K's tile is in; every warp is done with the previous V tile
    stage<T, DP>(vs, vb, v_sr, j0, k_lo, k_end, d);

    float s[KEYS / 8][4];
#pragma unroll
    for (int n = 0; n < KEYS / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
#pragma unroll
      for (int n = 0; n < KEYS / 8; n += 2) {
        // Keys 8n .. 8n + 15, columns 16kk .. 16kk + 15: B fragments of tiles n and n + 1.
        uint32_t b[4];
        load_matrices<false>(b, &ks[(n + (mat >> 1)) * 8 + mrow][kk * 16 + (mat & 1) * 8]);
        Mma<T>::run(s[n], qa[kk], b);
        Mma<T>::run(s[n + 1], qa[kk], b + 2);
      }
    }

    // Mask, then the online softmax: new maxima, the old sums and outputs rescaled.
    float mx_a = m_a, mx_b = m_b;
#pragma unroll
    for (int n = 0; n < KEYS / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j0 + n * 8 + 2 * t + (i & 1);
        const int lim = (i & 2) ? lim_b : lim_a;
        const bool visible = key >= k_lo && key < k_end && key <= lim;
        s[n][i] = visible ? s[n][i] * scale2 : -INFINITY;
      }
      mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
    }
    uint32_t p[KEYS / 16][4];
    online_softmax_step<T>(s, mx_a, mx_b, m_a, m_b, l_a, l_b, o, p);

    copies_wait();
    __syncthreads();  // V's tile is in; every warp is done with K's
    if (j0 + KEYS < k_end) stage<T, DP>(ks, kb, k_sr, j0 + KEYS, k_lo, k_end, d);

    // o += p · V: V's rows are keys, so its 8×8 matrices are loaded transposed.
#pragma unroll
    for (int c = 0; c < KEYS / 16; ++c) {
#pragma unroll
      for (int n = 0; n < DN; n += 2) {
        // Keys 16c .. 16c + 15, columns 8n .. 8n + 15: B fragments of tiles n and n + 1.
        uint32_t b[4];
        load_matrices<true>(b, &vs[c * 16 + (mat & 1) * 8 + mrow][(n + (mat >> 1)) * 8]);
        Mma<T>::run(o[n], p[c], b);
        Mma<T>::run(o[n + 1], p[c], b + 2);
      }
    }
  }

#pragma unroll
  for (int o2 = 1; o2 < 4; o2 <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
  }
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
  for (int n = 0; n < DN; ++n) {
    const int c = n * 8 + 2 * t;
    if (c >= d) continue;
    if (r_a < q_hi)
      *reinterpret_cast<uint32_t *>(ob + (long long)r_a * o_sr + c) =
          Mma<T>::pack(o[n][0] * inv_a, o[n][1] * inv_a);
    if (r_b < q_hi)
      *reinterpret_cast<uint32_t *>(ob + (long long)r_b * o_sr + c) =
          Mma<T>::pack(o[n][2] * inv_b, o[n][3] * inv_b);
  }
#endif
}

#define FLASH_ATTENTION(NAME, T, DP)                                                         \
  extern "C" __global__ void __launch_bounds__(THREADS)                                      \
      NAME(const T *q, const T *k, const T *v, T *out, const uint32_t *bounds,               \
           const uint32_t *pad, int q_len, int kv_len, int rep, int causal, int d,           \
           float scale, long long q_sb, long long q_sh, long long q_sr, long long k_sb,      \
           long long k_sh, long long k_sr, long long v_sb, long long v_sh, long long v_sr,   \
           long long o_sb, long long o_sh, long long o_sr) {                                 \
    flash_attention<T, DP>(q, k, v, out, bounds, pad, q_len, kv_len, rep, causal, d, scale,  \
                           q_sb, q_sh, q_sr, k_sb, k_sh, k_sr, v_sb, v_sh, v_sr, o_sb, o_sh, \
                           o_sr);                                                            \
  }
FLASH_ATTENTION(flash_attention_bf16_d64, __nv_bfloat16, 64)
FLASH_ATTENTION(flash_attention_bf16_d80, __nv_bfloat16, 80)
FLASH_ATTENTION(flash_attention_bf16_d128, __nv_bfloat16, 128)
FLASH_ATTENTION(flash_attention_f16_d64, __half, 64)
FLASH_ATTENTION(flash_attention_f16_d80, __half, 80)
FLASH_ATTENTION(flash_attention_f16_d128, __half, 128)
