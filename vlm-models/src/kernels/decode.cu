// Fused kernels of the decoder (and prefill_qkv, its prompt's q/k/v). At one new token per sequence candle issues one
// launch per small op (bias, q/k norms, two RoPEs, two cache copies, the score matmul,
// softmax, the value matmul, the head transpose, the activation and its product): on an
// H100 the host spends longer issuing them than the GPU spends running them. These three
// kernels replace ~15 launches per layer.
//
// Every kernel computes in f32 and rounds once on output. Pointers are raw device
// addresses of contiguous tensors; optional inputs are null.

#include "common.cuh"
#include "decode_shared.cuh"

// Writes the new token's key (bias, k-norm, RoPE) and value (bias) into the caches
// [b, nkv, cap, d] at position `pos`. Grid (nkv, b), max(32, d/2) threads.
// qkv [b, (nq + 2 nkv) d]; cos/sin [b, d/2].
template <typename T>
__device__ void kv_write(const T *qkv, const T *bias, const T *cos, const T *sin,
                         const T *k_norm, float eps, T *k_cache, T *v_cache, int nq, int nkv,
                         int d, int cap, int pos) {
  const int kh = blockIdx.x, b = blockIdx.y, half = d / 2, i = threadIdx.x;
  const T *row = qkv + (size_t)b * (nq + 2 * nkv) * d;
  const size_t dst = (((size_t)b * nkv + kh) * cap + pos) * d;
  T k1, k2, x1, x2;
  if (prepare_new_kv(row, bias, k_norm, eps, cos + (size_t)b * half, sin + (size_t)b * half, nq,
                     nkv, kh, d, k1, k2, x1, x2)) {
    k_cache[dst + i] = k1;
    k_cache[dst + i + half] = k2;
    v_cache[dst + i] = x1;
    v_cache[dst + i + half] = x2;
  }
}

// Most values a head of prefill_qkv holds: 8 a lane.
#define PREFILL_MAX_D 256
// Heads (warps) a block of prefill_qkv takes.
#define PREFILL_WARPS 4

// candle's rope on one rotate-half pair in T's own arithmetic (each product and sum rounded
// to T, as cuda_bf16.h's operators round): the expressions of its kernel, operands in its
// order, so that the prefill's keys and queries keep their bits.
template <typename T>
__device__ __forceinline__ T rope_first(T x1, T x2, T c, T s) { return x1 * c - x2 * s; }
template <typename T>
__device__ __forceinline__ T rope_second(T x1, T x2, T c, T s) { return x1 * s + x2 * c; }
// In f32 ptxas fuses one product of each pair into an FMA, and which one depends on the
// kernel around it (run 49: this kernel's choice differed from candle's): spelled out as
// candle's rope_f32 compiles on sm_90 (FMUL x2·s, FFMA x1·c − that; FMUL x2·c, FFMA
// x1·s + that), with intrinsics that ptxas does not fuse further.
template <>
__device__ __forceinline__ float rope_first(float x1, float x2, float c, float s) {
  return __fmaf_rn(x1, c, -__fmul_rn(x2, s));
}
template <>
__device__ __forceinline__ float rope_second(float x1, float x2, float c, float s) {
  return __fmaf_rn(x1, s, __fmul_rn(x2, c));
}

