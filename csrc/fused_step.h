// The fused guidance + solver step (docs/ARCHITECTURE.md §4): the argument block shared by the C++ CPU
// kernel, the CUDA kernel and the pybind11 bindings. Plain C, so the CUDA source compiles
// with nvcc alone (no torch headers).
//
//   g      = sum_p w[stage][p] * out[p]                       (fp32, in pass order)
//   x_out  = a*x + b*g (+ b2*g_prev) (+ c*z)                  (fp32; a, b, b2, c = coef[stage])
//   x_new  = keep ? x_out : x;  next[s] = x_out               (s = 0..next_slots-1)
//   g_out  = d != 0 ? g + d*x : g                             (x: the state read, before update)
//
// g_out is what the next stage reads as g_prev: g itself for most solvers (d = 0, bit for bit),
// or a quantity that also depends on the state (DPM-Solver++(2M) carries D/B = g + (A/B) x).
//
// All arrays hold n elements in one memory order (the state's); out and next hold their
// slots back to back (slot p starts at element p*n). x_new may alias x and g_out may alias
// g_prev: each element is read before it is written.
#ifndef NAG_ENGINE_FUSED_STEP_H
#define NAG_ENGINE_FUSED_STEP_H

#ifdef __cplusplus
extern "C" {
#endif

enum NagDtype { NAG_F32 = 0, NAG_F16 = 1, NAG_BF16 = 2 };
enum { NAG_COEF_COLUMNS = 6 };  // a, b, b2, c, keep, d

typedef struct NagStepArgs {
  const void* out;      // [passes, n] model outputs, out_dtype
  int out_dtype;
  int passes;           // 1..4
  const float* weights; // [stages, w_stride] pass weights
  long long w_stride;
  const float* coef;    // [stages, NAG_COEF_COLUMNS] (row stride coef_stride)
  long long coef_stride;
  long long stages;     // rows of both tables: a stage outside [0, stages) is an error
  const void* stage;    // one int32 (stage_int64 = 0) or int64 on the kernel's device
  int stage_int64;
  const float* x;       // [n] state
  const float* g_prev;  // [n] or NULL
  const float* z;       // [n] noise (fp32) or NULL
  float* x_new;         // [n]
  float* g_out;         // [n] or NULL
  void* next;           // [next_slots, n] next model input, next_dtype (NULL if no slots)
  int next_dtype;
  int next_slots;
  long long n;
} NagStepArgs;

// C++ CPU kernel (fused_step_cpu.cpp): blocks of the arrays in parallel on torch's OpenMP pool.
void nag_fused_step_cpu(const NagStepArgs* args);

// CUDA kernel (fused_step_cuda.cu), launched on `stream` (a cudaStream_t). Returns NULL, or
// the CUDA error message of the launch.
const char* nag_fused_step_cuda(const NagStepArgs* args, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // NAG_ENGINE_FUSED_STEP_H
