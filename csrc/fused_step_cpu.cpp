// The fused guidance + solver step on the CPU (see fused_step.h for the contract).
//
// The arrays are cut into blocks of BLOCK elements, processed in parallel through
// at::parallel_for (torch's OpenMP pool: torch.set_num_threads governs it). Inside a block each
// phase is a flat loop over local fp32 buffers, which the compiler vectorises.
#include "fused_step.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t BLOCK = 1024;
constexpr int64_t GRAIN_BLOCKS = 32;  // below 32 Ki elements one thread does it all

struct Row {
  float a, b, b2, c;
  bool keep;
  float d;
  float w[4];
};

template <typename In, typename Next>
void run_blocks(const NagStepArgs& args, const Row& r) {
  const int64_t n = args.n;
  const In* out = static_cast<const In*>(args.out);
  Next* next = static_cast<Next*>(args.next);
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  at::parallel_for(0, blocks, GRAIN_BLOCKS, [&](int64_t first, int64_t last) {
    float g[BLOCK];
    float xo[BLOCK];
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t start = blk * BLOCK;
      const int64_t len = std::min(BLOCK, n - start);
      // g = sum_p w_p out_p, in pass order
      const In* o = out + start;
      for (int64_t i = 0; i < len; ++i) g[i] = r.w[0] * static_cast<float>(o[i]);
      for (int p = 1; p < args.passes; ++p) {
        o = out + p * n + start;
        const float w = r.w[p];
        for (int64_t i = 0; i < len; ++i) g[i] += w * static_cast<float>(o[i]);
      }
      // x_out = a x + b g (+ b2 g_prev) (+ c z)
      const float* x = args.x + start;
      for (int64_t i = 0; i < len; ++i) xo[i] = r.a * x[i] + r.b * g[i];
      if (args.g_prev != nullptr) {
        const float* gp = args.g_prev + start;
        for (int64_t i = 0; i < len; ++i) xo[i] += r.b2 * gp[i];
      }
      if (args.z != nullptr) {
        const float* z = args.z + start;
        for (int64_t i = 0; i < len; ++i) xo[i] += r.c * z[i];
      }
      // g_out = g + d x (x: the state read); exactly g where d = 0
      if (r.d != 0.0f) {
        for (int64_t i = 0; i < len; ++i) g[i] += r.d * x[i];
      }
      // writes, after every read of this block (g_out may alias g_prev, x_new may alias x)
      for (int s = 0; s < args.next_slots; ++s) {
        Next* dst = next + s * n + start;
        for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<Next>(xo[i]);
      }
      if (args.g_out != nullptr) std::copy(g, g + len, args.g_out + start);
      if (r.keep) {
        std::copy(xo, xo + len, args.x_new + start);
      } else if (args.x_new != args.x) {
        std::copy(x, x + len, args.x_new + start);
      }
    }
  });
}

template <typename In>
void dispatch_next(const NagStepArgs& args, const Row& r) {
  switch (args.next_slots > 0 ? args.next_dtype : args.out_dtype) {
    case NAG_F16:
      return run_blocks<In, c10::Half>(args, r);
    case NAG_BF16:
      return run_blocks<In, c10::BFloat16>(args, r);
    default:
      return run_blocks<In, float>(args, r);
  }
}

}  // namespace

extern "C" void nag_fused_step_cpu(const NagStepArgs* args) {
  const int64_t stage = args->stage_int64 ? *static_cast<const int64_t*>(args->stage)
                                          : *static_cast<const int32_t*>(args->stage);
  const float* row = args->coef + stage * args->coef_stride;
  const float* w = args->weights + stage * args->w_stride;
  Row r{row[0], row[1], row[2], row[3], row[4] != 0.0f, row[5], {0.0f, 0.0f, 0.0f, 0.0f}};
  for (int p = 0; p < args->passes; ++p) r.w[p] = w[p];
  switch (args->out_dtype) {
    case NAG_F16:
      return dispatch_next<c10::Half>(*args, r);
    case NAG_BF16:
      return dispatch_next<c10::BFloat16>(*args, r);
    default:
      return dispatch_next<float>(*args, r);
  }
}
