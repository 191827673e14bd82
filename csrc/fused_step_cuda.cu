// The fused guidance + solver step in CUDA (see fused_step.h for the contract).
//
// Each block covers TILE = THREADS * GROUPS * GROUP elements. Thread t of a block handles
// GROUPS groups of GROUP = 4 consecutive elements, group h starting at element
// TILE * block + (h * THREADS + t) * GROUP: a warp's accesses to one group are contiguous, so
// every load and store is coalesced (512 bytes per warp and group for fp32, 256 for 16-bit
// values). With 16-byte aligned arrays and n a multiple of 4, each group is one 128-bit access
// (fp32) or one 64-bit access (fp16 / bf16); otherwise (odd sizes, unaligned views) the same
// thread falls back to element accesses with a masked tail. All of a thread's reads come before
// its writes (x_new may alias x, g_out may alias g_prev). The math is fp32. The coefficient row
// and pass weights are read on the device at the stage index, so a captured CUDA graph replays
// every step without host work. Plain CUDA: no torch headers, the binding passes raw pointers.
//
// `step_tile` is the whole per-thread body and is also a host function: the tests compile this
// file for the host and run every (block, thread) of a launch on the CPU against the reference
// (tests/csrc/emulate_fused_step_cuda.cu), which checks the index arithmetic, the masks and the
// conversions without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "fused_step.h"

#define NAG_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__  // the loops are unrolled on the device; the host compiler decides itself
#define NAG_UNROLL _Pragma("unroll")
#else
#define NAG_UNROLL
#endif

namespace {

constexpr int GROUP = 4;   // elements per access
constexpr int GROUPS = 2;  // accesses per thread and array
constexpr int THREADS = 256;
constexpr int64_t TILE = static_cast<int64_t>(THREADS) * GROUPS * GROUP;

NAG_HD float to_float(float v) { return v; }
NAG_HD float to_float(__half v) { return __half2float(v); }
NAG_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
NAG_HD T from_float(float v);
template <>
NAG_HD float from_float<float>(float v) { return v; }
template <>
NAG_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
NAG_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 4 elements at p as fp32: one 128-bit (fp32) or 64-bit (16-bit types) load when `full`
// (aligned, all 4 in range), else element loads of the `left` in range.
template <typename T>
NAG_HD void load4(const T* p, int64_t left, bool full, float (&v)[GROUP]) {
  if (full) {
    if constexpr (sizeof(T) == 4) {
      const float4 q = *reinterpret_cast<const float4*>(p);
      v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    } else {
      union { uint2 raw; T h[GROUP]; } u;
      u.raw = *reinterpret_cast<const uint2*>(p);
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) v[k] = to_float(u.h[k]);
    }
  } else {
NAG_UNROLL
    for (int k = 0; k < GROUP; ++k) v[k] = k < left ? to_float(p[k]) : 0.0f;
  }
}

template <typename T>
NAG_HD void store4(T* p, int64_t left, bool full, const float (&v)[GROUP]) {
  if (full) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      union { uint2 raw; T h[GROUP]; } u;
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) u.h[k] = from_float<T>(v[k]);
      *reinterpret_cast<uint2*>(p) = u.raw;
    }
  } else {
NAG_UNROLL
    for (int k = 0; k < GROUP; ++k) {
      if (k < left) p[k] = from_float<T>(v[k]);
    }
  }
}

// Everything thread `thread` of block `block` does, for a stage row already checked in range.
template <typename In, typename Next, int P>
NAG_HD void step_tile(const NagStepArgs& args, int64_t stage, int64_t block, int thread,
                      bool aligned) {
  const int64_t n = args.n;
  int64_t start[GROUPS], left[GROUPS];
  bool full[GROUPS], any = false;
NAG_UNROLL
  for (int h = 0; h < GROUPS; ++h) {
    start[h] = block * TILE + (static_cast<int64_t>(h) * THREADS + thread) * GROUP;
    left[h] = start[h] < n ? n - start[h] : 0;
    full[h] = aligned && left[h] >= GROUP;
    any = any || left[h] > 0;
  }
  if (!any) return;
  const float* row = args.coef + stage * args.coef_stride;
  const float* w = args.weights + stage * args.w_stride;
  const In* out = static_cast<const In*>(args.out);
  const float a = row[0], b = row[1], b2 = row[2], c = row[3], d = row[5];

  float g[GROUPS][GROUP], x[GROUPS][GROUP], xo[GROUPS][GROUP], o[GROUP];
NAG_UNROLL
  for (int h = 0; h < GROUPS; ++h) {
    if (left[h] == 0) continue;
    load4(out + start[h], left[h], full[h], o);
NAG_UNROLL
    for (int k = 0; k < GROUP; ++k) g[h][k] = w[0] * o[k];
NAG_UNROLL
    for (int p = 1; p < P; ++p) {  // pass order, like the reference
      load4(out + p * n + start[h], left[h], full[h], o);
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) g[h][k] += w[p] * o[k];
    }
    load4(args.x + start[h], left[h], full[h], x[h]);
NAG_UNROLL
    for (int k = 0; k < GROUP; ++k) xo[h][k] = a * x[h][k] + b * g[h][k];
    if (args.g_prev != nullptr) {
      load4(args.g_prev + start[h], left[h], full[h], o);
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) xo[h][k] += b2 * o[k];
    }
    if (args.z != nullptr) {
      load4(args.z + start[h], left[h], full[h], o);
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) xo[h][k] += c * o[k];
    }
    if (args.g_out != nullptr && d != 0.0f) {  // g_out = g + d x; exactly g where d = 0
NAG_UNROLL
      for (int k = 0; k < GROUP; ++k) g[h][k] += d * x[h][k];
    }
  }
  // every read of this thread's elements is done: now the writes
  Next* next = static_cast<Next*>(args.next);
  const bool keep = row[4] != 0.0f;
