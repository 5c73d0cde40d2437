"""RMSNorm and the gated RMSNorm of Mamba-2, with one entry point each and an `impl=` argument.

Glossary: x = the normalized input, z = the gate (Mamba-2's z branch), group_size = d_inner // ngroups.
A GPU module `ssmkit.ops.norm.triton`, when present, provides `rms_norm_triton` and `gated_rms_norm_triton`
with the arguments of the `_ref` functions; `impl="auto"` prefers it on CUDA.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ssmkit.ops.argmax_keys import check_key_buffer, fold_argmax_keys
from ssmkit.ops.argmax_keys.reference import INDEX_MASK
from ssmkit.ops.norm.reference import add_rms_norm_ref, gated_rms_norm_ref, rms_norm_ref
from ssmkit.ops.dispatch import pick_impl
from ssmkit.ops.validate import check_impl, check_same_device, check_tensor

__all__ = ["rms_norm", "gated_rms_norm", "add_rms_norm", "norm_linear", "rms_norm_ref", "gated_rms_norm_ref",
           "add_rms_norm_ref"]

IMPLS = ("auto", "reference", "triton")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, impl: str = "auto") -> torch.Tensor:
    """RMSNorm over the last axis, exactly as transformers' LlamaRMSNorm / Mamba2RMSNorm.

    Args:
        x: (..., dim). weight: (dim,). eps: added to mean(x^2). impl: "auto" | "reference" | "triton".
    Returns:
        (..., dim): weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), statistics in float32 (float64 kept).
    """
    _check_norm_args(x, None, weight, eps)
    return _pick("rms_norm", impl, x.device)(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-6, *,
                 residual_dtype: torch.dtype | None = None, norm_dtype: torch.dtype | None = None,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add of a pre-norm block fused with the next RMSNorm (one pass instead of an add, a cast and
    a norm; a decode step spends a few microseconds on each launch).

    Args:
        x: (..., dim), the output to add (a mixer's or feed-forward's). residual: like x, or None (x starts the
            stream). weight: (dim,).
        residual_dtype: dtype of the new residual stream (default: promote(residual, x)); norm_dtype: the
            normalized input is the new residual cast to it, as `rms_norm(r.to(norm_dtype), ...)` (default
            weight.dtype). impl: "auto" | "reference" | "triton" (forward only: with autograd recording,
            the reference runs).
    Returns:
        (normed (..., dim) in promote(norm_dtype, weight.dtype), new residual (..., dim) in residual_dtype),
        exactly `add_rms_norm_ref` up to the order of the mean's sum.
    """
    _check_norm_args(x, None, weight, eps)
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape))
        check_same_device(x=x, residual=residual)
    if residual_dtype is None:
        residual_dtype = x.dtype if residual is None else torch.promote_types(residual.dtype, x.dtype)
    norm_dtype = weight.dtype if norm_dtype is None else norm_dtype
    fn = pick_impl("ssmkit.ops.norm", "add_rms_norm", impl, x.device, add_rms_norm_ref, IMPLS)
    return fn(x, residual, weight, eps, residual_dtype, norm_dtype)


