// pybind11 bindings of the fused step (nag_engine._C): tensors in, checked, raw pointers out to
// the C++ CPU kernel or (when built with NAG_WITH_CUDA) the CUDA kernel.
//
// The Python wrapper (nag_engine/backends/native.py) brings read-only inputs into the state's layout
// first; the checks here keep a direct call from reading past an array (the stage index of a
// CUDA call lives on the device: the kernel traps on one outside the tables). The kernels run
// without the GIL.
#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <string>

#include "fused_step.h"

#ifdef NAG_WITH_CUDA  // device-generic headers: CPU builds of torch ship them too (CI compiles this)
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#endif

namespace {

using OptTensor = std::optional<at::Tensor>;

int dtype_code(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return NAG_F32;
    case at::kHalf: return NAG_F16;
    case at::kBFloat16: return NAG_BF16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return NAG_F32;
}

// t has x's shape, strides and device
void check_like(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), ", x on ", x.device());
  TORCH_CHECK(t.sizes() == x.sizes() && t.strides() == x.strides(), name,
              " must have the shape and strides of x");
}

void check_f32_like(const at::Tensor& x, const OptTensor& t, const char* name) {
  if (!t) return;
  check_like(x, *t, name);
  TORCH_CHECK(t->scalar_type() == at::kFloat, name, " must be float32, got ", t->scalar_type());
}

// each slot of stacked [slots, *x.shape] has x's shape, strides and device (compared without
// making a view of a slot: this runs on every eager call)
void check_slots(const at::Tensor& x, const at::Tensor& stacked, const char* name) {
  TORCH_CHECK(stacked.dim() == x.dim() + 1, name, " must be [slots, *x.shape]");
  if (stacked.size(0) == 0) return;
  TORCH_CHECK(stacked.device() == x.device(), name, " is on ", stacked.device(), ", x on ",
              x.device());
  TORCH_CHECK(stacked.sizes().slice(1) == x.sizes() && stacked.strides().slice(1) == x.strides(),
              name, " slots must have the shape and strides of x");
  TORCH_CHECK(stacked.size(0) == 1 || stacked.stride(0) == x.numel(), name,
              " slots must follow each other in memory");
}

NagStepArgs make_args(const at::Tensor& out, const at::Tensor& weights, const at::Tensor& coef,
                      const at::Tensor& stage, const at::Tensor& x, const at::Tensor& x_new,
                      const OptTensor& g_prev, const OptTensor& z, const OptTensor& g_out,
                      const OptTensor& next) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "x must be dense (contiguous or channels-last)");
  TORCH_CHECK(out.size(0) >= 1 && out.size(0) <= 4, "out must hold 1 to 4 passes");
  check_slots(x, out, "out");
  check_f32_like(x, x_new, "x_new");
  check_f32_like(x, g_prev, "g_prev");
  check_f32_like(x, z, "z");
  check_f32_like(x, g_out, "g_out");
  if (next) check_slots(x, *next, "next_input");
  for (const at::Tensor* t : {&weights, &coef}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->stride(1) == 1 &&
                    t->device() == x.device(),
                "weights and coef must be 2-D float32 tables with unit column stride on x's device");
  }
  TORCH_CHECK(weights.size(1) >= out.size(0), "weights has fewer columns than passes");
  TORCH_CHECK(coef.size(1) == NAG_COEF_COLUMNS, "coef must have 6 columns (a, b, b2, c, keep, d)");
  TORCH_CHECK(coef.size(0) >= 1 && weights.size(0) >= 1, "the coef and weights tables are empty");
  TORCH_CHECK(stage.numel() == 1 && stage.device() == x.device() &&
                  (stage.scalar_type() == at::kInt || stage.scalar_type() == at::kLong),
              "stage must be one int32/int64 element on x's device");
  const int slots = next ? static_cast<int>(next->size(0)) : 0;
  NagStepArgs a{};
  a.out = out.data_ptr();
  a.out_dtype = dtype_code(out, "out");
  a.passes = static_cast<int>(out.size(0));
  a.weights = weights.data_ptr<float>();
  a.w_stride = weights.stride(0);
  a.coef = coef.data_ptr<float>();
  a.coef_stride = coef.stride(0);
  a.stages = std::min(coef.size(0), weights.size(0));
  a.stage = stage.data_ptr();
  a.stage_int64 = stage.scalar_type() == at::kLong;
  a.x = x.data_ptr<float>();
  a.g_prev = g_prev ? g_prev->data_ptr<float>() : nullptr;
  a.z = z ? z->data_ptr<float>() : nullptr;
  a.x_new = x_new.data_ptr<float>();
  a.g_out = g_out ? g_out->data_ptr<float>() : nullptr;
  a.next = slots ? next->data_ptr() : nullptr;
  a.next_dtype = slots ? dtype_code(*next, "next_input") : a.out_dtype;
  a.next_slots = slots;
  a.n = x.numel();
  return a;
}

