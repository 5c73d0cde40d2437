"""SSD (Mamba-2): one public entry point, `ssd`, with three evaluation orders of one function, and `ssd_step`
(one decode step, torch spec or Triton kernel).

Glossary (Dao & Gu 2024): x = X (input, per head), dt = Δ (step size), A = A (scalar per head, negative),
B, C = B, C (input/output projections of the state, shared by the heads of a group), D = skip, z = gate,
h = state (batch, nheads, headdim, dstate), chunk_size = Q.
"""

from __future__ import annotations

import torch

from ..dispatch import interpreting, triton_module_available, warn_once
from ..validate import check_finite, check_impl, check_negative, check_same_device, check_tensor
from ..varlen import check_cu_seqlens
from .chunked import ssd_chunked
from .quadratic import ssd_quadratic
from .reference import ssd_recurrent
from .step import ssd_step_reference

__all__ = ["ssd", "ssd_step", "ssd_step_reference", "ssd_recurrent", "ssd_quadratic", "ssd_chunked", "IMPLS",
           "STEP_IMPLS"]

IMPLS = ("auto", "reference", "quadratic", "chunked", "triton")
STEP_IMPLS = ("auto", "reference", "triton")


def triton_available() -> bool:
    return triton_module_available(__name__)


def ssd(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None, chunk_size=64,
        initial_state=None, return_final_state=False, cu_seqlens=None, impl="auto", check_values=True):
    """Computes out = (SSM(x) + D x) * silu(z) for the SSD layer.

    x: (batch, seqlen, nheads, headdim); dt: (batch, seqlen, nheads); A: (nheads,), all < 0;
    B, C: (batch, seqlen, ngroups, dstate) with nheads % ngroups == 0; D: (nheads,) or (nheads, headdim);
    z: like x; dt_bias: (nheads,); dt_limit: (lo, hi) clamp of the step after bias and softplus;
    initial_state: (batch, nheads, headdim, dstate), or (nseq, ...) with cu_seqlens;
    cu_seqlens: (nseq + 1,) int offsets packing several sequences into one row (batch 1), states reset between.
    impl: "reference" (recurrence), "quadratic" (attention form), "chunked" (block decomposition),
    "triton" (fused GPU kernels), "auto" (triton on CUDA when available, else chunked).
    check_values: also check that A < 0 and x, dt are finite (a clear ValueError instead of NaN outputs). Each
    check reads a result back to the host, a synchronization on CUDA; the model's layers pass False (their A
    is -exp(A_log) and their x, dt come from the model itself), shapes and devices are always checked.
    Returns y (batch, seqlen, nheads, headdim) in x.dtype, and with return_final_state also the final state
    (batch or nseq, nheads, headdim, dstate) in float32 (float64 for float64 inputs).
    """
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, dt_limit, chunk_size, initial_state, cu_seqlens, impl,
                  check_values)
    impl = _resolve(impl, x)
    args = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                initial_state=initial_state, cu_seqlens=cu_seqlens)
    if impl == "reference":
        y, final = ssd_recurrent(x, dt, A, B, C, **args)
    elif impl == "quadratic":
        y, final = ssd_quadratic(x, dt, A, B, C, **args)
    elif impl == "chunked":
        y, final = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, **args)
    else:
        from .triton import ssd_triton, unsupported_reason

        reason = unsupported_reason(x, B)
        if reason is None:
            y, final = ssd_triton(x, dt, A, B, C, chunk_size=chunk_size, **args)
        else:
            warn_once(reason)
            y, final = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, **args)
    return (y, final) if return_final_state else y


