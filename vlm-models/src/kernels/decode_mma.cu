// Decode attention on the tensor cores, one block per kv head of a sequence and slice of
// its keys: the query heads of the kv group (up to 16: GQA) are the rows of one m16n8k16
// product, so each cached key and value row is read once per group. decode.cu's kernel
// runs a block per query head and reads each row once per head of the group (7 times for
// Qwen2.5-VL-7B) from L2; its time at a batch of 8 grew with the rows each block swept
// (run 46: 32.6 µs a layer against 11.7 for one sequence), and several heads a block in
// registers was slower still (run 47: fewer, heavier blocks, fewer loads in flight).
// Here the loads go to shared memory with cp.async, a whole tile of 64 keys and values at
// a time, so the bytes in flight do not cost registers, and the slices are short (one or a
// few tiles a block) so that many blocks share each multiprocessor.
//
// Arithmetic: scores and p · V with mma.sync (bf16/f16 in, f32 accumulated), the online
// softmax in f32, the probabilities rounded to the input type for p · V, as the flash
// attention of the prefill does; so the output differs from decode.cu's in the last bits.
// The new key and value are prepared as there (prepare_head: the caches get the same bits),
// the queries a warp a head (prepare_queries); the slices are written in its layout
// (partial [b, nq, splits, d + 2]) and merged by its decode_combine.
//
// Run 48 (H100, Qwen2.5-VL-7B bf16): batch-32 decode −18%, batch 8 −2.7%, one sequence
// +1.2% and groups of 2 (Qwen3-VL-2B) +2.5% at batch 8, hence kernels/cuda.rs's choice:
// batches of 2 or more, groups of 4 to 16.
//
// Built only for compute capability 8.0 and above (build.rs).

#include "common.cuh"
#include "decode_shared.cuh"
#include "mma.cuh"

namespace {

constexpr int TILE = 64;   // keys per shared-memory tile
constexpr int WARPS = 4;   // warp w takes keys 16w .. 16w + 15 of each tile
constexpr int THREADS = 32 * WARPS;
constexpr int GROUP = 16;  // query heads a block takes at most: the product's rows

// Rows [row0, row0 + TILE) of one head's cache [cap, D] into tile [TILE][D + 8] as
// asynchronous copies, zeros outside [lo, hi) (a zero row adds nothing to p · V where
// whatever was left in shared memory might be NaN). Row `skip` (the new position where
// this block holds it, else −1) is not touched: its key and value come from shared memory
// (patch_row).
template <typename T, int D>
__device__ __forceinline__ void stage_rows(T (*dst)[D + 8], const T *src, int row0, int lo,
                                           int hi, int skip) {
  constexpr int CHUNKS = D / 8;
  for (int e = threadIdx.x; e < TILE * CHUNKS; e += THREADS) {
    const int r = e / CHUNKS, c = (e % CHUNKS) * 8;
    const int row = row0 + r;
    if (row == skip) continue;
    const bool full = row >= lo && row < hi;
    // A zero-filling copy still names an address: the head's start is always valid.
    copy16(&dst[r][c], full ? src + (size_t)row * D + c : src, full);
  }
}

// Row r of a tile from a row held in shared memory (16-byte aligned); read after the
// __syncthreads that follows the tile's copies.
template <typename T, int D>
__device__ __forceinline__ void patch_row(T (*dst)[D + 8], int r, const T *src) {
  for (int c = threadIdx.x * 8; c < D; c += THREADS * 8)
    *reinterpret_cast<uint4 *>(&dst[r][c]) = *reinterpret_cast<const uint4 *>(src + c);
}

// The group's query heads into qs (rounded to T; rows rep .. GROUP − 1 zeros), prepared as
// prepare_head prepares a head (bias, RMSNorm, rotate-half RoPE) but a warp a head, its
// norm reduced within the warp: prepare_head a head at a time over the block waited for
// each head's loads in turn. Lane l holds the pairs (i, i + D/2) for i = l, l + 32, ….
template <typename T, int D>
__device__ __forceinline__ void prepare_queries(T (*qs)[D + 8], const T *row, const T *bias,
                                                const T *norm_w, float eps, const T *cs,
                                                const T *sn, int h0, int rep) {
  constexpr int HALF = D / 2, PAIRS = HALF / 32;
  static_assert(HALF % 32 == 0, "whole warps of pairs");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = warp; r < GROUP; r += WARPS) {
    if (r >= rep) {
      for (int c = lane; c < D; c += 32) qs[r][c] = from_f<T>(0.f);
      continue;
    }
    const size_t at = (size_t)(h0 + r) * D;
    float x1[PAIRS], x2[PAIRS];
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      const int i = lane + 32 * p;
      x1[p] = to_f(row[at + i]);
      x2[p] = to_f(row[at + i + HALF]);
      if (bias) {
        x1[p] += to_f(bias[at + i]);
        x2[p] += to_f(bias[at + i + HALF]);
      }
    }
    if (norm_w) {
      float ss = 0.f;
#pragma unroll
      for (int p = 0; p < PAIRS; ++p) ss += x1[p] * x1[p] + x2[p] * x2[p];
      const float scale = rsqrtf(warp_sum(ss) / (float)D + eps);
#pragma unroll
      for (int p = 0; p < PAIRS; ++p) {
        const int i = lane + 32 * p;
        x1[p] *= scale * to_f(norm_w[i]);
        x2[p] *= scale * to_f(norm_w[i + HALF]);
      }
    }
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      const int i = lane + 32 * p;
      const float c = to_f(cs[i]), s = to_f(sn[i]);
      qs[r][i] = from_f<T>(x1[p] * c - x2[p] * s);
      qs[r][i + HALF] = from_f<T>(x2[p] * c + x1[p] * s);
    }
  }
}

}  // namespace

