"""How the Triton kernels become torch custom operators in the ``nag_engine`` namespace, so that
``torch.compile`` traces a DiT forward or a sampler step through them without a graph break.

`register` makes a kernel's launch function an operator:

* compiled kernels (``@triton.jit`` on a GPU machine): `torch.library.triton_op` (torch >= 2.6).
  The body launches through `torch.library.wrap_triton` (`wrap_triton`), so under ``torch.compile``
  inductor sees the Triton kernel itself and calls it from its own generated code (and from its
  CUDA graphs) instead of going back to Python;
* interpreted kernels (``TRITON_INTERPRET=1``, CPU tensors: how the tests run them): a plain
  `torch.library.custom_op`, because wrap_triton cannot trace an interpreter function. Compile
  keeps the op as one opaque call with the same schema and fake implementation.

The kernels' Python functions call the operator only while torch.compile traces; eager code
launches the body directly (the dispatch through an operator costs tens of µs of host time a
call and buys nothing there).

Every operator has an explicit fake implementation (the outputs' shapes, dtypes and strides,
no launch) and declares the arguments it writes (``mutates_args``); it writes nothing else.
The operators are inference only: they have no autograd formula (a backward through one
raises), and the DiT calls them only without autograd, keeping plain torch for training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import triton

NAMESPACE = "nag_engine"


def is_compiled(kernel: Any) -> bool:
    """True for a ``@triton.jit`` kernel that compiles for a GPU; False for an interpreter
    function (``TRITON_INTERPRET=1`` when the kernel was defined)."""
    return isinstance(kernel, triton.runtime.JITFunction)


def wrap_triton(kernel: Any) -> Any:
    """What an operator body indexes with its grid to launch `kernel`:
    `torch.library.wrap_triton(kernel)` where it is compiled (traceable by torch.compile), the
    interpreter function itself otherwise.

    Named like torch's function on purpose: torch scans a triton_op body's source for calls
    ``wrap_triton(<kernel>)`` to key its compile caches on the kernels' source, so the bodies
    call this by that name (``from .ops import wrap_triton``) with the kernel itself."""
    return torch.library.wrap_triton(kernel) if is_compiled(kernel) else kernel


def register(
    name: str,
    body: Callable[..., Any],
    *,
    fake: Callable[..., Any],
    mutates_args: Iterable[str],
    kernels: Iterable[Any],
) -> Callable[..., Any]:
    """Register the operator ``torch.ops.nag_engine.<name>`` running `body` (schema from its
    type hints) with the fake implementation `fake`: a `torch.library.triton_op` where all of
    `kernels` (those `body` launches) are compiled, else a `torch.library.custom_op`.

    Returns a function called like `body` that calls the operator while torch.compile (or
    torch.export) traces, and `body` itself in eager code, where the operator's dispatch would
    only add host time (tens of µs a call; nothing to fuse or schedule there)."""
    qualified = f"{NAMESPACE}::{name}"
    mutates_args = tuple(mutates_args)
    if all(is_compiled(kernel) for kernel in kernels):
        op = torch.library.triton_op(qualified, body, mutates_args=mutates_args)
    else:
        op = torch.library.custom_op(qualified, body, mutates_args=mutates_args)
    op.register_fake(fake)  # replaces triton_op's default (tracing body itself)

    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return op(*args, **kwargs)  # one node in the traced graph
        return body(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = body.__doc__
    return call
