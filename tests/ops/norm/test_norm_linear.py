"""norm_linear: an RMSNorm (gated and grouped, or after a residual add, or plain) and the linear layer after it.
The Triton kernel against the two ops composed (the reference) and the float64 spec; the new residual bit for bit.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.norm import add_rms_norm_ref, gated_rms_norm_ref, norm_linear
from tests.compare import assert_close
from tests.ops.selective_scan.test_triton import interpreted_main, interpreter_cases_test

INTERPRETER_CASES = ("gated", "residual_and_plain", "awkward_shapes", "launch_shapes", "linear_without_norm",
                     "float32_norm_into_half_weight", "stacked_weights")


def make(rows, dim, n, dtype, *, gated=False, groups=1, residual=None, seed=0, device="cpu"):
    """Inputs of one call: x (rows, dim), z or None, norm weight, projection (n, dim), residual or None."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device=device, dtype=dtype)  # noqa: E731
    kw = dict(x=rnd(rows, dim), norm_weight=(1 + 0.3 * torch.randn(dim, generator=g)).to(device=device, dtype=dtype),
              weight=rnd(n, dim, scale=dim ** -0.5))
    if gated:
        kw.update(z=rnd(rows, dim), group_size=dim // groups)
    if residual is not None:
        kw.update(residual=None if residual == "none" else rnd(rows, dim, scale=3.0).float(),
                  residual_dtype=torch.float32)
    return kw


def spec64(kw) -> torch.Tensor:
    """float64: the norm's float64 reference on the same rounded stream, then the projection."""
    x, w = kw["x"].double(), kw["norm_weight"].double()
    if "residual_dtype" in kw:
        r = x if kw["residual"] is None else kw["residual"].double() + x
        h = r.to(kw["residual_dtype"]).to(kw["x"].dtype).double()
        normed = gated_rms_norm_ref(h, None, w, 1e-5)
    else:
        z = kw.get("z")
        normed = gated_rms_norm_ref(x, None if z is None else z.double(), w, 1e-5, kw.get("group_size"))
    return F.linear(normed, kw["weight"].double())


def check(kw):
    out, res = norm_linear(**kw, eps=1e-5, impl="triton")
    out_ref, res_ref = norm_linear(**kw, eps=1e-5, impl="reference")
    assert out.dtype == out_ref.dtype == kw["weight"].dtype and out.shape == out_ref.shape
    assert_close(out, out_ref, out.dtype, name="out vs the composed ops")
    assert_close(out, spec64(kw), out.dtype, name="out vs float64")
    if res_ref is None:
        assert res is None
    else:
        assert torch.equal(res, res_ref), "new residual"


# ---------------------------------------------------------------- interpreter cases (child process)

def case_gated():
    """Mamba-2's output norm + out_proj: one group and several (padded to a power of two), 1..16 rows."""
    for i, (rows, dim, n, groups, dtype) in enumerate([(1, 256, 48, 1, torch.float16), (3, 192, 40, 2, torch.float16),
                                                       (16, 96, 33, 3, torch.float32), (2, 160, 16, 4, torch.float16)]):
        try:
            check(make(rows, dim, n, dtype, gated=True, groups=groups, seed=i))
        except AssertionError as e:
            raise AssertionError(f"rows={rows} dim={dim} n={n} groups={groups} {dtype}: {e}") from None


def case_residual_and_plain():
    """A block's pre-norm after its residual add (a residual, or none yet) + in_proj, and a plain norm."""
    for i, (residual, dtype) in enumerate([("tensor", torch.float16), ("none", torch.float16),
                                           ("tensor", torch.float32), (None, torch.float16)]):
        try:
            check(make(4, 200, 70, dtype, residual=residual, seed=10 + i))
        except AssertionError as e:
            raise AssertionError(f"residual={residual} {dtype}: {e}") from None


def case_awkward_shapes():
    """Hypothesis: rows 1..16, widths off the 128-channel block, output features off the output block."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=6, deadline=None, database=None)
    @given(rows=st.integers(1, 16), dim=st.sampled_from([8, 100, 130, 257]), n=st.sampled_from([1, 17, 64]),
           form=st.sampled_from(["gated", "residual", "plain"]))
    def one(rows, dim, n, form):
        kw = make(rows, dim, n, torch.float16, gated=form == "gated", residual="tensor" if form == "residual"
                  else None, seed=rows * dim)
        check(kw)

    one()


def case_launch_shapes():
    """Every inner product and block shape the sweep may pick: GEMV for 1 and 3 rows, tensor cores with wide
    blocks; output features off every block size. float16 and float32 only: triton 3.6's interpreter rounds
    bfloat16 products and dots differently from a GPU (the GPU tests cover bfloat16)."""
    import ssmkit.ops.norm.triton.linear as kernel

    picked = kernel.pick_config
    try:
        for cfg in (kernel.Config(4, 256, False, 4, 1), kernel.Config(8, 512, False, 8, 3),
                    kernel.Config(64, 256, True, 4, 3), kernel.Config(4, 0, False, 4, 1),
                    kernel.Config(16, 0, False, 8, 1), kernel.Config(4, 0, False, 4, 1, 2),
                    kernel.Config(2, 0, False, 8, 1, 3)):
            kernel.pick_config = lambda m, k, n, norm=True, cfg=cfg: cfg
            for rows in ((1, 3) if not cfg.use_dot else (2,)):
                for kw in (make(rows, 300, 70, torch.float16, gated=True, groups=3, seed=rows),
                           make(rows, 96, 37, torch.float16, residual="tensor", seed=rows),
                           make(rows, 64, 9, torch.float32, seed=rows)):
                    try:
                        check(kw)
                    except AssertionError as e:
                        raise AssertionError(f"{cfg}, rows {rows}, {kw['x'].dtype}: {e}") from None
    finally:
        kernel.pick_config = picked


def case_linear_without_norm():
    """The kernel without a norm (linear_fwd): x @ weight^T and with a gate (x * silu(gate)) @ weight^T, against
    float64, GEMV blocks of a few
    channels, the whole row in one pass and a persistent grid walking several blocks, widths and output features
    off every block."""
    from ssmkit.ops.norm.triton.linear import Config, linear_fwd

    for i, (rows, dim, n, cfg) in enumerate([(1, 300, 70, Config(4, 0, False, 4, 1)),
                                             (1, 96, 37, Config(8, 64, False, 4, 1)),
                                             (3, 130, 17, Config(2, 0, False, 8, 1)),
                                             (5, 64, 40, Config(32, 32, True, 4, 1)),
                                             (1, 200, 45, Config(4, 0, False, 4, 1, 3))]):
        kw = make(rows, dim, n, torch.float16, gated=True, seed=20 + i)
        x, w, gate = kw["x"].double(), kw["weight"].double(), kw["z"].double()
        for got, want, name in ((linear_fwd(kw["x"], kw["weight"], cfg), F.linear(x, w), "x @ w^T"),
                                (linear_fwd(kw["x"], kw["weight"], cfg, gate=kw["z"]),
                                 F.linear(F.silu(gate) * x, w), "(x * silu(gate)) @ w^T")):
            assert got.dtype == torch.float16 and got.shape == (rows, n)
            try:
                assert_close(got, want, got.dtype, name=name)
            except AssertionError as e:
                raise AssertionError(f"rows={rows} dim={dim} n={n} {cfg}: {e}") from None


def case_float32_norm_into_half_weight():
    """A model's final norm into its LM head: the stream and the norm in float32, the norm weight and the head in
    float16 (the norm's float32 output cast to the head's dtype), against the composed ops and float64."""
    for rows, dim, n in ((1, 96, 300), (2, 200, 33)):
        kw = make(rows, dim, n, torch.float16, residual="tensor", seed=dim)
        kw["norm_dtype"] = torch.float32
        out, res = norm_linear(**kw, eps=1e-5, impl="triton")
        out_ref, res_ref = norm_linear(**kw, eps=1e-5, impl="reference")
        assert out.dtype == out_ref.dtype == torch.float16 and torch.equal(res, res_ref)
        r = kw["residual"].double() + kw["x"].double()
        want = F.linear(gated_rms_norm_ref(r, None, kw["norm_weight"].double(), 1e-5), kw["weight"].double())
        assert_close(out, out_ref, torch.float16, name="out vs the composed ops")
        assert_close(out, want, torch.float16, name="out vs float64")


def case_stacked_weights():
    """Two and three weights in one launch (q, k, v; gate, up): their outputs side by side, each block of output
    features straddling a boundary between weights somewhere (sizes off the block), persistent and not."""
    import ssmkit.ops.norm.triton.linear as kernel

    picked = kernel.pick_config
    try:
        for cfg in (kernel.Config(4, 0, False, 4, 1, 2), kernel.Config(2, 0, False, 4, 1),
                    kernel.Config(16, 0, False, 8, 1, 1)):
            kernel.pick_config = lambda m, k, n, norm=True, cfg=cfg: cfg
            for sizes in ((37, 13, 13), (30, 45)):
                kw = make(1, 96, sum(sizes), torch.float16, residual="tensor", seed=len(sizes) + cfg.block_n)
                full = kw["weight"]
                parts = tuple(p.clone() for p in full.split(sizes))
                out, res = norm_linear(**dict(kw, weight=parts), eps=1e-5, impl="triton")
                out_ref, res_ref = norm_linear(**dict(kw, weight=parts), eps=1e-5, impl="reference")
                try:
                    assert out.shape == (1, sum(sizes)) and torch.equal(res, res_ref)
                    assert_close(out, spec64(kw), out.dtype, name="stacked vs float64 of the whole weight")
                    assert_close(out, out_ref, out.dtype, name="stacked vs the composed ops")
                except AssertionError as e:
                    raise AssertionError(f"{cfg}, sizes {sizes}: {e}") from None
    finally:
        kernel.pick_config = picked


# ---------------------------------------------------------------- tests

test_interpreted_kernel_matches_the_composed_ops_and_float64 = interpreter_cases_test(
    "tests.ops.norm.test_norm_linear", INTERPRETER_CASES)


def test_reference_is_the_norm_then_the_linear_layer():
    kw = make(3, 64, 20, torch.float32, gated=True, groups=4)
    out, res = norm_linear(**kw, eps=1e-5, impl="reference")
    assert res is None and torch.equal(out, F.linear(gated_rms_norm_ref(kw["x"], kw["z"], kw["norm_weight"], 1e-5,
                                                                        16), kw["weight"]))
    kw = make(2, 32, 8, torch.bfloat16, residual="tensor")
    out, res = norm_linear(**kw, impl="auto")  # CPU: the two ops
    normed, r = add_rms_norm_ref(kw["x"], kw["residual"], kw["norm_weight"], 1e-6, torch.float32, torch.bfloat16)
    assert torch.equal(res, r) and torch.equal(out, F.linear(normed, kw["weight"]))


def test_bad_arguments_are_named():
    kw = make(2, 32, 8, torch.float32, gated=True)
    with pytest.raises(ValueError, match="weight"):
        norm_linear(kw["x"], kw["norm_weight"], kw["weight"][:, :16])
    with pytest.raises(ValueError, match="group_size"):
        norm_linear(kw["x"], kw["norm_weight"], kw["weight"], group_size=5)
    with pytest.raises(ValueError, match="residual_dtype"):
        norm_linear(kw["x"], kw["norm_weight"], kw["weight"], residual=kw["x"])
    with pytest.raises(ValueError, match="z, group_size"):
        norm_linear(kw["x"], kw["norm_weight"], kw["weight"], z=kw["z"], residual_dtype=torch.float32)
    w = kw["weight"]
    with pytest.raises(ValueError, match=r"weight\[1\]"):
        norm_linear(kw["x"], kw["norm_weight"], (w, w[:, :16]))
    with pytest.raises(ValueError, match=r"weight\[2\]: expected dtype"):
        norm_linear(kw["x"], kw["norm_weight"], (w, w, w.double()))
    with pytest.raises(ValueError, match="1 to 3 stacked weights"):
        norm_linear(kw["x"], kw["norm_weight"], (w,) * 4)


def test_stacked_weights_compose_to_the_whole_weight():
    """CPU (the composed ops): weights (q, k, v) give F.linear of their concatenation."""
    kw = make(3, 40, 30, torch.float64, residual="tensor")
    parts = kw["weight"].split([10, 5, 15])
    out, res = norm_linear(**dict(kw, weight=parts), eps=1e-5)
    want, res_want = norm_linear(**kw, eps=1e-5)
    assert torch.equal(res, res_want)
    assert_close(out, want, torch.float64, name="stacked")


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["gated", "residual", "plain"])
@pytest.mark.parametrize("rows", [1, 16])
def test_kernel_matches_the_composed_ops_on_gpu(form, rows):
    # Mamba-2 130M-like widths: d_inner 1536 -> d_model 768 (gated), d_model 768 -> in_proj 3352 (residual)
    dim, n = (1536, 768) if form == "gated" else (768, 3352)
    check(make(rows, dim, n, torch.bfloat16, gated=form == "gated",
               residual="tensor" if form == "residual" else None, device="cuda"))


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
