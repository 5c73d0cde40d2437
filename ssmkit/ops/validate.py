"""Input checks shared by the public operator entry points.

Each check raises ValueError naming the argument, what was expected and what was given.
Internal helpers trust their callers; only public entry points call these.
"""

from __future__ import annotations

from typing import Sequence

import torch


def check_tensor(name: str, t, ndim: int | None = None, shape: Sequence[int | None] | None = None) -> None:
    """`shape` entries of None match any size; `ndim` is implied by `shape` when given."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.ndim != ndim:
        want = f"shape {_fmt(shape)}" if shape is not None else f"{ndim} dims"
        raise ValueError(f"{name}: expected {want} ({ndim} dims), got shape {tuple(t.shape)}")
    if shape is not None:
        for size, want in zip(t.shape, shape):
            if want is not None and size != want:
                raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_bool_mask(name: str, mask, shape: tuple[int, ...]) -> None:
    """mask must be a bool tensor of exactly `shape` (attention's key masks)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = getattr(mask, "dtype", type(mask).__name__)
        raise ValueError(f"{name}: expected a bool tensor of shape {shape}, got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")


def check_position(name: str, position, batch: int) -> None:
    """A decode position: an int64 tensor of shape (1,) (every row) or (batch,) (one per row). Its values are
    not read: that would synchronize the host with the device (and break CUDA graph capture)."""
    if (not isinstance(position, torch.Tensor) or position.dtype != torch.int64 or position.ndim != 1
            or position.shape[0] not in (1, batch)):
        got = (f"{position.dtype} shape {tuple(position.shape)}" if isinstance(position, torch.Tensor)
               else type(position).__name__)
        raise ValueError(f"{name}: expected an int64 tensor of shape (1,) or ({batch},), got {got}")


def check_same_device(**tensors) -> None:
    """All non-None tensors must live on one device."""
    devices = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_negative(name: str, t: torch.Tensor) -> None:
    """A continuous-time decay must be strictly negative for the SSM to be stable."""
    if not bool((t < 0).all()):
        worst = t.max().item()
        raise ValueError(f"{name}: expected all entries < 0 (a stable decay), got max {worst:g}")


def check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")


def check_impl(impl: str, allowed: Sequence[str]) -> None:
    if impl not in allowed:
        raise ValueError(f"impl: expected one of {list(allowed)}, got {impl!r}")


def _fmt(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
