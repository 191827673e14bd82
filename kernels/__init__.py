"""Triton kernels (installed as `nag_engine.kernels`).

* `fused_step`: the fused guidance + solver step (reference:
  `nag_engine.backends.reference.reference_step`).
* `adaln`: the DiT hot paths, LayerNorm + adaLN modulation and the gated residual (forward only;
  references: `nag_engine.models.dit.modulate` / `gated_residual`). `DiT` uses them on CUDA
  tensors without autograd (`DiT.set_fused_kernels`).

Import needs triton; on a machine without a GPU the kernels run under ``TRITON_INTERPRET=1``
(set it before the first import). The sampler reaches them only through
`nag_engine.backends`.
"""