# impl="auto" takes the fused norm + linear kernel on CUDA where a sweep on an H100 found it faster than the two
# launches (ssmkit.ops.norm.triton.linear.faster_than_unfused: one row, a weight of <= 6M elements); its gpu-marked
# tests passed there on 2026-11-25. False: always the two ops.
NORM_LINEAR_AUTO = True


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor | tuple, eps: float = 1e-6, *,
                z: torch.Tensor | None = None, group_size: int | None = None, residual: torch.Tensor | None = None,
                residual_dtype: torch.dtype | None = None, norm_dtype: torch.dtype | None = None,
                conv=None, argmax: torch.Tensor | None = None,
                impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """An RMSNorm and the bias-free linear layer after it, as one op for decode: F.linear(norm(h), weight).

    Args:
        x: (..., K). norm_weight: (K,). weight: (N, K), the projection (e.g. a mixer's out_proj or in_proj); or a
            tuple of up to three (N_i, K) weights of one dtype whose outputs come stacked, N = sum N_i (an
            attention layer's q, k, v after its pre-norm: one launch on the one-row GEMV path).
        z, group_size: the gated, grouped norm of Mamba-2 (h = x * silu(z), normalized per group of channels),
            as `gated_rms_norm(..., norm_before_gate=False)`.
        residual, residual_dtype: a block's pre-norm after its residual add, as `add_rms_norm` (residual may be
            None with residual_dtype given: x starts the stream); norm_dtype as there (default norm_weight's).
        conv: a ssmkit.ops.conv1d.ConvStep: the output features conv.start .. conv.start + dim - 1 (dim =
            conv.state.shape[1]) go through that conv decode step, conv.state rolled in place (x must be
            (batch, K) with conv.state's batch): a Mamba in_proj and its short conv. On the one-row GEMV path
            (CUDA) the conv runs in the same launch, else `causal_conv1d_step` runs after the projection.
        argmax: (M,) int64 (M = the rows of x), packed argmax keys (ssmkit.ops.argmax_keys) holding EMPTY_KEY
            (or earlier keys): each row's largest key of out is folded in, in place, so that key_index(argmax)
            is torch.argmax(out, -1) for rows without NaN (an LM head's greedy token). On the one-row GEMV path
            (CUDA) in the same launch's epilogue, else fold_argmax_keys after the projection. Not with conv.
        impl: "auto" (one Triton launch on CUDA where it was measured faster, see NORM_LINEAR_AUTO, else the two
            ops with impl="auto"), "triton", "reference".
    Returns:
        (out (..., N) in weight.dtype, the new residual (..., K) when residual_dtype is given, else None). The
        norm's output is cast to weight's dtype before the projection (as a model casts its final norm's float32
        output for the LM head); the kernel takes it when that output has weight's dtype or is float32.
    """
    check_impl(impl, IMPLS)
    _check_norm_args(x, z, norm_weight, eps)
    dim = x.shape[-1]
    weights = tuple(weight) if isinstance(weight, (tuple, list)) else (weight,)
    if not 1 <= len(weights) <= 3:
        raise ValueError(f"weight: expected a tensor or a tuple of 1 to 3 stacked weights, got {len(weights)}")
    for i, w in enumerate(weights):
        name = "weight" if len(weights) == 1 else f"weight[{i}]"
        check_tensor(name, w, ndim=2)
        check_tensor(name, w, shape=(None, dim))
        if w.dtype != weights[0].dtype:
            raise ValueError(f"{name}: expected dtype {weights[0].dtype} (weight[0]'s), got {w.dtype}")
    weight = weights[0]
    n_out = sum(w.shape[0] for w in weights)
    group_size = dim if group_size is None else group_size
    if not isinstance(group_size, int) or group_size < 1 or dim % group_size:
        raise ValueError(f"group_size: expected a positive divisor of dim={dim}, got {group_size!r}")
    if residual_dtype is None and residual is not None:
        raise ValueError("residual_dtype: expected the residual stream's dtype when residual is given")
    if residual_dtype is not None and (z is not None or group_size != dim):
        raise ValueError("z, group_size: the residual form is a plain RMSNorm (no gate, one group)")
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape))
    check_same_device(x=x, z=z, residual=residual, norm_weight=norm_weight, weight=weight,
                      **{f"weight[{i}]": w for i, w in enumerate(weights[1:], 1)})
    if conv is not None:
        _check_conv_epilogue(conv, x, n_out)
    if argmax is not None:
        _check_argmax_epilogue(argmax, x, n_out, conv)
    norm_dtype = norm_weight.dtype if residual_dtype is not None and norm_dtype is None else norm_dtype
    rows = x.reshape(-1, dim)
    if impl == "triton" or (impl == "auto" and NORM_LINEAR_AUTO and x.is_cuda):
        from ssmkit.ops.norm.triton.linear import MAX_ROWS, faster_than_unfused, norm_linear_fwd, one_pass, pick_config

        fused = impl == "triton" or faster_than_unfused(rows.shape[0], dim, n_out)
        config = pick_config(rows.shape[0], dim, n_out)  # picked once: norm_linear_fwd launches with it
        single_pass = one_pass(config, dim)
        takes = ((conv is None or (CONV_EPILOGUE_AUTO and single_pass)) and (argmax is None or single_pass)
                 and (len(weights) == 1 or single_pass and len({w.stride() for w in weights}) == 1))
        if fused and takes and rows.shape[0] <= MAX_ROWS and _norm_linear_kernel_takes(
                x, residual, z, norm_weight, weight, residual_dtype, norm_dtype):
            flat = [None if t is None else t.reshape(-1, dim) for t in (residual, z)]
            if conv is not None:
                conv = conv._replace(weight=conv.weight.contiguous())
            out, res = norm_linear_fwd(rows, flat[0], flat[1], norm_weight, eps, group_size, weights,
                                       residual_dtype, norm_dtype or x.dtype, config, conv=conv, argmax=argmax)
            return out.reshape(*x.shape[:-1], -1), None if res is None else res.reshape(x.shape)
        if impl == "triton" and conv is None and argmax is None and len(weights) == 1:
            raise ValueError("impl: the fused norm + linear kernel takes at most 16 rows of float32/float16/"
                             "bfloat16 whose norm output has the weight's dtype or float32; use impl='auto'")
    sub = "reference" if impl == "reference" else "auto"
    if residual_dtype is not None:
        normed, res = add_rms_norm(x, residual, norm_weight, eps, residual_dtype=residual_dtype,
                                   norm_dtype=norm_dtype, impl=sub)
    else:
        normed, res = gated_rms_norm(x, z, norm_weight, eps, group_size=group_size, impl=sub), None
    normed = normed.to(weight.dtype)
    out = F.linear(normed, weight) if len(weights) == 1 else torch.cat([F.linear(normed, w) for w in weights], -1)
    if conv is not None:
        from ssmkit.ops.conv1d import causal_conv1d_step

        piece = slice(conv.start, conv.start + conv.state.shape[1])
        out[:, piece] = causal_conv1d_step(conv.state, out[:, piece], conv.weight, conv.bias,
                                           activation=conv.activation, impl=sub)
    if argmax is not None:
        fold_argmax_keys(argmax, out.reshape(-1, n_out))
    return out, res