void fused_step_cpu(const at::Tensor& out, const at::Tensor& weights, const at::Tensor& coef,
                    const at::Tensor& stage, const at::Tensor& x, const at::Tensor& x_new,
                    const OptTensor& g_prev, const OptTensor& z, const OptTensor& g_out,
                    const OptTensor& next_input) {
  TORCH_CHECK(x.device().is_cpu(), "fused_step_cpu needs CPU tensors");
  const NagStepArgs a =
      make_args(out, weights, coef, stage, x, x_new, g_prev, z, g_out, next_input);
  TORCH_CHECK(a.stage_int64 ? *static_cast<const int64_t*>(a.stage) >= 0
                            : *static_cast<const int32_t*>(a.stage) >= 0,
              "stage must be >= 0");
  const int64_t row = a.stage_int64 ? *static_cast<const int64_t*>(a.stage)
                                    : *static_cast<const int32_t*>(a.stage);
  TORCH_CHECK(row < a.stages, "stage ", row, " is past the end of the tables");
  if (a.n > 0) nag_fused_step_cpu(&a);
}

#ifdef NAG_WITH_CUDA
// Launched on x's device and that device's current stream (so it can be captured in a CUDA
// graph), both found here rather than in Python: an eager call costs a few µs of host time.
void fused_step_cuda(const at::Tensor& out, const at::Tensor& weights, const at::Tensor& coef,
                     const at::Tensor& stage, const at::Tensor& x, const at::Tensor& x_new,
                     const OptTensor& g_prev, const OptTensor& z, const OptTensor& g_out,
                     const OptTensor& next_input) {
  TORCH_CHECK(x.device().is_cuda(), "fused_step_cuda needs CUDA tensors");
  const NagStepArgs a =
      make_args(out, weights, coef, stage, x, x_new, g_prev, z, g_out, next_input);
  const c10::DeviceGuard guard(x.device());
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  void* stream = cuda.getStream(x.device()).native_handle();  // torch's current cudaStream_t
  const char* err = nag_fused_step_cuda(&a, stream);
  TORCH_CHECK(err == nullptr, "fused_step_cuda launch failed: ", err ? err : "");
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nag_engine native kernels: the fused guidance + solver step (docs/ARCHITECTURE.md section 4)";
  namespace py = pybind11;
  m.def("fused_step_cpu", &fused_step_cpu, "fused guidance + solver step, C++ on CPU tensors",
        py::arg("out"), py::arg("weights"), py::arg("coef"), py::arg("stage"), py::arg("x"),
        py::arg("x_new"), py::arg("g_prev"), py::arg("z"), py::arg("g_out"),
        py::arg("next_input"), py::call_guard<py::gil_scoped_release>());
#ifdef NAG_WITH_CUDA
  m.def("fused_step_cuda", &fused_step_cuda,
        "fused guidance + solver step, CUDA, on x's device and its current stream",
        py::arg("out"), py::arg("weights"), py::arg("coef"), py::arg("stage"), py::arg("x"),
        py::arg("x_new"), py::arg("g_prev"), py::arg("z"), py::arg("g_out"),
        py::arg("next_input"), py::call_guard<py::gil_scoped_release>());
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
