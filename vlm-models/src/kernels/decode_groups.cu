// Decode attention with several query heads of one kv head's group in a block
// (RuntimeOptions::decode_group_heads, opt-in until measured on a GPU).
//
// decode.cu's decode_attention gives each query head its own blocks, so every cached key
// and value row is read once per query head of its group: 7 times for Qwen2.5-VL-7B. At
// one sequence that re-read comes from L2 and costs little; at a batch of 8 the caches
// outgrow what L2 keeps between the heads' blocks (run 46, H100: 32.6 µs a layer at 8
// sequences against 11.7 at one). Here a block takes H heads h0.. of one group: each row it
// loads serves all of them.
//
// Per head the arithmetic is decode_attention's, in the same order (the query prepared by
// prepare_head, each score summed over the same lanes, the same online softmax, the same
// merge of the row groups, the same slice layout and combine), so a launch with the same
// key slices gives the same bits. The grid has fewer blocks per sequence, so the host
// gives each head more slices (decode_splits), and those slices do change the rounding.

#include "decode.cuh"

// Grid (nkv · ⌈group / H⌉, b, splits), 256 threads; group = nq / nkv. Block x takes kv head
// x / ⌈group / H⌉ and its query heads h0 .. h0 + n − 1 (n ≤ H: the last block of a group
// whose size H does not divide takes the rest). Arguments as decode_attention's; the slice
// counters are [b, nq] as there, of which the entry of each block's first head is used.
template <typename T, int D, int H>
__device__ void decode_attention_groups(const T *qkv, const T *bias, const T *cos,
                                        const T *sin, const T *q_norm, float eps, T *k_cache,
                                        T *v_cache, const uint32_t *pad, T *out, float *partial,
                                        int nq, int nkv, int cap, int kv_len, int new_pos,
                                        const T *k_norm, float k_eps, q8_1_block *out_q8,
                                        int k_padded, unsigned int *slice_counters) {
  constexpr int G = D / 8;    // threads per key row
  constexpr int R = 256 / G;  // rows in flight
  __shared__ float qs[H][D];
  __shared__ float gm[R], gl[R];
  __shared__ float gacc[R][D];
  __shared__ float kn[D], vn[D];  // the new position's key and value, rounded to T

  const int group = nq / nkv;
  const int blocks_per_group = (group + H - 1) / H;
  const int kh = blockIdx.x / blocks_per_group;
  const int h0 = kh * group + (blockIdx.x % blocks_per_group) * H;
  const int n = min(H, (kh + 1) * group - h0);  // uniform over the block
  const int b = blockIdx.y, tid = threadIdx.x, half = D / 2;
  const int split = blockIdx.z, splits = gridDim.z;
  const int g = tid / G, lane = tid % G;
  const size_t base = ((size_t)b * nkv + kh) * cap * D + lane * 8;
  const T *kb = k_cache + base;
  const T *vb = v_cache + base;
  const int first = pad ? (int)pad[b] : 0;
  const int chunk = (kv_len - first + splits - 1) / splits;
  const int start = first + split * chunk;
  const int end = min(kv_len, start + chunk);
  const bool holds_new = new_pos >= start && new_pos < end;

  // Rows are requested ahead as in decode_attention (two a sweep, the next sweep's before
  // this one's arithmetic).
  raw8<T> nka{}, nxa{}, nkb{}, nxb{};
  auto fetch = [&](int t0) {
    const int ta = t0 + g, tb = t0 + g + R;
    if (ta < end && ta != new_pos) {
      nka = load_raw8(kb + (size_t)ta * D);
      nxa = load_raw8(vb + (size_t)ta * D);
    }
    if (tb < end && tb != new_pos) {
      nkb = load_raw8(kb + (size_t)tb * D);
      nxb = load_raw8(vb + (size_t)tb * D);
    }
  };
  if (new_pos >= 0) {
    if (start < end) fetch(start);
    inputs_ready();
  } else {
    inputs_ready();
    if (start < end) fetch(start);
  }

  const T *qkv_row = qkv + (size_t)b * (nq + 2 * nkv) * D;
  // One head after another: with a query norm each takes a block-wide sum.
#pragma unroll
  for (int i = 0; i < H; ++i) {
    if (i >= n) break;
    const int h = h0 + i;
    float y1, y2;
    if (prepare_head(qkv_row + (size_t)h * D, bias ? bias + h * D : nullptr, q_norm, eps,
                     cos + (size_t)b * half, sin + (size_t)b * half, D, y1, y2)) {
      qs[i][tid] = to_f(from_f<T>(y1));
      qs[i][tid + half] = to_f(from_f<T>(y2));
    }
  }
  if (holds_new) {
    const int ko = (nq + kh) * D, vo = (nq + nkv + kh) * D;
    float y1, y2;
    if (prepare_head(qkv_row + ko, bias ? bias + ko : nullptr, k_norm, k_eps,
                     cos + (size_t)b * half, sin + (size_t)b * half, D, y1, y2)) {
      float v1 = to_f(qkv_row[vo + tid]), v2 = to_f(qkv_row[vo + tid + half]);
      if (bias) {
        v1 += to_f(bias[vo + tid]);
        v2 += to_f(bias[vo + tid + half]);
      }
      const T k1 = from_f<T>(y1), k2 = from_f<T>(y2), x1 = from_f<T>(v1), x2 = from_f<T>(v2);
      kn[tid] = to_f(k1);
      kn[tid + half] = to_f(k2);
      vn[tid] = to_f(x1);
      vn[tid + half] = to_f(x2);
      if (h0 == kh * group) {  // the group's first block writes the caches
        const size_t dst = (((size_t)b * nkv + kh) * cap + new_pos) * D;
        k_cache[dst + tid] = k1;
        k_cache[dst + tid + half] = k2;
        v_cache[dst + tid] = x1;
        v_cache[dst + tid + half] = x2;
      }
    }
  }
  __syncthreads();

  // Every array below is indexed by unrolled loops only, so that it stays in registers.
  float q[H][8];
#pragma unroll
  for (int i = 0; i < H; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) q[i][j] = i < n ? qs[i][lane * 8 + j] : 0.f;
  }
  float m[H], l[H], acc[H][8];