// A prompt's q, k and v from the fused projection's output qkv [b, l, (nq + 2 nkv) d],
// what the unfused prefill makes of them bit for bit: the bias (may be null) added in
// f32 and rounded to T (add_bias), the optional per-head RMSNorm (Qwen3's q_norm/k_norm)
// with candle's 32-thread reduction (lane t sums columns t, t + 32, ...), rotate-half RoPE
// as candle's rope kernel computes it (cos/sin [b, l, d/2] in T). q goes to
// q_out [b, nq, l, d], the layout the flash kernel reads; k and v into the caches
// [b, nkv, cap, d] at positions pos .. pos + l. Replaces three copies (transposes), two
// ropes and two cache writes a layer (and the bias launch, for a caller whose projection
// rounds before its bias).
// Grid (ceil((nq + nkv) / PREFILL_WARPS), l, b), 32 · PREFILL_WARPS threads: a warp per
// head of one token (a kv head's warp writes its key and value); d even, ≤ PREFILL_MAX_D.
template <typename T>
__device__ void prefill_qkv(const T *qkv, const T *bias, const T *cos, const T *sin,
                            const T *q_norm, const T *k_norm, float eps, T *q_out, T *k_cache,
                            T *v_cache, int nq, int nkv, int d, int l, int cap, int pos) {
  __shared__ T normed[PREFILL_WARPS][PREFILL_MAX_D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int head = blockIdx.x * PREFILL_WARPS + warp;
  if (head >= nq + nkv) return;  // a whole warp: nothing below syncs beyond it
  const int t = blockIdx.y, b = blockIdx.z, half = d / 2;
  const size_t token = (size_t)b * l + t;
  const T *src = qkv + token * (nq + 2 * nkv) * d;
  const T *cs = cos + token * half, *sn = sin + token * half;
  const bool is_q = head < nq;
  const int kh = head - nq;
  const int off = is_q ? head * d : (nq + kh) * d;
  const T *norm_w = is_q ? q_norm : k_norm;
  T *row = normed[warp];
  constexpr int J = PREFILL_MAX_D / 32;
  T x[J];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < d) {
      x[j] = bias ? from_f<T>(to_f(src[off + c]) + to_f(bias[off + c])) : src[off + c];
      const float xi = to_f(x[j]);
      ss += xi * xi;
    }
  }
  if (norm_w) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float scale = rsqrtf(ss / d + eps);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c = lane + 32 * j;
      if (c < d) x[j] = from_f<T>(scale * to_f(x[j]) * to_f(norm_w[c]));
    }
  }
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < d) row[c] = x[j];
  }
  __syncwarp();
  T *dst = is_q ? q_out + (((size_t)b * nq + head) * l + t) * d
                : k_cache + (((size_t)b * nkv + kh) * cap + pos + t) * d;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < half) {
      dst[c] = rope_first(row[c], row[c + half], cs[c], sn[c]);
    } else if (c < d) {
      dst[c] = rope_second(row[c - half], row[c], cs[c - half], sn[c - half]);
    }
  }
  if (is_q) return;
  const int vo = (nq + nkv + kh) * d;
  T *vdst = v_cache + (((size_t)b * nkv + kh) * cap + pos + t) * d;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < d) vdst[c] = bias ? from_f<T>(to_f(src[vo + c]) + to_f(bias[vo + c])) : src[vo + c];
  }
}

