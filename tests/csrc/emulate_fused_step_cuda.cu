// The CUDA fused step run on the host: every (block, thread) of a launch of
// csrc/fused_step_cuda.cu's `step_tile`, one after the other, on host arrays. Built by
// tests/test_csrc_build.py with nvcc as a shared library and called through ctypes, so the
// kernel's index arithmetic, masks, wide accesses and conversions are checked against the
// reference on a machine without a GPU. (Threads of a launch touch disjoint elements, so their
// order does not matter.)
#include "fused_step_cuda.cu"

extern "C" int nag_emulate_fused_step_cuda(const NagStepArgs* args) {
  if (args->n <= 0) return 0;
  const int64_t stage = read_stage(*args);
  if (stage < 0 || stage >= args->stages) return 1;  // the kernel traps
  const bool aligned = all_aligned(*args);
  const int64_t blocks = blocks_for(*args);
  dispatch(*args, [&](auto in, auto next, auto passes) {
    using In = decltype(in);
    using Next = decltype(next);
    for (int64_t block = 0; block < blocks; ++block) {
      for (int thread = 0; thread < THREADS; ++thread) {
        step_tile<In, Next, decltype(passes)::value>(*args, stage, block, thread, aligned);
      }
    }
  });
  return 0;
}

// What the launch would choose, for the tests to know which path they covered.
extern "C" int nag_emulate_uses_wide_accesses(const NagStepArgs* args) {
  return all_aligned(*args) ? 1 : 0;
}