#pragma unroll
  for (int i = 0; i < H; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }

  for (int t0 = start; t0 < end; t0 += 2 * R) {
    const raw8<T> cka = nka, cxa = nxa, ckb = nkb, cxb = nxb;
    if (t0 + 2 * R < end) fetch(t0 + 2 * R);
    const int ta = t0 + g, tb = t0 + g + R;
    const bool va = ta < end, vb_ok = tb < end;
    auto row = [&](const raw8<T> &ck, const raw8<T> &cx, int t, float *k, float *x) {
      if (t == new_pos) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          k[j] = kn[lane * 8 + j];
          x[j] = vn[lane * 8 + j];
        }
      } else {
        unpack8(ck, k);
        unpack8(cx, x);
      }
    };
    float ka[8], kb8[8], xa[8], xb[8];
    if (va) row(cka, cxa, ta, ka, xa);
    if (vb_ok) row(ckb, cxb, tb, kb8, xb);
    float sa[H], sb[H];
#pragma unroll
    for (int i = 0; i < H; ++i) {
      sa[i] = 0.f;
      sb[i] = 0.f;
      if (va) {
#pragma unroll
        for (int j = 0; j < 8; ++j) sa[i] += q[i][j] * ka[j];
      }
      if (vb_ok) {
#pragma unroll
        for (int j = 0; j < 8; ++j) sb[i] += q[i][j] * kb8[j];
      }
    }
#pragma unroll
    for (int i = 0; i < H; ++i) {
      if (i >= n) break;
#pragma unroll
      for (int o = G / 2; o > 0; o >>= 1) {
        sa[i] += __shfl_xor_sync(0xffffffffu, sa[i], o);
        sb[i] += __shfl_xor_sync(0xffffffffu, sb[i], o);
      }
    }
    if (va) {
#pragma unroll
      for (int i = 0; i < H; ++i) {
        if (i >= n) break;
        const float m_new = fmaxf(m[i], vb_ok ? fmaxf(sa[i], sb[i]) : sa[i]);
        const float corr = expf(m[i] - m_new);
        const float pa = expf(sa[i] - m_new);
        const float pb = vb_ok ? expf(sb[i] - m_new) : 0.f;
        l[i] = l[i] * corr + pa + pb;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          acc[i][j] = acc[i][j] * corr + pa * xa[j] + (vb_ok ? pb * xb[j] : 0.f);
        }
        m[i] = m_new;
      }
    }
  }

  // The row groups merged head by head, through the same shared arrays.
