"""Shared pieces of the Triton SSD tests: realistic inputs, the float64 reference with gradients, and the
checks that run under TRITON_INTERPRET=1 (in a child process: triton.jit reads the variable when triton and the
kernels are imported, so it must be set before either, e.g. `TRITON_INTERPRET=1 python -m tests.ops.ssd.triton_cases`).

Each `case_*` function raises AssertionError on a mismatch; `main` runs the named ones and prints one JSON line each.
"""

from __future__ import annotations

import json
import math
import sys
import traceback

import torch

from ssmkit.ops.ssd import ssd
from ssmkit.ops.ssd.reference import ssd_recurrent
from ssmkit.ops.ssd.step import ssd_step_reference
from tests.compare import assert_close

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def patch_interpreter_scalar_index():
    """triton 3.6's interpreter keeps scalars as 1-element arrays and int()s them for range(); NumPy >= 2.4
    refuses int() of a 1-D array, so loops with run-time bounds need .item()-style indexing."""
    import numpy as np
    from triton.runtime import interpreter

    patch_lang_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, dtype=torch.float32, device="cpu", *, D2=False,
                z=True, init=True, bias=True, nseq=None, seed=0):
    """Realistic Mamba-2 ranges: A = -exp(U(0, log 16)), dt = softplus(N(0, 0.5) + softplus^-1(U-log(1e-3, 0.1)))."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    nseq = batch if nseq is None else nseq
    out = dict(
        x=rnd(batch, seqlen, nheads, headdim).to(dtype),
        dt=(0.5 * rnd(batch, seqlen, nheads)).to(dtype),
        A=-torch.exp(torch.rand(nheads, generator=g) * math.log(16.0)),
        B=rnd(batch, seqlen, ngroups, dstate).to(dtype),
        C=rnd(batch, seqlen, ngroups, dstate).to(dtype),
        D=rnd(nheads, headdim) if D2 else rnd(nheads),
        z=rnd(batch, seqlen, nheads, headdim).to(dtype) if z else None,
        dt_bias=torch.log(torch.expm1(torch.exp(torch.rand(nheads, generator=g) * 4.6 - 6.9))) if bias else None,
        initial_state=rnd(nseq, nheads, headdim, dstate) if init else None,
    )
    return {k: (v.to(device) if v is not None else None) for k, v in out.items()}


def reference(inp, cu_seqlens=None, dt_limit=None, dout=None, dfinal=None, oracle=ssd_recurrent):
    """Float64 outputs, final state and (with dout) every gradient, through the recurrent spec."""
    leaves = {k: (v.detach().double().requires_grad_(dout is not None) if v is not None else None)
              for k, v in inp.items()}
    y, final = oracle(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"], z=leaves["z"],
                      dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=dt_limit,
                      initial_state=leaves["initial_state"], cu_seqlens=cu_seqlens)
    grads = {}
    if dout is not None:
        loss = (y * dout.double()).sum() + (final * dfinal.double()).sum()
        loss.backward()
        grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), final.detach(), grads


def run_triton(mod, inp, cu_seqlens=None, dt_limit=None, dout=None, dfinal=None, chunk_size=16):
    leaves = {k: (v.detach().clone().requires_grad_(dout is not None) if v is not None else None)
              for k, v in inp.items()}
    y, final = mod.ssd_triton(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                              z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=dt_limit,
                              initial_state=leaves["initial_state"], cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    grads = {}
    if dout is not None:
        ((y.float() * dout.float()).sum() + (final * dfinal).sum()).backward()
        grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), final.detach(), grads


def check_all(y, final, grads, ref, dtype):
    y_ref, final_ref, grads_ref = ref
    assert_close(y, y_ref, dtype, name="y")
    assert_close(final, final_ref, dtype, name="final_state")
    for name in GRAD_NAMES:
        if name in grads_ref:
            assert_close(grads[name], grads_ref[name], dtype, grad=True, name=f"d{name}")


CASES = {
    # name: (batch, seqlen, nheads, headdim, ngroups, dstate, extras)
    "odd_length": (2, 37, 2, 16, 1, 16, dict()),
    "groups_headdim24_dstate20_D2_no_z": (1, 45, 4, 24, 2, 20, dict(D2=True, z=False, init=False)),
    "groups_equal_heads_no_bias": (2, 16, 2, 16, 2, 16, dict(bias=False)),
    "length_one": (1, 1, 2, 16, 1, 16, dict()),
}


def case_shapes(mod):
    """Outputs, final states and all nine gradients vs the float64 recurrence, for each shape in CASES."""
    for name, (*shape, extras) in CASES.items():
        inp = make_inputs(*shape, **extras)
        dout = torch.randn_like(inp["x"])
        dfinal = torch.randn(shape[0], shape[2], shape[3], shape[5])
        out = run_triton(mod, inp, dout=dout, dfinal=dfinal)
        try:
            check_all(*out, reference(inp, dout=dout, dfinal=dfinal), torch.float32)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def case_varlen(mod):
    """Packed sequences (one empty) reset the state at each boundary, gradients included."""
    cu = torch.tensor([0, 5, 5, 21, 40, 70], dtype=torch.int32)
    inp = make_inputs(1, 70, 2, 16, 1, 16, nseq=5, seed=1)
    dout, dfinal = torch.randn_like(inp["x"]), torch.randn(5, 2, 16, 16)
    out = run_triton(mod, inp, cu_seqlens=cu, dout=dout, dfinal=dfinal)
    check_all(*out, reference(inp, cu_seqlens=cu, dout=dout, dfinal=dfinal), torch.float32)


def check_segment_states(inp, plan, segst, seglog, dt_limit=None):
    """The segment pre-pass's output for each segment but the last: its own end state from a zero start (the
    float64 recurrence over the segment's rows alone) and its total log-decay (sum of dt A over those rows)."""
    from ssmkit.ops.ssd.pointwise import effective_dt

    rows = plan.Q * plan.seg_chunks
    last = math.ceil(math.ceil(plan.maxlen / plan.Q) / plan.seg_chunks) - 1
    assert last >= 1 and segst is not None, plan
    a = effective_dt(inp["dt"].double(), inp["dt_bias"].double(), True, dt_limit) * inp["A"].double()
    for m in range(last):
        part = {k: (v[:, m * rows:(m + 1) * rows] if k in ("x", "dt", "B", "C", "z") else v)
                for k, v in inp.items() if k != "initial_state"}
        _, own, _ = reference(dict(part, initial_state=None), dt_limit=dt_limit)
        assert_close(segst[:, m], own, torch.float32, name=f"segment {m} end state {plan}")
        assert_close(seglog[:, m], a[:, m * rows:(m + 1) * rows].sum(1), torch.float32,
                     name=f"segment {m} log-decay {plan}")