def ssd_step(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
             state_indices=None, A_is_log=False, state_prefetch=False, impl="auto"):
    """Advances `state` by one token IN PLACE and returns y: h <- exp(dt A) h + dt x Bᵀ, y = (h C + D x) silu(z).

    state: (nslots, nheads, headdim, dstate), float32 or bfloat16 for the kernel (any float dtype for the
    reference); x, z: (batch, nheads, headdim); dt: (batch, nheads); A, dt_bias: (nheads,);
    B, C: (batch, ngroups, dstate); D: (nheads,) or (nheads, headdim); state_indices: (batch,) int slot of each
    row (distinct slots; continuous batching), without it nslots == batch and row i uses slot i.
    A_is_log: A holds A_log and the step uses A = -exp(A_log) in float32 (Mamba-2's parameterization), computed
    inside the kernel rather than by separate launches per token.
    state_prefetch: the caller's promise that the launch just before this one does not write `state` (or
    `state_indices`), so the kernel may read it before its programmatic-dependent-launch wait, overlapping that
    launch (ssmkit.ops.pdl); a model's decode step passes True. No effect on the reference.
    impl: "reference" (torch, `step.py`), "triton" (one kernel launch), "auto" (triton on CUDA when available,
    else reference). Inputs the kernel cannot take (float64) fall back to the reference with a one-time warning.
    Only shapes and devices are checked (no value checks): they would synchronise the host and break CUDA
    graph capture. Returns y (batch, nheads, headdim) in x.dtype.
    """
    _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, state_indices, impl)
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, state_indices=state_indices,
              A_is_log=A_is_log)
    if _resolve_step(impl, state, x) == "triton":
        from .triton import ssd_step_triton, step_unsupported_reason

        reason = step_unsupported_reason(state, x)
        if reason is None:
            return ssd_step_triton(state, x, dt, A, B, C, state_prefetch=state_prefetch, **kw)
        warn_once(reason)
    return ssd_step_reference(state, x, dt, A, B, C, **kw)


def _resolve_step(impl: str, state: torch.Tensor, x: torch.Tensor) -> str:
    if impl == "auto":
        return "triton" if x.is_cuda and triton_available() else "reference"
    if impl == "triton":
        _resolve("triton", x)
    return impl


def _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, state_indices, impl):
    check_impl(impl, STEP_IMPLS)
    check_tensor("x", x, ndim=3)
    batch, nheads, headdim = x.shape
    check_tensor("state", state, ndim=4)
    check_tensor("dt", dt, shape=(batch, nheads))
    check_tensor("A", A, shape=(nheads,))
    check_tensor("B", B, ndim=3)
    ngroups, dstate = B.shape[1], B.shape[2]
    check_tensor("B", B, shape=(batch, ngroups, dstate))
    check_tensor("C", C, shape=(batch, ngroups, dstate))
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"B: nheads ({nheads}) must be divisible by ngroups, got ngroups={ngroups}")
    check_tensor("state", state, shape=(batch if state_indices is None else None, nheads, headdim, dstate))
    if D is not None:
        check_tensor("D", D, shape=(nheads,) if D.ndim == 1 else (nheads, headdim))
    if z is not None:
        check_tensor("z", z, shape=tuple(x.shape))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(nheads,))
    if state_indices is not None:
        check_tensor("state_indices", state_indices, shape=(batch,))
        if state_indices.is_floating_point():
            raise ValueError(f"state_indices: expected an integer tensor, got dtype {state_indices.dtype}")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      state_indices=state_indices)


def _resolve(impl: str, x: torch.Tensor) -> str:
    if impl == "auto":
        return "triton" if x.is_cuda and triton_available() else "chunked"
    if impl == "triton":
        if not triton_available():
            raise ValueError("impl: 'triton' needs the triton package and ssmkit.ops.ssd.triton, not found")
        if not x.is_cuda and not interpreting():
            raise ValueError(f"impl: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {x.device}")
    return impl



def _check_inputs(x, dt, A, B, C, D, z, dt_bias, dt_limit, chunk_size, initial_state, cu_seqlens, impl,
                  check_values=True):
    check_impl(impl, IMPLS)
    check_tensor("x", x, ndim=4)
    batch, seqlen, nheads, headdim = x.shape
    check_tensor("dt", dt, shape=(batch, seqlen, nheads))
    check_tensor("A", A, shape=(nheads,))
    check_tensor("B", B, ndim=4)
    ngroups, dstate = B.shape[2], B.shape[3]
    check_tensor("B", B, shape=(batch, seqlen, ngroups, dstate))
    check_tensor("C", C, shape=(batch, seqlen, ngroups, dstate))
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"B: nheads ({nheads}) must be divisible by ngroups, got ngroups={ngroups}")
    if D is not None:
        check_tensor("D", D, shape=(nheads,) if D.ndim == 1 else (nheads, headdim))
    if z is not None:
        check_tensor("z", z, shape=tuple(x.shape))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(nheads,))
    if dt_limit is not None and (len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]):
        raise ValueError(f"dt_limit: expected (lo, hi) with lo <= hi, got {dt_limit}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                      cu_seqlens=cu_seqlens)
    if check_values:
        check_negative("A", A)
        check_finite("x", x)
        check_finite("dt", dt)
    nstates = batch
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, seqlen, batch)
        nstates = cu_seqlens.numel() - 1
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(nstates, nheads, headdim, dstate))