#pragma unroll
  for (int i = 0; i < H; ++i) {
    if (i >= n) break;
    const int h = h0 + i;
    if (lane == 0) {
      gm[g] = m[i];
      gl[g] = l[i];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) gacc[g][lane * 8 + j] = acc[i][j];
    __syncthreads();
    if (tid < D) {
      float mx = -INFINITY;
      for (int r = 0; r < R; ++r) mx = fmaxf(mx, gm[r]);
      float lsum = 0.f, a = 0.f;
      for (int r = 0; r < R; ++r) {
        if (gm[r] == -INFINITY) continue;
        const float w = expf(gm[r] - mx);
        lsum += gl[r] * w;
        a += gacc[r][tid] * w;
      }
      if (splits == 1) {
        store_attention_out(out, out_q8, nq * D, k_padded, b, h * D + tid, a / lsum);
      } else {
        float *p = partial + (((size_t)b * nq + h) * splits + split) * (D + 2);
        p[tid] = a;
        if (tid == 0) {
          p[D] = mx;
          p[D + 1] = lsum;
        }
      }
    }
    __syncthreads();  // gm, gl and gacc take the next head
  }
  if (splits == 1) {
    if (out_q8 && h0 + n == nq) q8_zero_padding(out_q8, nq * D, k_padded, b);
    return;
  }
  if (!slice_counters) return;
  // As in decode_attention: the last of the block column's blocks merges the slices, here
  // of each of its heads.
  __shared__ unsigned int ticket;
  __threadfence();
  __syncthreads();
  unsigned int *counter = slice_counters + (size_t)b * nq + h0;
  if (tid == 0) ticket = atomicAdd(counter, 1u);
  __syncthreads();
  if (ticket != (unsigned int)splits - 1) return;
  if (tid == 0) *counter = 0;
  __threadfence();
  for (int i = 0; i < n; ++i) {
    combine_slices(partial, out, nq, D, splits, out_q8, k_padded, h0 + i, b);
    __syncthreads();  // combine_slices' shared weights take the next head
  }
}

// Entry points as decode.cu's DECODE_ATTENTION: NAME with the length from the host, NAME_dev
// from device memory (a captured step).
#define DECODE_GROUPS(NAME, T, D, H)                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm,       \
           float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out, float *partial, \
           int nq, int nkv, int cap, int kv_len, int new_pos, const T *k_norm, float k_eps, \
           void *q8, int k_padded, unsigned int *counters) {                               \
    decode_attention_groups<T, D, H>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache,   \
                                     pad, out, partial, nq, nkv, cap, kv_len, new_pos,     \
                                     k_norm, k_eps, (q8_1_block *)q8, k_padded, counters); \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME##_dev(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm, \
                 float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out,           \
                 float *partial, int nq, int nkv, int cap, const uint32_t *len,            \
                 int write_new, const T *k_norm, float k_eps, void *q8, int k_padded,      \
                 unsigned int *counters) {                                                 \
    const int n = (int)len[0];                                                             \
    const int new_pos = write_new && n >= 1 && n <= cap ? n - 1 : -1;                      \
    decode_attention_groups<T, D, H>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache,   \
                                     pad, out, partial, nq, nkv, cap, min(n, cap), new_pos, \
                                     k_norm, k_eps, (q8_1_block *)q8, k_padded, counters); \
  }

// Half precision at the head sizes of the Qwen-VL decoders (64 and 128); other dtypes and
// sizes keep one head a block (each variant adds JIT time on a fresh machine).
#define DECODE_GROUPS_H(T, S, D)                       \
  DECODE_GROUPS(decode_groups_##S##_d##D##_h2, T, D, 2) \
  DECODE_GROUPS(decode_groups_##S##_d##D##_h4, T, D, 4) \
  DECODE_GROUPS(decode_groups_##S##_d##D##_h8, T, D, 8)
DECODE_GROUPS_H(__nv_bfloat16, bf16, 64)
DECODE_GROUPS_H(__nv_bfloat16, bf16, 128)
DECODE_GROUPS_H(__half, f16, 64)
DECODE_GROUPS_H(__half, f16, 128)
