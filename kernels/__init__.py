"""Triton kernels (installed as `nag_engine.kernels`).

* `fused_step`: the fused guidance + solver step (reference:
  `nag_engine.backends.reference.reference_step`).
* `adaln`: the DiT hot paths, LayerNorm + adaLN modulation and the gated residual (forward only;
  references: `nag_engine.models.dit.modulate` / `gated_residual`). `DiT` uses them on CUDA
  tensors without autograd (`DiT.set_fused_kernels`).

* `ops`: how the kernels become torch operators. The fused step and the two DiT kernels are
  ``torch.ops.nag_engine.<name>`` (a triton_op on a GPU, a custom_op under the interpreter, with
  fake implementations), which their functions call while torch.compile traces, so a compiled
  DiT forward or step has no graph break. (The `picard` update is not an operator yet.)

Import needs triton; on a machine without a GPU the kernels run under ``TRITON_INTERPRET=1``
(set it before the first import). The sampler reaches them only through
`nag_engine.backends`.
"""
