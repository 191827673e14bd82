// The fused guidance + solver step in CUDA (see fused_step.h for the contract).
//
// Each thread handles VEC = 8 consecutive elements: with 16-byte aligned arrays and n a
// multiple of 8, every array is read and written with 128-bit accesses (two float4 for fp32,
// one uint4 for 8 bf16/fp16 values); otherwise (odd sizes, unaligned views) the same thread
// falls back to element accesses with a masked tail. The math is fp32. The coefficient row and
// pass weights are read on the device at the stage index, so a captured CUDA graph replays
// every step without host work. Plain CUDA: no torch headers, the binding passes raw pointers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fused_step.h"

namespace {

constexpr int VEC = 8;
constexpr int THREADS = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 8 elements at p as fp32: vectorised when `full` (aligned, all 8 in range), else masked.
template <typename T>
__device__ __forceinline__ void load8(const T* p, int64_t left, bool full, float (&v)[VEC]) {
  if (full) {
    if constexpr (sizeof(T) == 4) {
      const float4 lo = reinterpret_cast<const float4*>(p)[0];
      const float4 hi = reinterpret_cast<const float4*>(p)[1];
      v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
      v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
    } else {
      union { uint4 raw; T h[VEC]; } u;
      u.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = to_float(u.h[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = k < left ? to_float(p[k]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* p, int64_t left, bool full, const float (&v)[VEC]) {
  if (full) {
    if constexpr (sizeof(T) == 4) {
      reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      union { uint4 raw; T h[VEC]; } u;
#pragma unroll
      for (int k = 0; k < VEC; ++k) u.h[k] = from_float<T>(v[k]);
      *reinterpret_cast<uint4*>(p) = u.raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (k < left) p[k] = from_float<T>(v[k]);
    }
  }
}

template <typename In, typename Next, int P>
__global__ void __launch_bounds__(THREADS) fused_step_kernel(NagStepArgs args, bool aligned) {
  const int64_t n = args.n;
  const int64_t start = (static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x) * VEC;
  if (start >= n) return;
  const int64_t left = n - start;
  const bool full = aligned && left >= VEC;

  const int64_t stage = args.stage_int64 ? *static_cast<const long long*>(args.stage)
                                         : *static_cast<const int*>(args.stage);
  if (stage < 0 || stage >= args.stages) __trap();  // like a failed device-side index check
  const float* row = args.coef + stage * args.coef_stride;
  const float* w = args.weights + stage * args.w_stride;
  const In* out = static_cast<const In*>(args.out);

  float g[VEC], o[VEC], x[VEC], xo[VEC];
  load8(out + start, left, full, o);
  const float w0 = w[0];
#pragma unroll
  for (int k = 0; k < VEC; ++k) g[k] = w0 * o[k];
#pragma unroll
  for (int p = 1; p < P; ++p) {  // pass order, like the reference
    load8(out + p * n + start, left, full, o);
    const float wp = w[p];
#pragma unroll
    for (int k = 0; k < VEC; ++k) g[k] += wp * o[k];
  }
  load8(args.x + start, left, full, x);
  const float a = row[0], b = row[1];
#pragma unroll
  for (int k = 0; k < VEC; ++k) xo[k] = a * x[k] + b * g[k];
  if (args.g_prev != nullptr) {
    load8(args.g_prev + start, left, full, o);
    const float b2 = row[2];
#pragma unroll
    for (int k = 0; k < VEC; ++k) xo[k] += b2 * o[k];
  }
  if (args.z != nullptr) {
    load8(args.z + start, left, full, o);
    const float c = row[3];
#pragma unroll
    for (int k = 0; k < VEC; ++k) xo[k] += c * o[k];
  }
  const float d = row[5];  // g_out = g + d x (x: the state read); exactly g where d = 0
  if (args.g_out != nullptr && d != 0.0f) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) g[k] += d * x[k];
  }
  // every read of these elements is done: now the writes (g_out may alias g_prev)
  Next* next = static_cast<Next*>(args.next);
  for (int s = 0; s < args.next_slots; ++s) store8(next + s * n + start, left, full, xo);
  if (args.g_out != nullptr) store8(args.g_out + start, left, full, g);
  if (row[4] != 0.0f) {
    store8(args.x_new + start, left, full, xo);
  } else if (args.x_new != args.x) {  // a stage that keeps x: nothing to write in place
    store8(args.x_new + start, left, full, x);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename In, typename Next>
void launch(const NagStepArgs& args, cudaStream_t stream) {
  // the 128-bit path needs every slot start aligned: n a multiple of 8 and aligned bases
  const bool aligned = args.n % VEC == 0 && aligned16(args.out) && aligned16(args.x) &&
                       aligned16(args.x_new) && (!args.g_prev || aligned16(args.g_prev)) &&
                       (!args.z || aligned16(args.z)) && (!args.g_out || aligned16(args.g_out)) &&
                       (!args.next || aligned16(args.next));
  const int64_t chunks = (args.n + VEC - 1) / VEC;
  const unsigned blocks = static_cast<unsigned>((chunks + THREADS - 1) / THREADS);
  switch (args.passes) {
    case 1: fused_step_kernel<In, Next, 1><<<blocks, THREADS, 0, stream>>>(args, aligned); break;
    case 2: fused_step_kernel<In, Next, 2><<<blocks, THREADS, 0, stream>>>(args, aligned); break;
    case 3: fused_step_kernel<In, Next, 3><<<blocks, THREADS, 0, stream>>>(args, aligned); break;
    default: fused_step_kernel<In, Next, 4><<<blocks, THREADS, 0, stream>>>(args, aligned); break;
  }
}

template <typename In>
void launch_next(const NagStepArgs& args, cudaStream_t stream) {
  switch (args.next_slots > 0 ? args.next_dtype : args.out_dtype) {
    case NAG_F16: return launch<In, __half>(args, stream);
    case NAG_BF16: return launch<In, __nv_bfloat16>(args, stream);
    default: return launch<In, float>(args, stream);
  }
}

}  // namespace

extern "C" const char* nag_fused_step_cuda(const NagStepArgs* args, void* stream) {
  if (args->n <= 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args->out_dtype) {
    case NAG_F16: launch_next<__half>(*args, s); break;
    case NAG_BF16: launch_next<__nv_bfloat16>(*args, s); break;
    default: launch_next<float>(*args, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