// Grid (nkv, b, splits), THREADS threads; the arguments and their meaning are decode.cu's
// decode_attention's (nq / nkv ≤ GROUP, D 64 or 128). Block (kh, b, z) takes query heads
// kh·rep .. kh·rep + rep − 1 against the z-th slice of the keys. Several slices are merged
// by decode_combine, a block per head (the kernels' `counters` are not read): the last block
// of a group merging all its heads would wait on L2 once per head in turn.
template <typename T, int D>
__device__ void decode_attention_mma(const T *qkv, const T *bias, const T *cos, const T *sin,
                                     const T *q_norm, float eps, T *k_cache, T *v_cache,
                                     const uint32_t *pad, T *out, float *partial, int nq,
                                     int nkv, int cap, int kv_len, int new_pos,
                                     const T *k_norm, float k_eps, q8_1_block *out_q8,
                                     int k_padded) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int DP = D + 8;   // padded rows: ldmatrix's eight row addresses hit all banks
  constexpr int DK = D / 16;  // k-steps of the score product
  constexpr int DN = D / 8;   // 8-wide column tiles of the output
  static_assert(D % 64 == 0 && D <= 2 * THREADS, "a key is prepared a pair a thread");
  // The key and value tiles, and once the keys are done the warps' partial outputs.
  constexpr int TILE_BYTES = 2 * TILE * DP * (int)sizeof(T);
  constexpr int MERGE_BYTES = WARPS * GROUP * D * (int)sizeof(float);
  __shared__ __align__(16) unsigned char buf[TILE_BYTES > MERGE_BYTES ? TILE_BYTES : MERGE_BYTES];
  __shared__ __align__(16) T qs[GROUP][DP];
  __shared__ __align__(16) T kn[D];
  __shared__ __align__(16) T vn[D];
  __shared__ float wm[WARPS][GROUP], wl[WARPS][GROUP];
  T(*ks)[DP] = reinterpret_cast<T(*)[DP]>(buf);
  T(*vs)[DP] = reinterpret_cast<T(*)[DP]>(buf + TILE * DP * sizeof(T));
  float(*wo)[GROUP][D] = reinterpret_cast<float(*)[GROUP][D]>(buf);

  const int kh = blockIdx.x, b = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int rep = nq / nkv, h0 = kh * rep, half = D / 2;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const size_t head = ((size_t)b * nkv + kh) * cap * D;
  const T *kb = k_cache + head;
  const T *vb = v_cache + head;
  const KeySlice slice = key_slice(pad, b, kv_len, split, splits);
  const int start = slice.start, end = slice.end;
  const bool holds_new = new_pos >= start && new_pos < end;  // uniform over the block

  // Only the block holding the new position leaves its row to patch_row: in another
  // block's tile that row lies past the slice and must be zeroed like the rest.
  const int skip = holds_new ? new_pos : -1;
  auto stage_tile = [&](int j0) {
    stage_rows<T, D>(ks, kb, j0, start, end, skip);
    stage_rows<T, D>(vs, vb, j0, start, end, skip);
    asm volatile("cp.async.commit_group;\n" ::);
  };
  // The first tile skips the new position's row: it is patched in once prepared.
  first_reads_and_inputs(new_pos, slice, stage_tile);

  const T *row = qkv + (size_t)b * (nq + 2 * nkv) * D;
  const T *cs = cos + (size_t)b * half, *sn = sin + (size_t)b * half;
  prepare_queries<T, D>(qs, row, bias, q_norm, eps, cs, sn, h0, rep);
  // The new key and value as kv_write prepares them (the same bits in the caches).
  if (holds_new) {
    T k1, k2, x1, x2;
    if (prepare_new_kv(row, bias, k_norm, k_eps, cs, sn, nq, nkv, kh, D, k1, k2, x1, x2)) {
      kn[tid] = k1;
      kn[tid + half] = k2;
      vn[tid] = x1;
      vn[tid + half] = x2;
      // This block is the only one of its kv head to hold the position: it writes it.
      const size_t dst = head + (size_t)new_pos * D;
      k_cache[dst + tid] = k1;
      k_cache[dst + tid + half] = k2;
      v_cache[dst + tid] = x1;
      v_cache[dst + tid + half] = x2;
    }
  }
  __syncthreads();
  if (holds_new && new_pos < start + TILE) {
    patch_row<T, D>(ks, new_pos - start, kn);
    patch_row<T, D>(vs, new_pos - start, vn);
  }

  // The group's queries as A fragments (rows past rep are zeros).
  uint32_t qa[DK][4];
