"""Mamba-1 selective scan (Gu & Dao 2023, section 3.2): one entry point with impl=, and the decode step.

impls: "reference" (loop over t, the spec), "parallel" (log-depth associative scan in torch), "triton" (only when
the module ssmkit.ops.selective_scan.triton exists and imports), "auto" (the fastest available on the device).
"""

from __future__ import annotations

import inspect

from ssmkit.ops.dispatch import triton_module_available
from ssmkit.ops.validate import check_impl, check_negative, check_same_device, check_tensor
from ssmkit.ops.varlen import check_cu_seqlens

from .parallel import selective_scan_parallel
from .reference import selective_scan_reference
from .step import selective_scan_step

__all__ = ["selective_scan", "selective_scan_step", "selective_scan_reference", "selective_scan_parallel"]

IMPLS = ("reference", "parallel", "triton", "auto")
# Preference order of "auto" per device type; an impl whose module is absent is skipped.
AUTO_ORDER = {"cuda": ("triton", "parallel")}
AUTO_DEFAULT = ("parallel",)


def selective_scan(
    x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
    return_final_state=False, cu_seqlens=None, impl="auto", check_values=True,
):
    """Mamba-1 selective scan.

    Glossary: x = u (input), dt = Δ, A = A (dim, dstate), B, C = B_t, C_t, D = skip, z = gate, h = state.
    dt' = softplus(dt + dt_bias) if dt_softplus else dt (+ dt_bias);
    h_t = exp(dt'_t A) * h_{t-1} + dt'_t * B_t * x_t  (ZOH for A, Euler for B);
    y_t = C_t . h_t + D x_t;  out = y * silu(z) when z is given.

    x, dt, z (batch, seqlen, dim); A (dim, dstate), strictly negative; B, C (batch, seqlen, ngroups, dstate),
    channel d reads group d // (dim // ngroups); D, dt_bias (dim,); initial_state (batch, dim, dstate).
    cu_seqlens (nseq + 1,) int, non-decreasing from 0 to seqlen: nseq sequences packed into one row (batch 1),
    each scanned as if alone; initial_state and final_state then hold one state per sequence (nseq, dim, dstate),
    and an empty sequence's final state is its initial state (zeros without one).
    Returns y (batch, seqlen, dim) in x.dtype, or (y, final_state) with return_final_state; final_state is in
    the compute dtype (float32 for bf16/fp16 inputs, else x.dtype).
    check_values: also check that A < 0 (a read-back to the host: a synchronization on CUDA); the Mamba layer
    passes False (its A is -exp(A_log)); shapes and devices are always checked.
    """
    check_impl(impl, IMPLS)
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, check_values)
    fn = _resolve(impl, x.device.type, packed=cu_seqlens is not None)
    packed = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    return fn(
        x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state,
        return_final_state=return_final_state, **packed,
    )


def _load_triton():
    """The Triton entry point, or None when the triton package or ssmkit.ops.selective_scan.triton is absent.

    As in ssmkit.ops.dispatch, a module that exists is imported without a guard, so an error inside it surfaces
    instead of falling back.
    """
    if not triton_module_available(__name__):
        return None
    from .triton import selective_scan_triton

    return selective_scan_triton


def _triton_auto_selectable() -> bool:
    if not triton_module_available(__name__):
        return False
    from .triton import AUTO_SELECTABLE

    return AUTO_SELECTABLE


def _loaders():
    return {
        "reference": lambda: selective_scan_reference,
        "parallel": lambda: selective_scan_parallel,
        "triton": _load_triton,
    }


def auto_impl(device_type: str) -> str:
    """The impl "auto" picks on a device type: the first of AUTO_ORDER whose module is available (a Triton
    module only once it declares AUTO_SELECTABLE, i.e. its GPU tests have passed)."""
    loaders = _loaders()
    for name in AUTO_ORDER.get(device_type, AUTO_DEFAULT):
        if name == "triton" and not _triton_auto_selectable():
            continue
        if loaders[name]() is not None:
            return name
    return AUTO_DEFAULT[0]


def _resolve(impl: str, device_type: str, packed: bool = False):
    name = auto_impl(device_type) if impl == "auto" else impl
    fn = _loaders()[name]()
    if fn is None:
        raise ValueError(f"impl: {impl!r} is not available (needs the triton package and {__name__}.triton)")
    if packed and not _takes_cu_seqlens(fn):
        # A kernel without packed-sequence support: "auto" takes the parallel scan, an explicit request fails.
        if impl != "auto":
            raise ValueError(f"impl: {impl!r} does not take cu_seqlens; use impl='parallel' or 'reference'")
        fn = selective_scan_parallel
    return fn


def _takes_cu_seqlens(fn) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == "cu_seqlens" or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, check_values=True) -> None:
    check_tensor("x", x, ndim=3)
    batch, seqlen, dim = x.shape
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point dtype, got {x.dtype}")
    if seqlen < 1:
        raise ValueError(f"x: expected seqlen >= 1, got shape {tuple(x.shape)}")
    check_tensor("dt", dt, shape=(batch, seqlen, dim))
    check_tensor("A", A, ndim=2)
    if A.shape[0] != dim:
        raise ValueError(f"A: expected shape ({dim}, dstate) to match x's dim {dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    check_tensor("B", B, shape=(batch, seqlen, None, dstate))
    check_tensor("C", C, shape=tuple(B.shape))
    ngroups = B.shape[2]
    if ngroups == 0 or dim % ngroups != 0:
        raise ValueError(f"B: expected ngroups dividing dim={dim}, got ngroups={ngroups}")
    nstates = batch
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, seqlen, batch)
        nstates = cu_seqlens.numel() - 1
    optional = (("D", D, (dim,)), ("z", z, (batch, seqlen, dim)), ("dt_bias", dt_bias, (dim,)),
                ("initial_state", initial_state, (nstates, dim, dstate)))
    for name, t, shape in optional:
        if t is not None:
            check_tensor(name, t, shape=shape)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                      cu_seqlens=cu_seqlens)
    if check_values:
        check_negative("A", A.detach())
