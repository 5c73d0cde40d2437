"""Greedy decoding's argmax as packed int64 keys, so that it can be folded into the LM head's launch and fed back
in one more: the spec (reference.py), the keys' layout and the feedback with an `impl=` argument.

A key buffer (batch,) int64 holds EMPTY_KEY before a step; the LM head (norm_linear's `argmax=`, in the one-row
GEMV's epilogue on CUDA, else fold_argmax_keys) leaves each row's largest key, whose index is torch.argmax's
first maximal index of the row's logits (rows without NaN; reference.argmax_keys says how NaN ranks);
feed_back_keys turns the keys into the next step's tokens and sets them back to EMPTY_KEY.
"""

from __future__ import annotations

import torch

from ssmkit.ops.dispatch import pick_impl
from ssmkit.ops.argmax_keys.reference import (EMPTY_KEY, argmax_keys, feed_back_keys_ref, fold_argmax_keys,
                                              key_index)
from ssmkit.ops.validate import check_same_device

__all__ = ["EMPTY_KEY", "argmax_keys", "key_index", "fold_argmax_keys", "feed_back_keys", "feed_back_keys_ref",
           "check_key_buffer"]


def check_key_buffer(name: str, keys, rows: int, device: torch.device) -> None:
    """keys must be an int64 tensor of shape (rows,) on device, contiguous (the kernels index it by row)."""
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (rows,):
        got = (f"{keys.dtype} of shape {tuple(keys.shape)}" if isinstance(keys, torch.Tensor)
               else type(keys).__name__)
        raise ValueError(f"{name}: expected an int64 tensor of shape ({rows},) (one key per row), got {got}")
    if keys.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {keys.device}")
    if not keys.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {keys.stride()}")


def feed_back_keys(keys: torch.Tensor, tokens: torch.Tensor, history: torch.Tensor, index: torch.Tensor, *,
                   impl: str = "auto") -> None:
    """The greedy step's feedback, in place and without a host read (a CUDA graph can hold it).

    Args:
        keys: (batch,) int64, each row's largest key (set back to EMPTY_KEY). tokens: (batch,) int64, set to the
            keys' indices (the next step's input). history: (batch, columns) int64 with unit column stride; column
            index[0] is set to them. index: (1,) int64, advanced by one. impl: "auto" | "reference" | "triton".
    """
    if not isinstance(keys, torch.Tensor) or keys.ndim != 1:
        got = f"shape {tuple(keys.shape)}" if isinstance(keys, torch.Tensor) else type(keys).__name__
        raise ValueError(f"keys: expected an int64 tensor of shape (batch,), got {got}")
    batch, device = keys.shape[0], keys.device
    check_key_buffer("keys", keys, batch, device)
    check_key_buffer("tokens", tokens, batch, device)
    check_key_buffer("index", index, 1, device)
    if (not isinstance(history, torch.Tensor) or history.dtype != torch.int64 or history.ndim != 2
            or history.shape[0] != batch or history.stride(1) != 1):
        got = (f"{history.dtype} of shape {tuple(history.shape)}, strides {history.stride()}"
               if isinstance(history, torch.Tensor) else type(history).__name__)
        raise ValueError(f"history: expected an int64 tensor ({batch}, columns) with unit column stride, got {got}")
    check_same_device(keys=keys, history=history)
    pick_impl("ssmkit.ops.argmax_keys", "feed_back_keys", impl, device, feed_back_keys_ref)(
        keys, tokens, history, index)