// combine_slices as a launch of its own: grid (nq, b), max(d, 32) threads.
template <typename T>
__device__ void decode_combine(const float *partial, T *out, int nq, int d, int splits,
                               q8_1_block *q8, int k_padded) {
  inputs_ready();
  combine_slices(partial, out, nq, d, splits, q8, k_padded, blockIdx.x, blockIdx.y);
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
// combine_slices: with `slice_counters` ([b, nq] zeros) the head's last block to finish
// merges them itself and sets its counter back to zero, else decode_combine does in a launch
// of its own. With `out_q8` (D ≥ 32) the output is also written as the output projection's
// Q8_1 input, which spares that projection a quantize launch.
//
// `new_pos` ≥ 0: the new token's key and value (position new_pos = kv_len − 1) are not in
// the caches yet. The block whose slice holds that position prepares them from qkv as
// kv_write does (k_norm, k_eps: the key's norm) and attends them from shared memory; the
// first query head of each kv group also writes them into the caches. This spares a launch
// a layer, and lets every cache read be requested before the kernel waits for its inputs
// (early_launch.rs): the rows before new_pos were written by earlier steps. The arithmetic
// is the same as kv_write followed by this kernel with new_pos −1, bit for bit.
template <typename T, int D>
__device__ void decode_attention(const T *qkv, const T *bias, const T *cos, const T *sin,
                                 const T *q_norm, float eps, T *k_cache, T *v_cache,
                                 const uint32_t *pad, T *out, float *partial, int nq, int nkv,
                                 int cap, int kv_len, int new_pos, const T *k_norm,
                                 float k_eps, q8_1_block *out_q8, int k_padded,
                                 unsigned int *slice_counters) {
  constexpr int G = D / 8;    // threads per key row
  constexpr int R = 256 / G;  // rows in flight
  __shared__ float qs[D];
  __shared__ float gm[R], gl[R];
  __shared__ float gacc[R][D];
  __shared__ float kn[D], vn[D];  // the new position's key and value, rounded to T

  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, half = D / 2;
  const int split = blockIdx.z, splits = gridDim.z;
  const int kh = h / (nq / nkv);
  const int g = tid / G, lane = tid % G;
  const size_t base = ((size_t)b * nkv + kh) * cap * D + lane * 8;
  const T *kb = k_cache + base;
  const T *vb = v_cache + base;
  const KeySlice slice = key_slice(pad, b, kv_len, split, splits);
  const int start = slice.start, end = slice.end;
  const bool holds_new = new_pos >= start && new_pos < end;  // uniform over the block

  // Each sweep takes two rows per group, so that four loads are in flight, and requests
  // the next sweep's rows before its own arithmetic; the first sweep's are requested
  // before the query is prepared. Memory latency, not arithmetic, set the pace: ~1.4 µs a
  // sweep under ncu (runs 40-41) when each sweep waited for its own loads.
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
  first_reads_and_inputs(new_pos, slice, fetch);

  const T *qkv_row = qkv + (size_t)b * (nq + 2 * nkv) * D;
  {
    float y1, y2;
    if (prepare_head(qkv_row + (size_t)h * D, bias ? bias + h * D : nullptr, q_norm, eps,
                     cos + (size_t)b * half, sin + (size_t)b * half, D, y1, y2)) {
      qs[tid] = to_f(from_f<T>(y1));
      qs[tid + half] = to_f(from_f<T>(y2));
    }
  }
  if (holds_new) {
    T k1, k2, x1, x2;
    if (prepare_new_kv(qkv_row, bias, k_norm, k_eps, cos + (size_t)b * half,
                       sin + (size_t)b * half, nq, nkv, kh, D, k1, k2, x1, x2)) {
      kn[tid] = to_f(k1);
      kn[tid + half] = to_f(k2);
      vn[tid] = to_f(x1);
      vn[tid + half] = to_f(x2);
      if (h % (nq / nkv) == 0) {
        const size_t dst = (((size_t)b * nkv + kh) * cap + new_pos) * D;
        k_cache[dst + tid] = k1;
        k_cache[dst + tid + half] = k2;
        v_cache[dst + tid] = x1;
        v_cache[dst + tid + half] = x2;
      }
    }
  }
  __syncthreads();

  float q8[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) q8[j] = qs[lane * 8 + j];

  float m = -INFINITY, l = 0.f, acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.f;

  // Every lane runs the same number of sweeps, as the shuffles need the whole warp.
  for (int t0 = start; t0 < end; t0 += 2 * R) {
    const raw8<T> cka = nka, cxa = nxa, ckb = nkb, cxb = nxb;
    if (t0 + 2 * R < end) fetch(t0 + 2 * R);
    const int ta = t0 + g, tb = t0 + g + R;
    const bool va = ta < end, vb_ok = tb < end;
    // Row t's key and value: the fetched ones, or for the new position the shared copies.
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
  if (splits == 1) {
    if (out_q8 && h == nq - 1) q8_zero_padding(out_q8, nq * D, k_padded, b);
    return;
  }
  if (!slice_counters) return;
  // The last of the head's blocks to get here merges the slices: each block's writes are
  // made visible device-wide before it takes its ticket (the threadfence reduction).
  __shared__ unsigned int ticket;
  __threadfence();
  __syncthreads();
  unsigned int *counter = slice_counters + (size_t)b * nq + h;
  if (tid == 0) ticket = atomicAdd(counter, 1u);
  __syncthreads();
  if (ticket != (unsigned int)splits - 1) return;
  if (tid == 0) *counter = 0;  // for the next layer's or step's launch, which follows this grid
  __threadfence();
  combine_slices(partial, out, nq, D, splits, out_q8, k_padded, h, b);
}

// silu(gate) * up for gate_up [rows, 2 inter] (gate first) → [rows, inter].
template <typename T>
__device__ void silu_mul(const T *gate_up, T *out, uint32_t rows, uint32_t inter) {
  inputs_ready();
  const size_t n = (size_t)rows * inter;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t r = i / inter, c = i % inter;
    const float g = to_f(gate_up[r * 2 * inter + c]);
    const float u = to_f(gate_up[r * 2 * inter + inter + c]);
    out[i] = from_f<T>(silu_times(g, u));
  }
}

// 1/sqrt(mean square + eps) of a row from each thread's sum of squares, reduced in the
// order of candle's rmsnorm kernel (a warp, then the warps' partial sums in one warp).
__device__ __forceinline__ float rms_scale(float ss, int n, float eps) {
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
  return rsqrtf(ss / n + eps);
}

// A thread's columns of add_rms_norm held in registers: n_padded ≤ ADD_NORM_COLS ·
// blockDim.x (every decoder here: hidden sizes up to 4,096 at 1,024 threads).
#define ADD_NORM_COLS 4

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
  inputs_ready();
  const size_t row = blockIdx.x;
  x += row * n;
  normed += row * n;
  if (delta) {
    delta += row * n;
    sum += row * n;
  }
  // Every load is issued before any store: a store to `sum` may alias x for the compiler,
  // so a loop that stored between loads waited a memory round trip per column (5.5 µs a
  // launch for a 2,048-wide row under ncu, run 41). Rows wider than the registers hold
  // (and the 32-thread blocks of rows under 1,024) take that loop.
  const int cols = q8 ? n_padded : n;
  float ss = 0.f;
  if (cols <= ADD_NORM_COLS * (int)blockDim.x) {
    float v[ADD_NORM_COLS], wv[ADD_NORM_COLS], dv[ADD_NORM_COLS];
#pragma unroll
    for (int p = 0; p < ADD_NORM_COLS; ++p) {
      const int c = threadIdx.x + p * blockDim.x;
      v[p] = wv[p] = dv[p] = 0.f;
      if (c < n) {
        v[p] = to_f(x[c]);
        wv[p] = to_f(w[c]);
        if (delta) dv[p] = to_f(delta[c]);
      }
    }
#pragma unroll
    for (int p = 0; p < ADD_NORM_COLS; ++p) {
      const int c = threadIdx.x + p * blockDim.x;
      if (c < n) {
        if (delta) {
          const T s = from_f<T>(v[p] + dv[p]);
          sum[c] = s;
          v[p] = to_f(s);
        }
        ss += v[p] * v[p];
      }
    }
    const float scale = rms_scale(ss, n, eps);
#pragma unroll
    for (int p = 0; p < ADD_NORM_COLS; ++p) {
      const int c = threadIdx.x + p * blockDim.x;
      if (c >= cols) break;  // uniform across a warp: cols and blockDim are multiples of 32
      float o = 0.f;
      if (c < n) {
        const T r = from_f<T>(scale * v[p] * wv[p]);
        normed[c] = r;
        o = to_f(r);
      }
      if (q8) q8_1_store(o, q8 + (row * n_padded + c) / 32);
    }
    return;
  }
  const T *src = delta ? sum : x;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = to_f(x[c]);
    if (delta) {
      const T s = from_f<T>(v + to_f(delta[c]));
      sum[c] = s;
      v = to_f(s);
    }
    ss += v * v;
  }
  const float scale = rms_scale(ss, n, eps);
  // Each thread reads back only the sums it wrote itself.
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

