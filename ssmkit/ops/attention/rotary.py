"""Rotary position embedding (RoPE, Su et al. 2021) in the rotate-half (GPT-NeoX / Llama) convention.

Channel i of the rotated block pairs with channel i + rotary_dim/2 (not with its neighbour, as the interleaved
form of the paper does); the frequencies are base^(-2i/rotary_dim), as transformers' default RoPE.
"""

from __future__ import annotations

import torch

from ssmkit.ops.validate import check_tensor


def rotary_cos_sin(
    positions: torch.Tensor,
    headdim: int,
    base: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for the given positions.

    Args:
        positions: int tensor (seqlen,) or (batch, seqlen) of absolute positions.
        headdim: the head size; rotary_dim (even, <= headdim, default headdim) channels get rotated, as
            transformers' partial_rotary_factor * head_dim.
        dtype, device: of the returned tables (device defaults to positions.device).
    Returns:
        cos, sin: (*positions.shape, rotary_dim). Angles are computed in float32 as transformers does
        (float64 when dtype is float64, for the float64 spec) and then cast to dtype.
    """
    rotary_dim = headdim if rotary_dim is None else rotary_dim
    if not isinstance(headdim, int) or headdim < 1:
        raise ValueError(f"headdim: expected a positive int, got {headdim!r}")
    if not isinstance(rotary_dim, int) or rotary_dim < 2 or rotary_dim % 2 or rotary_dim > headdim:
        raise ValueError(f"rotary_dim: expected an even int in [2, headdim={headdim}], got {rotary_dim!r}")
    if not isinstance(positions, torch.Tensor) or positions.ndim not in (1, 2):
        got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions: expected an int tensor (seqlen,) or (batch, seqlen), got {got}")
    device = positions.device if device is None else device
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=compute, device=device) / rotary_dim))
    freqs = positions.to(device=device, dtype=compute)[..., None] * inv_freq  # (..., rotary_dim / 2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (..., rotary_dim): both halves of a pair share an angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


_TABLES: dict = {}  # (device, dtype, headdim, rotary_dim, base) -> (2, len, rotary_dim): cos and sin
# Tables replaced by longer ones stay alive: a captured CUDA graph keeps reading the one it was captured with.
_RETIRED: list = []


def rotary_table(length: int, headdim: int, base: float = 10000.0, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, rotary_dim: int | None = None,
                 build: bool = True) -> torch.Tensor | None:
    """cos and sin of positions 0 .. length - 1 stacked, (2, length, rotary_dim): `rotary_cos_sin(arange(length))`
    computed once per (device, dtype, sizes, base) and kept, grown to the next power of two when a longer one is
    asked (never freed: at most twice the longest table per key). A decode step indexes it at its position (one
    gather) instead of recomputing the angles in every attention layer (about ten small kernels per layer per
    token).

    build=False: None unless a table long enough exists (a CUDA graph being captured must not build one: its
    values would only exist once the graph replays)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    key = (device, dtype, headdim, headdim if rotary_dim is None else rotary_dim, float(base))
    table = _TABLES.get(key)
    if table is None or table.shape[1] < length:
        if not build:
            return None
        size = 1 << max(0, (length - 1).bit_length())
        table = torch.stack(rotary_cos_sin(torch.arange(size, device=device), headdim, base, dtype=dtype,
                                           device=device, rotary_dim=rotary_dim))
        if key in _TABLES:
            _RETIRED.append(_TABLES[key])
        _TABLES[key] = table
    return table[:, :length]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis: multiplication by i on each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first rotary_dim channels of every head; the rest pass through.

    Args:
        x: (batch, seqlen, nheads, headdim).
        cos, sin: (seqlen, rotary_dim) or (batch, seqlen, rotary_dim), from `rotary_cos_sin`.
    Returns:
        (batch, seqlen, nheads, headdim) in x.dtype: x_rot * cos + rotate_half(x_rot) * sin, then x_pass.
    """
    check_tensor("x", x, ndim=4)
    rotary_dim = cos.shape[-1]
    if cos.ndim not in (2, 3) or cos.shape[-2] != x.shape[1] or rotary_dim > x.shape[-1] or rotary_dim % 2:
        raise ValueError(
            f"cos: expected (seqlen={x.shape[1]}, rotary_dim) or (batch, seqlen, rotary_dim) with an even "
            f"rotary_dim <= headdim={x.shape[-1]}, got shape {tuple(cos.shape)}"
        )
    if sin.shape != cos.shape:
        raise ValueError(f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}")
    cos = cos.to(x.dtype).unsqueeze(-2)  # (..., seqlen, 1, rotary_dim): the same angle for every head
    sin = sin.to(x.dtype).unsqueeze(-2)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