#pragma unroll
  for (int kk = 0; kk < DK; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = g + ((i & 1) ? 8 : 0);
      const int c = kk * 16 + 2 * t + ((i & 2) ? 8 : 0);
      qa[kk][i] = *reinterpret_cast<const uint32_t *>(&qs[r][c]);
    }
  }

  float o[DN][4];
#pragma unroll
  for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  // This warp's running max (log2 units) and this lane's share of the sum, rows g, g + 8.
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  constexpr float LOG2E = 1.4426950408889634f;
  const int mat = lane / 8, mrow = lane % 8, kw = warp * 16;

  for (int j0 = start; j0 < end; j0 += TILE) {
    copies_wait();
    __syncthreads();  // the tile (and a patched row) is in for every warp

    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
      // Keys kw .. kw + 15 of the tile, columns 16kk .. 16kk + 15: B fragments of both
      // 8-key tiles.
      uint32_t bf[4];
      load_matrices<false>(bf, &ks[kw + (mat >> 1) * 8 + mrow][kk * 16 + (mat & 1) * 8]);
      Mma<T>::run(s[0], qa[kk], bf);
      Mma<T>::run(s[1], qa[kk], bf + 2);
    }

    float mx_a = m_a, mx_b = m_b;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j0 + kw + n * 8 + 2 * t + (i & 1);
        s[n][i] = key < end ? s[n][i] * LOG2E : -INFINITY;
      }
      mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
    }
    uint32_t p[1][4];  // the warp's 16 keys: one A operand
    online_softmax_step<T>(s, mx_a, mx_b, m_a, m_b, l_a, l_b, o, p);
    // o += p · V: V's rows are keys, so its 8×8 matrices are loaded transposed.
