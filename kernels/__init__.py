"""Triton kernels (installed as `nag_engine.kernels`).

Placeholder: the fused guidance + solver step and the DiT hot paths arrive with the kernels
issue. The sampler calls `nag_engine.solvers.guided_step`, the plain-torch reference that every
kernel will be tested against.
"""

AVAILABLE: tuple[str, ...] = ()
