"""One token of the Mamba-1 selective scan (Gu & Dao 2023, eq. 2a-2b with ZOH for A, Euler for B).

`recurrence_step` is the one-step math; the reference loops over it and `selective_scan_step` runs it once in place
for decoding. The dt preprocessing and the output gate live here too, so every impl shares them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.dispatch import pick_impl
from ssmkit.ops.validate import check_same_device, check_tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 inputs compute in float32; float32 and float64 compute in their own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def effective_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """dt' = softplus(dt + dt_bias) when dt_softplus, else dt + dt_bias (bias optional). dt (..., dim)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    return F.softplus(dt) if dt_softplus else dt


def gate_output(y, x, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """out = (y + D x) * silu(z), each term optional. y, x, z (..., dim); D (dim,)."""
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z)
    return y


def recurrence_step(h, x, dt, A, B, C) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(dt A) * h_{t-1} + dt * B_t * x_t;  y_t = C_t . h_t  (no D, no gate).

    h (batch, dim, dstate); x, dt (batch, dim) with dt already through `effective_dt`; A (dim, dstate);
    B, C (batch, ngroups, dstate), channel d reading group d // (dim // ngroups).
    Returns (h_t (batch, dim, dstate), y_t (batch, dim)); h is not modified.
    """
    batch, dim, dstate = h.shape
    ngroups = B.shape[1]
    decay = torch.exp(dt[..., None] * A)  # ZOH for A
    dBx = (dt * x).view(batch, ngroups, dim // ngroups, 1) * B[:, :, None, :]  # Euler for B
    h = decay * h + dBx.reshape(batch, dim, dstate)
    y = (h.view(batch, ngroups, dim // ngroups, dstate) * C[:, :, None, :]).sum(-1)
    return h, y.reshape(batch, dim)


def selective_scan_step(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                        A_is_log: bool = False, dt_proj_weight=None, state_prefetch: bool = False,
                        impl: str = "auto") -> torch.Tensor:
    """Decodes one token: updates `state` in place and returns y.

    state (batch, dim, dstate), any float dtype (kept); x, dt, z (batch, dim); A (dim, dstate); B, C
    (batch, ngroups, dstate); D, dt_bias (dim,). Returns y (batch, dim) in x.dtype.
    Mamba-1's parameterization, fused into the kernel instead of separate launches per token:
    A_is_log: A holds A_log and the step uses A = -exp(A_log) in the compute dtype.
    dt_proj_weight (dim, dt_rank): dt is the low-rank (batch, dt_rank) input and the step uses
    dt = F.linear(dt, dt_proj_weight), rounded to dt's dtype as the linear layer's output would be.
    state_prefetch: the caller's promise that the launch just before this one does not write `state`, so the
    kernel may read it before its programmatic-dependent-launch wait (ssmkit.ops.pdl); a model's decode step
    passes True. No effect on the reference.
    impl: "reference" (torch), "triton" (one kernel launch), "auto" (the kernel on CUDA once the Triton module
    declares AUTO_SELECTABLE, else the reference).
    Only shapes and devices are checked (no value checks such as A < 0), so the call never synchronizes
    with the device and can be captured in a CUDA graph.
    """
    _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, A_is_log=A_is_log, dt_proj_weight=dt_proj_weight)
    if impl != "reference":
        fn = pick_impl("ssmkit.ops.selective_scan", "selective_scan_step", impl, x.device, None)
        if fn is not None:
            return fn(state, x, dt, A, B, C, state_prefetch=state_prefetch, **kw)
    cdt = compute_dtype(x.dtype)
    if dt_proj_weight is not None:
        dt = F.linear(dt, dt_proj_weight)
    if A_is_log:
        A = -torch.exp(A.to(cdt))
    h, y = recurrence_step(
        state.to(cdt), x.to(cdt), effective_dt(dt.to(cdt), _opt(dt_bias, cdt), dt_softplus), A.to(cdt),
        B.to(cdt), C.to(cdt),
    )
    state.copy_(h)
    return gate_output(y, x.to(cdt), _opt(D, cdt), _opt(z, cdt)).to(x.dtype)


def _opt(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight) -> None:
    check_tensor("x", x, ndim=2)
    batch, dim = x.shape
    check_tensor("A", A, ndim=2)
    if A.shape[0] != dim:
        raise ValueError(f"A: expected shape ({dim}, dstate) to match x's dim {dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    if dt_proj_weight is None:
        check_tensor("dt", dt, shape=(batch, dim))
    else:
        check_tensor("dt_proj_weight", dt_proj_weight, ndim=2)
        check_tensor("dt_proj_weight", dt_proj_weight, shape=(dim, None))
        check_tensor("dt", dt, shape=(batch, dt_proj_weight.shape[1]))
    check_tensor("B", B, shape=(batch, None, dstate))
    check_tensor("C", C, shape=tuple(B.shape))
    if dim % B.shape[1] != 0:
        raise ValueError(f"B: expected ngroups dividing dim={dim}, got ngroups={B.shape[1]}")
    check_tensor("state", state, shape=(batch, dim, dstate))
    for name, t, shape in (("D", D, (dim,)), ("z", z, (batch, dim)), ("dt_bias", dt_bias, (dim,))):
        if t is not None:
            check_tensor(name, t, shape=shape)
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      dt_proj_weight=dt_proj_weight)
