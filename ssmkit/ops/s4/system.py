"""Shape conventions and input checks for the (A, B, C) systems of ssmkit.ops.s4.

A system is diagonal when A has as many dims as B (A holds the diagonal, (..., N)) and dense when A has one more
((..., N, N)). The leading shape is () or (H,) for H channels, the same for A and B; C may add or omit it.
"""

from __future__ import annotations

import torch

from ssmkit.ops.validate import check_tensor


def check_real_or_complex(name: str, t, ndim: int | None = None, shape=None) -> None:
    """check_tensor that also accepts complex tensors (checked through their real view)."""
    if isinstance(t, torch.Tensor) and t.is_complex():
        t = t.real
    check_tensor(name, t, ndim=ndim, shape=shape)


def check_system(A, B, C=None, names=("A", "B", "C")) -> tuple[bool, tuple[int, ...], int]:
    """Checks shapes and returns (dense, leading shape () or (H,), N).

    A (N,) or (H, N) diagonal, (N, N) or (H, N, N) dense; B (N,) or (H, N) with A's leading shape;
    C (N,) or (H, N) with the same H when both carry it.
    """
    a_name, b_name, c_name = names
    check_real_or_complex(b_name, B)
    if B.ndim not in (1, 2):
        raise ValueError(f"{b_name}: expected shape (N,) or (H, N), got {tuple(B.shape)}")
    check_real_or_complex(a_name, A)
    N = B.shape[-1]
    lead = tuple(B.shape[:-1])
    if A.ndim == B.ndim:
        dense = False
        expected = lead + (N,)
    elif A.ndim == B.ndim + 1:
        dense = True
        expected = lead + (N, N)
    else:
        raise ValueError(
            f"{a_name}: expected {_fmt(lead + (N,))} (diagonal) or {_fmt(lead + (N, N))} (dense) to match "
            f"{b_name} {_fmt(B.shape)}, got {_fmt(A.shape)}"
        )
    if tuple(A.shape) != expected:
        raise ValueError(f"{a_name}: expected shape {_fmt(expected)} to match {b_name} {_fmt(B.shape)}, "
                         f"got {_fmt(A.shape)}")
    if C is not None:
        check_real_or_complex(c_name, C)
        if C.ndim not in (1, 2) or C.shape[-1] != N or (C.ndim == 2 and lead and C.shape[0] != lead[0]):
            want = f"(N,) or (H, N) with N={N}" + (f", H={lead[0]}" if lead else "")
            raise ValueError(f"{c_name}: expected shape {want}, got {_fmt(C.shape)}")
        lead = lead or tuple(C.shape[:-1])
    return dense, lead, N


def compute_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(real, complex) compute dtypes for inputs of `dtype`: bf16/fp16 compute in float32."""
    real = torch.float32 if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.complex64) else torch.float64
    return real, (torch.complex64 if real == torch.float32 else torch.complex128)


def cast(t: torch.Tensor | None, real: torch.dtype, cplx: torch.dtype) -> torch.Tensor | None:
    """Casts to the compute dtype, keeping complex tensors complex."""
    if t is None:
        return None
    return t.to(cplx) if t.is_complex() else t.to(real)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