# impl="auto" finishes a conv decode step (norm_linear's `conv`) inside the one-row GEMV on CUDA. False: the
# projection, then the conv step's own launch.
CONV_EPILOGUE_AUTO = True


def _check_conv_epilogue(conv, x: torch.Tensor, n_out: int) -> None:
    """norm_linear's `conv`: a ConvStep whose features fit in the projection's and whose state has x's rows."""
    from ssmkit.ops.conv1d import ConvStep

    if not isinstance(conv, ConvStep):
        raise ValueError(f"conv: expected a ssmkit.ops.conv1d.ConvStep, got {type(conv).__name__}")
    check_tensor("conv.state", conv.state, ndim=3)
    batch, dim, width = conv.state.shape
    if x.ndim != 2 or x.shape[0] != batch:
        raise ValueError(f"conv: expected x of shape ({batch}, K) (conv.state's batch), got {tuple(x.shape)}")
    if not isinstance(conv.start, int) or conv.start < 0 or conv.start + dim > n_out:
        raise ValueError(f"conv.start: expected 0 <= start and start + {dim} (conv.state.shape[1]) <= "
                         f"{n_out} (weight's output features), got {conv.start!r}")
    check_tensor("conv.weight", conv.weight, shape=(dim, width))
    if conv.bias is not None:
        check_tensor("conv.bias", conv.bias, shape=(dim,))
    if conv.activation not in (None, "silu"):
        raise ValueError(f"conv.activation: expected None or 'silu', got {conv.activation!r}")
    check_same_device(x=x, conv_state=conv.state, conv_weight=conv.weight, conv_bias=conv.bias)


def _check_argmax_epilogue(argmax, x: torch.Tensor, n_out: int, conv) -> None:
    """norm_linear's `argmax`: one int64 key per row of x, on x's device; not with conv; indices below 2^32 - 1."""
    if conv is not None:
        raise ValueError("argmax: not with conv (a conv's output features are no logits)")
    check_key_buffer("argmax", argmax, x.numel() // max(x.shape[-1], 1), x.device)
    if n_out >= INDEX_MASK:
        raise ValueError(f"argmax: keys hold feature indices below {INDEX_MASK}, got {n_out} output features")


def _norm_linear_kernel_takes(x, residual, z, norm_weight, weight, residual_dtype, norm_dtype) -> bool:
    """The kernel's dtypes: 16/32-bit floats; the norm's output dtype the projection's, or float32 (the kernel
    multiplies by the norm weight in float32 and casts that product to the weight's dtype, as the ops do then)."""
    ok = (torch.float32, torch.float16, torch.bfloat16)
    dtypes = [t.dtype for t in (x, residual, z, norm_weight, weight) if t is not None]
    dtypes += [d for d in (residual_dtype, norm_dtype) if d is not None]
    normed = torch.promote_types(norm_dtype if residual_dtype is not None else x.dtype, norm_weight.dtype)
    return all(d in ok for d in dtypes) and normed in (weight.dtype, torch.float32)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-6,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Mamba-2's gated RMSNorm, exactly as transformers' MambaRMSNormGated for norm_before_gate=False.

    Args:
        x: (..., dim). z: (..., dim) gate, or None. weight: (dim,).
        group_size: channels per group, must divide dim (None = dim); groups are contiguous channel blocks.
        norm_before_gate: False: norm(x * silu(z)) * weight. True: norm(x) * weight * silu(z).
        impl: "auto" | "reference" | "triton".
    Returns:
        (..., dim).
    """
    _check_norm_args(x, z, weight, eps)
    dim = x.shape[-1]
    if group_size is not None and (
        not isinstance(group_size, int) or group_size < 1 or dim % group_size != 0
    ):
        raise ValueError(f"group_size: expected a positive divisor of dim={dim}, got {group_size!r}")
    fn = _pick("gated_rms_norm", impl, x.device)
    return fn(x, z, weight, eps, group_size, norm_before_gate)


def _check_norm_args(x, z, weight, eps) -> None:
    check_tensor("x", x)
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (..., dim) with at least 1 dim, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    check_tensor("weight", weight, shape=(x.shape[-1],))
    if z is not None:
        check_tensor("z", z, shape=tuple(x.shape))
    if not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    check_same_device(x=x, z=z, weight=weight)


def _pick(name: str, impl: str, device: torch.device):
    ref = rms_norm_ref if name == "rms_norm" else gated_rms_norm_ref
    return pick_impl("ssmkit.ops.norm", name, impl, device, ref, IMPLS)

