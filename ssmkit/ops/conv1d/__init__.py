"""Depthwise causal conv1d (the short conv of Mamba / Mamba-2 mixers): full-sequence and one-step forms.

Glossary: x = the conv input (in Mamba-2, the concatenated x, B, C), width = d_conv, conv_state = the last
`width` inputs (batch, dim, width), oldest first and newest last, the layout of mamba_ssm and transformers caches.
A GPU module `ssmkit.ops.conv1d.triton`, when present, provides `causal_conv1d_triton` and
`causal_conv1d_step_triton` with the arguments of the `_ref` functions; `impl="auto"` prefers it on CUDA.
"""

from __future__ import annotations


import torch

from ssmkit.ops.conv1d.reference import causal_conv1d_ref
from ssmkit.ops.conv1d.step import ConvStep, causal_conv1d_step_ref
from ssmkit.ops.dispatch import pick_impl
from ssmkit.ops.validate import check_same_device, check_tensor

__all__ = ["ConvStep", "causal_conv1d", "causal_conv1d_step", "causal_conv1d_ref", "causal_conv1d_step_ref"]

IMPLS = ("auto", "reference", "triton")
ACTIVATIONS = (None, "silu")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
):
    """Depthwise causal conv: out[t, d] = bias[d] + sum_k weight[d, k] * x[t - (width - 1) + k, d].

    Args:
        x: (batch, seqlen, dim).
        weight: (dim, width). bias: (dim,) or None. activation: None or "silu".
        initial_state: conv state (batch, dim, width), oldest input first; its last width-1 columns are the
            inputs that precede x. With cu_seqlens: one state per sequence, (nseq, dim, width).
        return_final_state: also return the conv state after the sequence(s), same layout as initial_state.
        cu_seqlens: (nseq + 1,) int32/int64, 0 = cu_seqlens[0] < ... < cu_seqlens[-1] = seqlen; packs nseq
            sequences into a batch of 1, each convolved as if zero-padded (or state-padded) on its left.
        impl: "auto" | "reference" | "triton".
    Returns:
        out (batch, seqlen, dim) in x.dtype; or (out, final_state) when return_final_state.
    """
    _check_conv_args(x, weight, bias, activation, initial_state, cu_seqlens)
    fn = _pick("causal_conv1d", impl, x.device)
    return fn(x, weight, bias, activation, initial_state, return_final_state, cu_seqlens)


def causal_conv1d_step(
    conv_state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """One decode step: rolls conv_state (batch, dim, width) left by one in place, writes x (batch, dim) as the
    newest input and returns the conv output (batch, dim) for it. Equal to `causal_conv1d` token by token."""
    check_tensor("conv_state", conv_state, ndim=3)
    batch, dim, width = conv_state.shape
    check_tensor("x", x, shape=(batch, dim))
    check_tensor("weight", weight, shape=(dim, None))
    if weight.shape[1] != width:
        raise ValueError(f"weight: expected width {width} (conv_state.shape[-1]), got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,))
    _check_activation(activation)
    _check_floating(conv_state=conv_state, x=x, weight=weight, bias=bias)
    check_same_device(conv_state=conv_state, x=x, weight=weight, bias=bias)
    fn = _pick("causal_conv1d_step", impl, x.device)
    return fn(conv_state, x, weight, bias, activation)


def _check_conv_args(x, weight, bias, activation, initial_state, cu_seqlens) -> None:
    check_tensor("x", x, ndim=3)
    batch, seqlen, dim = x.shape
    check_tensor("weight", weight, ndim=2)
    if weight.shape[0] != dim:
        raise ValueError(f"weight: expected shape ({dim}, width) with dim = x.shape[-1], got {tuple(weight.shape)}")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight: expected width >= 1, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,))
    _check_activation(activation)
    _check_floating(x=x, weight=weight, bias=bias, initial_state=initial_state)
    check_same_device(x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens)
    nstates = batch
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1)
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens: expected dtype int32 or int64, got {cu_seqlens.dtype}")
        if batch != 1:
            raise ValueError(f"cu_seqlens: packed sequences need x with batch 1, got x.shape {tuple(x.shape)}")
        bounds = cu_seqlens.tolist()
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != seqlen:
            raise ValueError(f"cu_seqlens: expected to start at 0 and end at seqlen={seqlen}, got {bounds}")
        if any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
            raise ValueError(f"cu_seqlens: expected strictly increasing offsets, got {bounds}")
        nstates = len(bounds) - 1
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(nstates, dim, width))


def _check_floating(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {list(ACTIVATIONS)}, got {activation!r}")


def _pick(name: str, impl: str, device: torch.device):
    ref = causal_conv1d_ref if name == "causal_conv1d" else causal_conv1d_step_ref
    return pick_impl("ssmkit.ops.conv1d", name, impl, device, ref, IMPLS)