// add_rms_norm for a prompt's many rows of 1,024 to 4,096 values (the prefill's and the
// vision tower's residual norms), the same bits. add_rms_norm's 1,024-thread blocks hold
// 40 registers a thread, so one block (one row) fits an SM at a time: a latency chain of
// loads, reduction and stores per row. Here 256 threads take a row, each standing in for
// four of candle's 1,024 (virtual thread v = t + 256·q sums columns v, v + 1,024, ... in
// that order, its warp v / 32 = t / 32 + 8·q reduces them, the 32 warp sums are reduced by
// every warp), and the norm weight is read after the reduction: four rows an SM (62
// registers). Grid (rows), 256 threads; delta may be null (sum is not written then).
#define ROWS_NORM_COLS 16
template <typename T>
__device__ void add_rms_norm_rows(const T *__restrict__ x, const T *__restrict__ delta,
                                  const T *__restrict__ w, T *__restrict__ sum,
                                  T *__restrict__ normed, int n, float eps) {
  const size_t row = blockIdx.x;
  const int t = threadIdx.x;
  x += row * n;
  normed += row * n;
  if (delta) {
    delta += row * n;
    sum += row * n;
  }
  // Every load issued before the first store (as add_rms_norm does): the compiler kept a
  // store between loads in order, a round trip a column.
  T xv[ROWS_NORM_COLS], dv[ROWS_NORM_COLS];
#pragma unroll
  for (int p = 0; p < ROWS_NORM_COLS; ++p) {
    const int c = t + 256 * p;
    if (c < n) {
      xv[p] = x[c];
      if (delta) dv[p] = delta[c];
    }
  }
  float v[ROWS_NORM_COLS];
  float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int p = 0; p < ROWS_NORM_COLS; ++p) {
    const int c = t + 256 * p;
    v[p] = 0.f;
    if (c < n) {
      v[p] = to_f(xv[p]);
      if (delta) {
        const T s = from_f<T>(v[p] + to_f(dv[p]));
        sum[c] = s;
        v[p] = to_f(s);
      }
      ss[p % 4] += v[p] * v[p];
    }
  }
  __shared__ float part[32];
  const int warp = t / 32, lane = t % 32;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss[q] += __shfl_xor_sync(0xffffffffu, ss[q], o);
    if (lane == 0) part[warp + 8 * q] = ss[q];
  }
  __syncthreads();
  float total = part[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
  const float scale = rsqrtf(total / n + eps);
  T wv[ROWS_NORM_COLS];
#pragma unroll
  for (int p = 0; p < ROWS_NORM_COLS; ++p) {
    if (t + 256 * p < n) wv[p] = w[t + 256 * p];
  }
#pragma unroll
  for (int p = 0; p < ROWS_NORM_COLS; ++p) {
    const int c = t + 256 * p;
    if (c < n) normed[c] = from_f<T>(scale * v[p] * to_f(wv[p]));
  }
}