def case_segments(mod):
    """Cutting a sequence into segments (pre-pass + per-segment combine) gives the same function, dt_limit on; the
    pre-pass's own segment states and log-decays match the recurrence over each segment alone."""
    from ssmkit.ops.ssd.triton.bwd import ssd_bwd
    from ssmkit.ops.ssd.triton.fwd import ssd_fwd

    inp = make_inputs(1, 70, 2, 16, 1, 16, seed=2)
    args = [inp[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    limit = (0.01, 0.05)
    dout, dfinal = torch.randn_like(inp["x"]), torch.randn(1, 2, 16, 16)
    y_ref, final_ref, grads_ref = reference(inp, dt_limit=limit, dout=dout, dfinal=dfinal)
    for seg_chunks in (1, 2, 3, 100):
        y, final, plan, segst, seglog = ssd_fwd(*args, True, limit, inp["initial_state"], None, 16,
                                                seg_chunks=seg_chunks)
        assert plan.nseg == math.ceil(5 / min(seg_chunks, 5)), plan
        if plan.nseg > 1:
            check_segment_states(inp, plan, segst, seglog, dt_limit=limit)
        assert_close(y, y_ref, torch.float32, name=f"y seg_chunks={seg_chunks}")
        assert_close(final, final_ref, torch.float32, name=f"final seg_chunks={seg_chunks}")
        grads = ssd_bwd(dout, dfinal, *args, True, limit, inp["initial_state"], None, plan, segst, seglog)
        for name, g in zip(GRAD_NAMES, grads):
            assert_close(g, grads_ref[name], torch.float32, grad=True, name=f"d{name} seg_chunks={seg_chunks}")


def case_deterministic_partials(mod):
    """Under torch.use_deterministic_algorithms(True) dB and dC come from per-head partials summed in a fixed
    order instead of atomics into one buffer: both paths match the recurrence, at ngroups 2 with 3 heads a group
    and two head-dim blocks (so both sums, over heads and over blocks, are exercised)."""
    from ssmkit.ops.ssd.triton.bwd import atomic_group_grads, ssd_bwd
    from ssmkit.ops.ssd.triton.fwd import ssd_fwd
    from ssmkit.ops.ssd.triton.plan import configs

    inp = make_inputs(2, 37, 6, 32, 2, 16, seed=9)
    args = [inp[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    dout, dfinal = torch.randn_like(inp["x"]), torch.randn(2, 6, 32, 16)
    _, _, grads_ref = reference(inp, dout=dout, dfinal=dfinal)
    y, final, plan, segst, seglog = ssd_fwd(*args, True, None, inp["initial_state"], None, 16)
    cfg = dict(configs(32, 16, "bwd")[0], BLOCK_P=16)
    runs = {}
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        try:
            assert atomic_group_grads() is not deterministic
            runs[deterministic] = ssd_bwd(dout, dfinal, *args, True, None, inp["initial_state"], None, plan, segst,
                                          seglog, config=cfg)
        finally:
            torch.use_deterministic_algorithms(False)
        for name, g in zip(GRAD_NAMES, runs[deterministic]):
            assert_close(g, grads_ref[name], torch.float32, grad=True, name=f"d{name} deterministic={deterministic}")


def case_large_dstate(mod):
    """dstate 128 and 256 (the state walked in blocks of SUB_N rows), odd length, ngroups 2, segments: y, the final
    state and the pre-pass's segment states of every forward config, and each block width of dstate, against the
    float64 recurrence."""
    from ssmkit.ops.ssd.triton.fwd import ssd_fwd
    from ssmkit.ops.ssd.triton.plan import block_n, configs

    for dstate, seed in ((128, 10), (256, 11)):
        inp = make_inputs(1, 45, 4, 16, 2, dstate, seed=seed)
        args = [inp[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
        y_ref, final_ref, _ = reference(inp)
        cfgs = configs(16, dstate, "fwd")
        cfgs += [dict(cfgs[0], SUB_N=sub) for sub in (32, 64, block_n(dstate))]
        for cfg in cfgs:
            y, final, plan, segst, seglog = ssd_fwd(*args, True, None, inp["initial_state"], None, 16, config=cfg,
                                                    seg_chunks=2)
            assert plan.nseg == 2, plan
            check_segment_states(inp, plan, segst, seglog)
            assert_close(y, y_ref, torch.float32, name=f"y dstate={dstate} {cfg}")
            assert_close(final, final_ref, torch.float32, name=f"final dstate={dstate} {cfg}")


def case_float16(mod):
    """Half-precision inputs (tensor-core operands) stay within the float16 rows of the tolerance table."""
    inp = make_inputs(2, 40, 2, 16, 1, 16, dtype=torch.float16, seed=3)
    dout = torch.randn(inp["x"].shape).half()
    dfinal = torch.randn(2, 2, 16, 16)
    out = run_triton(mod, inp, dout=dout, dfinal=dfinal)
    check_all(*out, reference(inp, dout=dout, dfinal=dfinal), torch.float16)


def case_final_state_decay_gradient(mod):
    """dA, d dt_bias and dh0 through the final state alone (dy = 0) at the float32 tolerance, float16 inputs.

    Derived tolerance: with dy = 0 these gradients only see h_T (recomputed with hi/lo split products, about
    2^-22 relative per operand), dfinal (float32) and float32 dt and decay math; the float16 inputs are exact in
    the float64 reference too, so nothing is rounded to float16 on the way and the float32 row applies (measured:
    dA 2.1e-6, d dt_bias 1.5e-5). Taking <dfinal, h_T> from the forward's single-rounded h_T instead left dA
    1.6e-4 off here, and bf16 dA 3.6e-2..2.0e-1 off in the GPU tests on an H100.
    """
    g = torch.Generator().manual_seed(3)
    inp = make_inputs(1, 70, 2, 32, 1, 32, dtype=torch.float16, seed=3)
    dout, dfinal = torch.zeros(inp["x"].shape).half(), torch.randn(1, 2, 32, 32, generator=g)
    _, _, grads = run_triton(mod, inp, dout=dout, dfinal=dfinal, chunk_size=32)
    _, _, grads_ref = reference(inp, dout=dout, dfinal=dfinal)
    for name in ("A", "dt_bias", "initial_state"):
        assert_close(grads[name], grads_ref[name], torch.float32, grad=True, name=f"d{name}")


def case_awkward_shapes(mod):
    """Hypothesis: lengths 1..40, headdim and dstate not powers of two, chunk sizes the kernel must replace."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=4, deadline=None, database=None)
    @given(seqlen=st.integers(1, 40), headdim=st.sampled_from([8, 16, 20]), dstate=st.sampled_from([4, 16, 17]),
           ngroups=st.sampled_from([1, 2]), chunk=st.sampled_from([16, 32, 50]))
    def check(seqlen, headdim, dstate, ngroups, chunk):
        inp = make_inputs(1, seqlen, 2, headdim, ngroups, dstate, seed=seqlen)
        y, final, _ = run_triton(mod, inp, chunk_size=chunk)
        y_ref, final_ref, _ = reference(inp)
        assert_close(y, y_ref, torch.float32, name="y")
        assert_close(final, final_ref, torch.float32, name="final_state")

    check()


def step_inputs(batch, nheads, headdim, ngroups, dstate, device="cpu", seed=4):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return dict(x=rnd(batch, nheads, headdim), z=rnd(batch, nheads, headdim), dt=0.5 * rnd(batch, nheads),
                A=-torch.exp(torch.rand(nheads, generator=g) * 2.7).to(device), B=rnd(batch, ngroups, dstate),
                C=rnd(batch, ngroups, dstate), D=rnd(nheads, headdim), dt_bias=0.1 * rnd(nheads))


def check_step(step_fn, state_dtype, device="cpu"):
    """In-place update of a strided state through slot indices; slots not named stay untouched. Twice: with
    contiguous inputs and A, and with A given as A_log and x, z, dt, B, C as row-strided slices of one wide
    tensor (a layer's in_proj output), both against the torch step on contiguous inputs and A."""
    nheads, headdim, dstate, ngroups, batch = 4, 16, 16, 2, 3
    inp = step_inputs(batch, nheads, headdim, ngroups, dstate, device)
    names = ("x", "z", "dt", "B", "C")
    wide = torch.cat([inp[k].reshape(batch, -1) for k in names] + [torch.zeros(batch, 5, device=device)], dim=1)
    sizes = [inp[k][0].numel() for k in names]
    strided = {k: part.view(inp[k].shape) for k, part in zip(names, wide.split(sizes + [5], dim=1))}
    assert strided["B"].stride(0) == wide.shape[1] and not strided["B"].is_contiguous()
    for variant in ("plain", "A_log + row-strided inputs"):
        base = torch.randn(6, nheads, dstate, headdim).to(device=device, dtype=state_dtype)
        state = base.transpose(-1, -2)  # (slots, nheads, headdim, dstate), dstate not innermost
        idx = torch.tensor([4, 0, 2], device=device)
        kw = dict(D=inp["D"], z=inp["z"], dt_bias=inp["dt_bias"], dt_softplus=True, dt_limit=(0.0, 1.0),
                  state_indices=idx)
        args = [inp[k] for k in ("x", "dt", "A", "B", "C")]
        expected_state = state.clone()
        y_ref = ssd_step_reference(expected_state, *args, **kw)
        before = state.clone()
        if variant == "plain":
            y = step_fn(state, *args, **kw)
        else:
            kw["z"] = strided["z"]
            y = step_fn(state, strided["x"], strided["dt"], torch.log(-inp["A"]), strided["B"], strided["C"],
                        A_is_log=True, **kw)
        assert_close(y, y_ref, torch.float32, name=f"y ({variant})")
        assert_close(state.float(), expected_state.float(), state_dtype, name=f"state ({variant})")
        assert torch.equal(state[[1, 3, 5]], before[[1, 3, 5]]), "slots not named by state_indices changed"


def case_step(mod):
    """The kernel, called through the public `ssd_step(impl="triton")`, equals the torch step, with and without
    state_prefetch."""
    from ssmkit.ops.ssd import ssd_step

    for state_dtype in (torch.float32, torch.bfloat16):
        for prefetch in (False, True):  # the state read before the PDL wait or after it
            check_step(lambda *a, **kw: ssd_step(*a, **kw, state_prefetch=prefetch, impl="triton"), state_dtype)


def case_dispatch(mod):
    """ssd(impl="triton") runs the kernels; float64 falls back to the chunked path (the step: to the torch step)
    with a warning."""
    import warnings

    inp = make_inputs(1, 20, 2, 16, 1, 16, seed=5)

    def call(t, impl):
        return ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                   dt_softplus=True, chunk_size=16, initial_state=t["initial_state"], return_final_state=True,
                   impl=impl)

    inp64 = {k: v.double() for k, v in inp.items()}
    y_ref, final_ref = call(inp64, "reference")
    y, final = call(inp, "triton")
    assert_close(y, y_ref, torch.float32, name="y")
    assert_close(final, final_ref, torch.float32, name="final_state")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y64, _ = call(inp64, "triton")
    assert any("chunked path" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert_close(y64, y_ref, torch.float64, name="y float64 fallback")
    check_step_fallback_for_float64()


def check_step_fallback_for_float64():
    """ssd_step(impl="triton") with a float64 state runs the torch step (bit for bit) and warns."""
    import warnings

    from ssmkit.ops.ssd import ssd_step

    inp = {k: v.double() for k, v in step_inputs(2, 4, 16, 2, 16, seed=6).items()}
    args = [inp[k] for k in ("x", "dt", "A", "B", "C")]
    kw = dict(D=inp["D"], z=inp["z"], dt_bias=inp["dt_bias"], dt_softplus=True)
    state = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    expected = state.clone()
    y_ref = ssd_step_reference(expected, *args, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = ssd_step(state, *args, **kw, impl="triton")
    assert any("torch step" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert torch.equal(y, y_ref) and torch.equal(state, expected)


def main(names):
    patch_interpreter_scalar_index()
    import ssmkit.ops.ssd.triton as mod

    for name in names:
        # The cases draw dout and dfinal from torch's global generator: seeded, so no result depends on the draw
        # (unseeded, about one run in tens drew a dout whose dA nearly cancels, 1.6e-4 relative vs the 5e-5 bound).
        torch.manual_seed(0)
        try:
            globals()[f"case_{name}"](mod)
            result = dict(name=name, ok=True, message="")
        except Exception as e:  # reported to the parent test, which fails with the message
            result = dict(name=name, ok=False, message=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
