// The tensor cores' m16n8k16 product (mma.sync, compute capability 8.0 and above) for
// bf16 and f16 operands with f32 accumulators, shared by the flash attention
// (attention.cu), the few-row products (mma_gemv.cu) and the grouped decode attention
// (decode_mma.cu). Fragment layouts are PTX's (ISA,
// "Matrix Fragments for mma.m16n8k16"): lane = 4·g + t holds A's rows g and g + 8 and
// columns 2t, 2t + 1, 2t + 8, 2t + 9; B's rows (k) 2t, 2t + 1, 2t + 8, 2t + 9 of column g;
// the accumulators' rows g and g + 8, columns 2t and 2t + 1.
#pragma once

#include "common.cuh"

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
};

// One tile's step of the online softmax of the attention kernels on the tensor cores. s
// holds NT accumulator tiles of 8 keys' scores (log2 units, masked keys −inf); mx_a, mx_b
// are this lane's maxima of rows g and g + 8, the running maxima m_a, m_b included. The
// maxima are reduced over the lane's quad, this lane's sums l and the outputs o rescaled,
// and the probabilities left as the A operands of p · V, rounded to T: tiles 2c and 2c + 1
// give p[c] (registers 0, 1 from the first, 2, 3 from the second). A row with nothing
// visible yet keeps max −inf: exp2 of (−inf − 0) is 0, no NaN.
template <typename T, int NT, int DN>
__device__ __forceinline__ void online_softmax_step(const float (&s)[NT][4], float mx_a,
                                                    float mx_b, float &m_a, float &m_b,
                                                    float &l_a, float &l_b, float (&o)[DN][4],
                                                    uint32_t (&p)[NT / 2][4]) {
#pragma unroll
  for (int o2 = 1; o2 < 4; o2 <<= 1) {
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
  }
  const float base_a = mx_a == -INFINITY ? 0.f : mx_a;
  const float base_b = mx_b == -INFINITY ? 0.f : mx_b;
  const float alpha_a = exp2f(m_a - base_a), alpha_b = exp2f(m_b - base_b);
  m_a = mx_a;
  m_b = mx_b;
  l_a *= alpha_a;
  l_b *= alpha_b;
#pragma unroll
  for (int n = 0; n < DN; ++n) {
    o[n][0] *= alpha_a;
    o[n][1] *= alpha_a;
    o[n][2] *= alpha_b;
    o[n][3] *= alpha_b;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const float e0 = exp2f(s[n][0] - base_a), e1 = exp2f(s[n][1] - base_a);
    const float e2 = exp2f(s[n][2] - base_b), e3 = exp2f(s[n][3] - base_b);
    l_a += e0 + e1;
    l_b += e2 + e3;
    p[n / 2][(n & 1) * 2 + 0] = Mma<T>::pack(e0, e1);
    p[n / 2][(n & 1) * 2 + 1] = Mma<T>::pack(e2, e3);
  }
}

// Shared-memory staging and fragment loads of the kernels on the tensor cores.
namespace {

// 16 bytes from global to shared memory, asynchronously (cp.async, compute capability
// 8.0); `full` false writes zeros and reads nothing.
__device__ __forceinline__ void copy16(void *dst, const void *src, bool full) {
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(full ? 16 : 0));
}
// Waits for this thread's copies; a __syncthreads after it makes every thread's visible.
__device__ __forceinline__ void copies_wait() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Four 8×8 matrices of 16-bit elements from shared memory; lane l gives the address of row
// l % 8 of matrix l / 8 and receives, of each matrix, row l / 4's elements 2(l % 4) and
// 2(l % 4) + 1 (TRANS: column l / 4's, rows 2(l % 4) and 2(l % 4) + 1): an mma B fragment.
template <bool TRANS>
__device__ __forceinline__ void load_matrices(uint32_t r[4], const void *row) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
  if (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

}  // namespace