// silu_mul with the product also written as Q8_1 blocks for the down projection:
// `inter_padded` values per row, zeros past `inter`. Warps stay whole (every bound is a
// multiple of 32), as q8_1_store needs.
template <typename T>
__device__ void silu_mul_q8(const T *gate_up, T *out, q8_1_block *q8, uint32_t rows,
                            uint32_t inter, uint32_t inter_padded) {
  inputs_ready();
  const size_t n = (size_t)rows * inter_padded;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t r = i / inter_padded, c = i % inter_padded;
    float v = 0.f;
    if (c < inter) {
      const float g = to_f(gate_up[r * 2 * inter + c]);
      const float u = to_f(gate_up[r * 2 * inter + inter + c]);
      const T o = from_f<T>(silu_times(g, u));
      out[r * inter + c] = o;
      v = to_f(o);
    }
    q8_1_store(v, q8 + i / 32);
  }
}

// y = x Wᵀ (+ bias) for a few rows of x: the decode step's projections, where cuBLAS reads
// the weights at 1.7-2.8 TB/s of the card's ~3.3. x [m, k], W [n, k] (a checkpoint's
// [out, in]), y [m, n], m ≤ 8, k a multiple of 8. One warp per output column n: each lane
// reads 8 consecutive weights (16 or 32 bytes) per step, two steps at a time with the next
// two requested before their arithmetic, and keeps m f32 sums; 8 warps per block.
template <typename T, int M>
__device__ void gemv(const T *x, const T *w, const T *bias, T *y, int n, int k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = blockIdx.x * 8 + warp;
  const bool live = col < n;
  const T *wr = w + (size_t)(live ? col : 0) * k;
  // The first step's weights are requested before waiting for x (early_launch.rs).
  raw8<T> na{}, nb{};
  auto fetch = [&](int k0) {
    na = load_raw8(wr + k0);
    if (k0 + 256 < k) nb = load_raw8(wr + k0 + 256);
  };
  if (live && lane * 8 < k) fetch(lane * 8);
  inputs_ready();
  if (!live) return;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  for (int k0 = lane * 8; k0 < k; k0 += 2 * 256) {
    const int k1 = k0 + 256;
    const bool second = k1 < k;
    float wa[8], wb[8];
    unpack8(na, wa);
    if (second) unpack8(nb, wb);
    if (k0 + 2 * 256 < k) fetch(k0 + 2 * 256);
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

#define PREFILL_QKV(NAME, T)                                                               \
  extern "C" __global__ void __launch_bounds__(32 * PREFILL_WARPS)                         \
      NAME(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm,       \
           const T *k_norm, float eps, T *q_out, T *k_cache, T *v_cache, int nq, int nkv,  \
           int d, int l, int cap, int pos) {                                               \
    prefill_qkv<T>(qkv, bias, cos, sin, q_norm, k_norm, eps, q_out, k_cache, v_cache, nq,  \
                   nkv, d, l, cap, pos);                                                   \
  }
PREFILL_QKV(prefill_qkv_f32, float)
PREFILL_QKV(prefill_qkv_bf16, __nv_bfloat16)
PREFILL_QKV(prefill_qkv_f16, __half)

#define KV_WRITE(NAME, T)                                                                  \
  extern "C" __global__ void NAME(const T *qkv, const T *bias, const T *cos, const T *sin, \
                                  const T *k_norm, float eps, T *k_cache, T *v_cache,      \
                                  int nq, int nkv, int d, int cap, int pos) {              \
    inputs_ready();                                                                        \
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
    inputs_ready();                                                                        \
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
           float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out, float *partial, \
           int nq, int nkv, int cap, int kv_len, int new_pos, const T *k_norm, float k_eps, \
           void *q8, int k_padded, unsigned int *counters) {                               \
    decode_attention<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad, out,   \
                           partial, nq, nkv, cap, kv_len, new_pos, k_norm, k_eps,          \
                           (q8_1_block *)q8, k_padded, counters);                          \
  }                                                                                        \
  /* The length from device memory, as KV_WRITE_DEV; with write_new the new key and value \
     come from qkv unless the length is past the caches (kv_write_dev skips that write). */ \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      NAME##_dev(const T *qkv, const T *bias, const T *cos, const T *sin, const T *q_norm, \
                 float eps, T *k_cache, T *v_cache, const uint32_t *pad, T *out,           \
                 float *partial, int nq, int nkv, int cap, const uint32_t *len,            \
                 int write_new, const T *k_norm, float k_eps, void *q8, int k_padded,      \
                 unsigned int *counters) {                                                 \
    const int n = (int)len[0];                                                             \
    const int new_pos = write_new && n >= 1 && n <= cap ? n - 1 : -1;                      \
    decode_attention<T, D>(qkv, bias, cos, sin, q_norm, eps, k_cache, v_cache, pad, out,   \
                           partial, nq, nkv, cap, min(n, cap), new_pos, k_norm, k_eps,     \
                           (q8_1_block *)q8, k_padded, counters);                          \
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
  extern "C" __global__ void NAME(const float *partial, T *out, int nq, int d, int splits,   \
                                  void *q8, int k_padded) {                                \
    decode_combine<T>(partial, out, nq, d, splits, (q8_1_block *)q8, k_padded);            \
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

#define ADD_RMS_NORM_ROWS(NAME, T)                                                         \
  extern "C" __global__ void __launch_bounds__(256, 4)                                     \
      NAME(const T *x, const T *delta, const T *w, T *sum, T *normed, int n, float eps) {  \
    add_rms_norm_rows<T>(x, delta, w, sum, normed, n, eps);                                \
  }
ADD_RMS_NORM_ROWS(add_rms_norm_rows_f32, float)
ADD_RMS_NORM_ROWS(add_rms_norm_rows_bf16, __nv_bfloat16)
ADD_RMS_NORM_ROWS(add_rms_norm_rows_f16, __half)

#define SILU_MUL_Q8(NAME, T)                                                               \
  extern "C" __global__ void NAME(const T *gate_up, T *out, void *q8, uint32_t rows,       \
                                  uint32_t inter, uint32_t inter_padded) {                 \
    silu_mul_q8<T>(gate_up, out, (q8_1_block *)q8, rows, inter, inter_padded);             \
  }
SILU_MUL_Q8(silu_mul_q8_f32, float)
SILU_MUL_Q8(silu_mul_q8_bf16, __nv_bfloat16)
SILU_MUL_Q8(silu_mul_q8_f16, __half)