#pragma unroll
    for (int n = 0; n < DN; n += 2) {
      uint32_t bf[4];
      load_matrices<true>(bf, &vs[kw + (mat & 1) * 8 + mrow][(n + (mat >> 1)) * 8]);
      Mma<T>::run(o[n], p[0], bf);
      Mma<T>::run(o[n + 1], p[0], bf + 2);
    }

    __syncthreads();  // every warp is done with the tile
    const int next = j0 + TILE;
    if (next < end) {
      stage_tile(next);
      if (holds_new && new_pos >= next && new_pos < next + TILE) {
        patch_row<T, D>(ks, new_pos - next, kn);
        patch_row<T, D>(vs, new_pos - next, vn);
      }
    }
  }

  // The warps' maxima, sums and outputs to shared memory (over the tiles: every copy has
  // landed and every warp has passed the loop's last barrier), then merged per column.
#pragma unroll
  for (int o2 = 1; o2 < 4; o2 <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
  }
  if (t == 0) {
    wm[warp][g] = m_a;
    wm[warp][g + 8] = m_b;
    wl[warp][g] = l_a;
    wl[warp][g + 8] = l_b;
  }
#pragma unroll
  for (int n = 0; n < DN; ++n) {
    const int c = n * 8 + 2 * t;
    wo[warp][g][c] = o[n][0];
    wo[warp][g][c + 1] = o[n][1];
    wo[warp][g + 8][c] = o[n][2];
    wo[warp][g + 8][c + 1] = o[n][3];
  }
  __syncthreads();
  if (tid < D) {  // whole warps: D is a multiple of 32
    for (int r = 0; r < rep; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, wm[w][r]);
      float lsum = 0.f, a = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) {
        if (wm[w][r] == -INFINITY) continue;  // a warp that saw no key
        const float wt = exp2f(wm[w][r] - mx);
        lsum += wl[w][r] * wt;
        a += wo[w][r][tid] * wt;
      }
      const int h = h0 + r;
      if (splits == 1) {
        store_attention_out(out, out_q8, nq * D, k_padded, b, h * D + tid, a / lsum);
      } else {
        float *p = partial + (((size_t)b * nq + h) * splits + split) * (D + 2);
        p[tid] = a;
        if (tid == 0) {
          // combine_slices weighs slices by exp(max − max'): natural-log units.
          p[D] = mx * 0.6931471805599453f;
          p[D + 1] = lsum;
        }
      }
    }
  }
  if (splits == 1 && out_q8 && kh == nkv - 1) q8_zero_padding(out_q8, nq * D, k_padded, b);
#endif
}

#define DECODE_ATTENTION_MMA(NAME, T, D)                                                   \
  extern "C" __global__ void __launch_bounds__(THREADS)                                    \
      NAME(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm,       \
           float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out, float *partial, \
           int nq, int nkv, int cap, int kv_len, int new_pos, const T *k_norm, float k_eps, \
           void *q8, int k_padded, unsigned int *counters) {                               \
    decode_attention_mma<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad,    \
                               out, partial, nq, nkv, cap, kv_len, new_pos, k_norm, k_eps, \
                               (q8_1_block *)q8, k_padded);                                \
  }                                                                                        \
  /* The length from device memory, as decode.cu's _dev kernels. `counters`: decode.cu's \
     signature, not read. */                                                               \
  extern "C" __global__ void __launch_bounds__(THREADS)                                    \
      NAME##_dev(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm, \
                 float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out,           \
                 float *partial, int nq, int nkv, int cap, const uint32_t *len,            \
                 int write_new, const T *k_norm, float k_eps, void *q8, int k_padded,      \
                 unsigned int *counters) {                                                 \
    const int n = (int)len[0];                                                             \
    const int new_pos = write_new && n >= 1 && n <= cap ? n - 1 : -1;                      \
    decode_attention_mma<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad,    \
                               out, partial, nq, nkv, cap, min(n, cap), new_pos, k_norm,   \
                               k_eps, (q8_1_block *)q8, k_padded);                         \
  }
DECODE_ATTENTION_MMA(decode_attention_mma_bf16_d64, __nv_bfloat16, 64)
DECODE_ATTENTION_MMA(decode_attention_mma_bf16_d128, __nv_bfloat16, 128)
DECODE_ATTENTION_MMA(decode_attention_mma_f16_d64, __half, 64)
DECODE_ATTENTION_MMA(decode_attention_mma_f16_d128, __half, 128)