NAG_UNROLL
  for (int h = 0; h < GROUPS; ++h) {
    if (left[h] == 0) continue;
    for (int s = 0; s < args.next_slots; ++s) store4(next + s * n + start[h], left[h], full[h], xo[h]);
    if (args.g_out != nullptr) store4(args.g_out + start[h], left[h], full[h], g[h]);
    if (keep) {
      store4(args.x_new + start[h], left[h], full[h], xo[h]);
    } else if (args.x_new != args.x) {  // a stage that keeps x: nothing to write in place
      store4(args.x_new + start[h], left[h], full[h], x[h]);
    }
  }
}

NAG_HD int64_t read_stage(const NagStepArgs& args) {
  return args.stage_int64 ? *static_cast<const long long*>(args.stage)
                          : *static_cast<const int*>(args.stage);
}

template <typename In, typename Next, int P>
__global__ void __launch_bounds__(THREADS) fused_step_kernel(NagStepArgs args, bool aligned) {
  const int64_t stage = read_stage(args);
  if (stage < 0 || stage >= args.stages) __trap();  // like a failed device-side index check
  step_tile<In, Next, P>(args, stage, blockIdx.x, static_cast<int>(threadIdx.x), aligned);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The wide accesses need every group start aligned: n a multiple of 4 and 16-byte aligned bases.
bool all_aligned(const NagStepArgs& a) {
  return a.n % GROUP == 0 && aligned16(a.out) && aligned16(a.x) && aligned16(a.x_new) &&
         (!a.g_prev || aligned16(a.g_prev)) && (!a.z || aligned16(a.z)) &&
         (!a.g_out || aligned16(a.g_out)) && (!a.next || aligned16(a.next));
}

int64_t blocks_for(const NagStepArgs& a) { return (a.n + TILE - 1) / TILE; }

// Calls run(In{}, Next{}, std::integral_constant<int, P>{}) for the arguments' dtypes and passes.
template <typename In, typename Next, typename Run>
void dispatch_passes(const NagStepArgs& a, Run&& run) {
  switch (a.passes) {
    case 1: return run(In{}, Next{}, std::integral_constant<int, 1>{});
    case 2: return run(In{}, Next{}, std::integral_constant<int, 2>{});
    case 3: return run(In{}, Next{}, std::integral_constant<int, 3>{});
    default: return run(In{}, Next{}, std::integral_constant<int, 4>{});
  }
}

template <typename In, typename Run>
void dispatch_next(const NagStepArgs& a, Run&& run) {
  switch (a.next_slots > 0 ? a.next_dtype : a.out_dtype) {
    case NAG_F16: return dispatch_passes<In, __half>(a, run);
    case NAG_BF16: return dispatch_passes<In, __nv_bfloat16>(a, run);
    default: return dispatch_passes<In, float>(a, run);
  }
}

template <typename Run>
void dispatch(const NagStepArgs& a, Run&& run) {
  switch (a.out_dtype) {
    case NAG_F16: return dispatch_next<__half>(a, run);
    case NAG_BF16: return dispatch_next<__nv_bfloat16>(a, run);
    default: return dispatch_next<float>(a, run);
  }
}

}  // namespace

extern "C" const char* nag_fused_step_cuda(const NagStepArgs* args, void* stream) {
  if (args->n <= 0) return nullptr;
  const bool aligned = all_aligned(*args);
  const unsigned blocks = static_cast<unsigned>(blocks_for(*args));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch(*args, [&](auto in, auto next, auto passes) {
    using In = decltype(in);
    using Next = decltype(next);
    fused_step_kernel<In, Next, decltype(passes)::value><<<blocks, THREADS, 0, s>>>(*args, aligned);
  });
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
