"""The Triton selective scan against the float64 spec: under TRITON_INTERPRET=1 on CPU (CI), and on GPU.

triton.jit reads TRITON_INTERPRET when the kernels are imported, so the interpreter checks (`case_*` below) run in
one child process started with the variable set (`python -m tests.ops.selective_scan.test_triton NAME...`), and
each test here asserts one recorded result. `run_interpreted` and `interpreted_main` are also used by the conv1d
and norm Triton tests. GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from tests.compare import assert_close

ROOT = Path(__file__).resolve().parents[3]


def run_interpreted(module: str, names, timeout: int = 600) -> dict:
    """Runs `python -m module NAME...` once with TRITON_INTERPRET=1; maps each name to (ok, message)."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", module, *names], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["name"]] = (r["ok"], r["message"])
    for name in names:
        results.setdefault(name, (False, f"no result; exit {proc.returncode}\n{proc.stderr[-3000:]}"))
    return results


def patch_interpreter_scan_by_slices():
    """triton 3.6's interpreter runs tl.associative_scan and tl.reduce with a user combine function one element
    at a time in Python (seconds for one (16, 8, 16) tile). Combine whole slices along the axis instead: every
    element sees the same combines in the same order, so the results are the same bit for bit."""
    import numpy as np
    from triton.runtime import interpreter

    def fold(op, input, keep_all):
        data = [np.moveaxis(arg.handle.data, op.axis, 0) for arg in input]
        slice_shape = data[0].shape[1:]
        acc = [op.to_tensor(d[0], arg.dtype) for d, arg in zip(data, input)]
        seen = [[a.handle.data] for a in acc]
        for i in range(1, data[0].shape[0]):
            ret = op.combine_fn.fn(*acc, *[op.to_tensor(d[i], arg.dtype) for d, arg in zip(data, input)])
            acc = list(ret) if isinstance(ret, tuple) else [ret]
            for s, a in zip(seen, acc):
                s.append(a.handle.data)
        if keep_all:
            return [np.stack([np.asarray(v).reshape(slice_shape) for v in s]) for s in seen]
        return [np.asarray(a.handle.data).reshape(slice_shape) for a in acc]

    def generic_scan(self, input):
        out = fold(self, input, keep_all=True)
        return [self.to_tensor(np.moveaxis(o, 0, self.axis), arg.dtype) for o, arg in zip(out, input)]

    slow_reduce = interpreter.ReduceOps.generic_reduce

    def generic_reduce(self, input):
        if self.axis is None:
            return slow_reduce(self, input)
        out = fold(self, input, keep_all=False)
        return [self.to_tensor(np.expand_dims(o, self.axis) if self.keep_dims else o, arg.dtype)
                for o, arg in zip(out, input)]

    interpreter.ScanOps.generic_scan = generic_scan
    interpreter.ReduceOps.generic_reduce = generic_reduce


def interpreted_main(namespace: dict, names) -> None:
    """Child side: runs namespace["case_" + name]() for each name and prints one JSON line per case. Hypothesis
    draws a fixed sequence of examples here, as tests/conftest.py has it do under CI (this process does not load
    the conftest): a random draw once gave a one-channel conv1d bias gradient that cancels to 1e-3 of its terms, whose
    float32 error (8e-7) then failed the relative check at random."""
    from hypothesis import settings

    from tests.ops.ssd.triton_cases import patch_interpreter_scalar_index

    settings.register_profile("interpreter-child", derandomize=True, database=None)
    settings.load_profile("interpreter-child")
    patch_interpreter_scalar_index()
    patch_interpreter_scan_by_slices()
    for name in names:
        torch.manual_seed(0)  # cases also draw from the global generator: no result depends on the draw
        try:
            namespace[f"case_{name}"]()
            result = dict(name=name, ok=True, message="")
        except Exception as e:  # reported to the parent test, which fails with the message
            result = dict(name=name, ok=False, message=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        print(json.dumps(result), flush=True)


def expect(results: dict, name: str) -> None:
    ok, message = results[name]
    assert ok, message


def interpreter_cases_test(module: str, names: tuple):
    """A test parametrized over the interpreter cases `names` of `module`: the first case a worker runs starts one
    child process for all of them (run_interpreted), each case then passes or fails on its own result."""
    @pytest.mark.parametrize("name", names)
    def test(name):
        expect(_interpreted_once(module, tuple(names)), name)

    return test


@functools.lru_cache(maxsize=None)
def _interpreted_once(module: str, names: tuple) -> dict:
    return run_interpreted(module, names)


# ---------------------------------------------------------------- selective scan inputs and references

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
# Inputs a Mamba layer keeps in float32 whatever the activation dtype (A from A_log, D, dt_bias, the state).
FLOAT32_PARAMS = ("A", "D", "dt_bias", "initial_state")


def scan_inputs(batch, seqlen, dim, dstate, ngroups, dtype=torch.float32, device="cpu", seed=0, **flags):
    """A dict of every selective_scan tensor input (absent ones None) plus "dt_softplus"; activations in dtype."""
    from tests.ops.selective_scan.inputs import make_inputs

    args, kwargs = make_inputs(batch, seqlen, dim, dstate, ngroups, seed=seed, **flags)
    inp = dict(zip(NAMES[:5], args), **kwargs)
    out = {k: None for k in NAMES}
    for k, v in inp.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=torch.float32 if k in FLOAT32_PARAMS else dtype)
        out[k] = v
    return out


def scan_run(fn, inp, dout=None, dfinal=None, dtype=None):
    """fn's (y, final_state, grads of every tensor input); inputs cast to dtype when given (e.g. float64)."""
    leaves = {k: (v.detach().to(dtype or v.dtype).requires_grad_(dout is not None) if isinstance(v, torch.Tensor)
                  else v) for k, v in inp.items()}
    y, final = fn(**leaves, return_final_state=True)
    grads = {}
    if dout is not None:
        ((y * dout.to(y.dtype)).sum() + (final * dfinal.to(final.dtype)).sum()).backward()
        grads = {k: leaves[k].grad for k in NAMES if leaves[k] is not None}
    return y.detach(), final.detach(), grads


def check_scan(inp, grads=True, oracle=None, seed=1):
    """Triton vs the float64 oracle (the reference loop by default): y, final state and every gradient."""
    from ssmkit.ops.selective_scan import selective_scan_reference
    from ssmkit.ops.selective_scan.triton import selective_scan_triton

    dtype = inp["x"].dtype
    dout = dfinal = None
    if grads:
        g = torch.Generator().manual_seed(seed)
        dout = torch.randn(inp["x"].shape, generator=g).to(inp["x"].device)
        dfinal = torch.randn(inp["initial_state"].shape if inp["initial_state"] is not None else
                             (inp["x"].shape[0], *inp["A"].shape), generator=g).to(inp["x"].device)
    y, final, g_tri = scan_run(selective_scan_triton, inp, dout, dfinal)
    y_ref, final_ref, g_ref = scan_run(oracle or selective_scan_reference, inp, dout, dfinal, dtype=torch.float64)
    assert y.dtype == dtype and final.dtype == torch.float32, (y.dtype, final.dtype)
    assert_close(y, y_ref, dtype, name="y")
    assert_close(final, final_ref, dtype, name="final_state")
    for name in g_ref:
        assert g_tri[name].dtype == inp[name].dtype, (name, g_tri[name].dtype)
        assert_close(g_tri[name], g_ref[name], dtype, grad=True, name=f"d{name}")


# ---------------------------------------------------------------- interpreter cases (child process)

INTERPRETER_CASES = ("shapes", "checkpoints", "loop_forward", "loop_prefetch", "segments", "backward_rows", "float16",
                     "strided_inputs", "awkward_shapes", "step", "dispatch", "softplus_fast")

SHAPES = {
    # name: (batch, seqlen, dim, dstate, ngroups, flags)
    "odd_length_two_groups": (2, 37, 8, 4, 2, dict()),
    "three_tiles_dstate16": (1, 40, 12, 16, 1, dict()),
    "group_per_channel_bare": (1, 9, 6, 3, 6, dict(D=False, z=False, dt_bias=False, initial_state=False)),
    "length_one": (2, 1, 4, 4, 1, dict()),
    "no_softplus": (1, 20, 4, 8, 1, dict(dt_softplus=False)),
}


def case_shapes():
    """y, final state and all nine gradients vs the float64 loop, for each shape in SHAPES."""
    for name, (*shape, flags) in SHAPES.items():
        try:
            check_scan(scan_inputs(*shape, seed=shape[1], **flags))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def case_checkpoints():
    """Several checkpoint intervals (the last one partial), several tiles per interval, several channel blocks
    per group: the backward's recomputation gives the same gradients as one walk."""
    from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    inp = scan_inputs(1, 37, 16, 5, 2, seed=3)
    dout, dfinal = torch.randn(1, 37, 16), torch.randn(1, 16, 5)
    y_ref, final_ref, g_ref = scan_run(_reference(), inp, dout, dfinal, dtype=torch.float64)
    args = [inp[k] for k in NAMES[:8]]
    for rows in (8, 24):
        cfg = dict(BLOCK_T=8, BLOCK_D=4, num_warps=4)
        y, final, ckpt = selective_scan_fwd(*args, True, inp["initial_state"], True, config=cfg, checkpoint_rows=rows)
        assert ckpt.shape[1] == -(-37 // rows)
        assert_close(y, y_ref, torch.float32, name=f"y rows={rows}")
        assert_close(final, final_ref, torch.float32, name=f"final rows={rows}")
        grads = selective_scan_bwd(dout, dfinal, *args, True, inp["initial_state"], ckpt, config=cfg,
                                   checkpoint_rows=rows)
        for name, g in zip(NAMES, grads):
            assert_close(g, g_ref[name], torch.float32, grad=True, name=f"d{name} rows={rows}")


def _check_forward_feeds_backward(name, inp, dout, dfinal, refs, fwd_config, **fwd_kw):
    """The forward at `fwd_config` (checkpoints every 8 rows) gives the reference y and final state, and the
    tile backward from its checkpoints the reference gradient of every input given."""
    from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    y_ref, final_ref, g_ref = refs
    args = [inp[k] for k in NAMES[:8]]
    y, final, ckpt = selective_scan_fwd(*args, True, inp["initial_state"], True, config=fwd_config,
                                        checkpoint_rows=8, **fwd_kw)
    assert_close(y, y_ref, torch.float32, name=f"{name} y")
    assert_close(final, final_ref, torch.float32, name=f"{name} final")
    grads = selective_scan_bwd(dout, dfinal, *args, True, inp["initial_state"], ckpt,
                               config=dict(BLOCK_T=8, BLOCK_D=4, num_warps=4), checkpoint_rows=8)
    for arg, g in zip(NAMES, grads):
        if inp.get(arg) is not None:
            assert_close(g, g_ref[arg], torch.float32, grad=True, name=f"{name} d{arg}")


def case_loop_forward():
    """The forward's row-by-row variant (LOOP): y, final state and checkpoints equal the float64 reference on
    odd shapes (a partial last tile, channel blocks wider than a group, no D/z/bias), on whole tiles only (no
    partial tile to walk with bounds) at dstate 16 (B and C read without a state clamp), and the tile-parallel
    backward, recomputing from its checkpoints, gives the reference gradients."""
    shapes = {"odd_two_groups": (2, 37, 8, 4, 2, dict()), "length_one": (1, 1, 4, 16, 1, dict()),
              "bare": (1, 9, 6, 3, 6, dict(D=False, z=False, dt_bias=False, initial_state=False)),
              "whole_tiles_dstate16": (2, 24, 8, 16, 1, dict())}
    for name, (*shape, flags) in shapes.items():
        inp = scan_inputs(*shape, seed=shape[1], **flags)
        batch, seqlen, dim, dstate, _ = shape
        dout, dfinal = torch.randn(batch, seqlen, dim), torch.randn(batch, dim, dstate)
        y_ref, final_ref, g_ref = scan_run(_reference(), inp, dout, dfinal, dtype=torch.float64)
        _check_forward_feeds_backward(name, inp, dout, dfinal, (y_ref, final_ref, g_ref),
                                      dict(BLOCK_T=8, BLOCK_D=4, num_warps=4, LOOP=True))


def case_loop_prefetch():
    """The LOOP walk that loads each tile's rows one tile ahead (PREFETCH 1: x, dt, z; 2: B and C too), at tiles of
    1, 2 and 4 rows: y, final state and, through its checkpoints, the gradients equal the float64 reference, and
    at both levels y, final state and checkpoints equal the walk without prefetch bit for bit (the same
    arithmetic in the same order), on lengths that are not a multiple of the tile (a partial last tile after the
    prefetched ones), of one row, of exactly one tile, of whole tiles only, without z (a shorter row of loads)
    and cut into segments (the segment pass prefetches too; a last segment of one row)."""
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    shapes = {  # name: (batch, seqlen, dim, dstate, ngroups, segment_rows, flags)
        "odd_length": (1, 37, 8, 4, 2, None, dict()),
        "length_one": (1, 1, 4, 16, 1, None, dict()),
        "length_four": (1, 4, 4, 16, 1, None, dict()),  # one tile of 4 rows, two of 2
        "whole_tiles_dstate16": (1, 24, 8, 16, 1, None, dict()),
        "bare": (1, 11, 6, 3, 3, None, dict(D=False, z=False, dt_bias=False, initial_state=False)),
        "segments_uneven": (2, 37, 8, 4, 2, 16, dict()),
        "segments_one_row_last": (1, 33, 4, 16, 1, 8, dict()),
    }
    for name, (*shape, seg, flags) in shapes.items():
        inp = scan_inputs(*shape, seed=shape[1] + 7, **flags)
        batch, seqlen, dim, dstate, _ = shape
        dout, dfinal = torch.randn(batch, seqlen, dim), torch.randn(batch, dim, dstate)
        refs = scan_run(_reference(), inp, dout, dfinal, dtype=torch.float64)
        args = [inp[k] for k in NAMES[:8]]
        for bt in (1, 2, 4):
            cfg = dict(BLOCK_T=bt, BLOCK_D=4, num_warps=1, LOOP=True)
            # against float64 (and the backward) at one prefetch level a tile size, both across the three
            _check_forward_feeds_backward(f"{name} t{bt}", inp, dout, dfinal, refs, dict(cfg, PREFETCH=1 + bt % 2),
                                          segment_rows=seg)
            plain = selective_scan_fwd(*args, True, inp["initial_state"], True, config=cfg, checkpoint_rows=8,
                                       segment_rows=seg)
            for prefetch in (1, 2):
                label = f"{name} t{bt} prefetch {prefetch}"
                fetched = selective_scan_fwd(*args, True, inp["initial_state"], True,
                                             config=dict(cfg, PREFETCH=prefetch), checkpoint_rows=8, segment_rows=seg)
                for part, a, b in zip(("y", "final", "checkpoints"), plain, fetched):
                    assert torch.equal(a, b), f"{label}: {part} differs from the walk without prefetch"


def case_segments():
    """The forward cut into segments (a first pass of segment end states from zero, composed by each program of
    the main pass) gives the float64 reference's y, final state and, through its checkpoints, gradients, for
    both kernel variants, a last segment shorter than the rest, a single-row last segment, and no initial
    state; a segment length that is not a multiple of the checkpoint interval is refused."""
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    variants = {"loop": dict(BLOCK_T=4, BLOCK_D=4, num_warps=1, LOOP=True), "tile": dict(BLOCK_T=4, BLOCK_D=4,
                                                                                         num_warps=1)}
    shapes = {"uneven_last": (2, 37, 8, 4, 2, 16, dict()), "one_row_last": (1, 33, 4, 16, 1, 8, dict()),
              "no_init_many": (1, 40, 6, 3, 3, 8, dict(initial_state=False, D=False))}
    for name, (*shape, seg, flags) in shapes.items():
        inp = scan_inputs(*shape, seed=shape[1] + 1, **flags)
        batch, seqlen, dim, dstate, _ = shape
        dout, dfinal = torch.randn(batch, seqlen, dim), torch.randn(batch, dim, dstate)
        y_ref, final_ref, g_ref = scan_run(_reference(), inp, dout, dfinal, dtype=torch.float64)
        for kind, cfg in variants.items():
            _check_forward_feeds_backward(f"{name} {kind}", inp, dout, dfinal, (y_ref, final_ref, g_ref), cfg,
                                          segment_rows=seg)
    args = [inp[k] for k in NAMES[:8]]
    with pytest.raises(ValueError, match="segment_rows"):
        selective_scan_fwd(*args, True, None, True, config=variants["loop"], checkpoint_rows=8, segment_rows=12)


def case_backward_rows():
    """The row-walking backward (bwd_rows.py) gives the float64 reference's gradients of every input: several
    checkpoint intervals (the last partial), tiles of 1, 2 and 4 rows, a partial last channel block, padding
    states (dstate 5 in a block of 8), no D / z / bias / initial state, no d final state."""
    from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    shapes = {"two_groups": (2, 37, 12, 5, 2, dict(), True), "length_one": (1, 1, 4, 16, 1, dict(), True),
              "bare": (1, 19, 6, 3, 3, dict(D=False, z=False, dt_bias=False, initial_state=False), False)}
    for name, (*shape, flags, with_dfinal) in shapes.items():
        inp = scan_inputs(*shape, seed=shape[1] + 5, **flags)
        batch, seqlen, dim, dstate, _ = shape
        dout = torch.randn(batch, seqlen, dim)
        dfinal = torch.randn(batch, dim, dstate) if with_dfinal else None
        ref_dfinal = dfinal if with_dfinal else torch.zeros(batch, dim, dstate)  # no d final state = zeros
        _, _, g_ref = scan_run(_reference(), inp, dout, ref_dfinal, dtype=torch.float64)
        args = [inp[k] for k in NAMES[:8]]
        _, _, ckpt = selective_scan_fwd(*args, True, inp["initial_state"], True, checkpoint_rows=8,
                                        config=dict(BLOCK_T=4, BLOCK_D=4, num_warps=1, LOOP=True))
        for bt in (1, 2, 4):
            cfg = dict(BLOCK_T=bt, BLOCK_D=4, num_warps=1, LOOP=True)
            grads = selective_scan_bwd(dout, dfinal, *args, True, inp["initial_state"], ckpt, config=cfg,
                                       checkpoint_rows=8)
            for arg, g in zip(NAMES, grads):
                if inp.get(arg) is not None:
                    assert_close(g, g_ref[arg], torch.float32, grad=True, name=f"{name} t{bt} d{arg}")


def _reference():
    from ssmkit.ops.selective_scan import selective_scan_reference

    return selective_scan_reference


def case_float16():
    """float16 activations with float32 parameters (as in a Mamba layer) stay within the float16 rows."""
    check_scan(scan_inputs(2, 33, 8, 16, 1, dtype=torch.float16, seed=4))


def case_strided_inputs():
    """x and z read in place as halves of one projection, B and C as slices of another: the same y and grads."""
    from ssmkit.ops.selective_scan.triton import selective_scan_triton

    inp = scan_inputs(2, 21, 8, 4, 1, seed=5)
    xz = torch.cat([inp["x"], inp["z"]], -1)  # (batch, seqlen, 2 dim)
    proj = torch.cat([torch.randn(2, 21, 3), inp["B"][:, :, 0], inp["C"][:, :, 0]], -1)  # (batch, seqlen, 3 + 2N)
    strided = dict(inp, x=xz[..., :8], z=xz[..., 8:], B=proj[:, :, None, 3:7], C=proj[:, :, None, 7:])
    assert not any(strided[k].is_contiguous() for k in ("x", "z", "B", "C"))
    dout, dfinal = torch.randn(2, 21, 8), torch.randn(2, 8, 4)
    y_s, final_s, g_s = scan_run(selective_scan_triton, strided, dout, dfinal)
    y_c, final_c, g_c = scan_run(selective_scan_triton, inp, dout, dfinal)
    assert torch.equal(y_s, y_c) and torch.equal(final_s, final_c)
    for name in g_c:
        assert torch.equal(g_s[name], g_c[name]), name


def case_awkward_shapes():
    """Hypothesis (forward): lengths 1..40, channel counts and dstate off the block sizes, any group count."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=6, deadline=None, database=None)
    @given(seqlen=st.integers(1, 40), dim_groups=st.sampled_from([(1, 1), (3, 1), (10, 2), (9, 3)]),
           dstate=st.sampled_from([1, 5, 16]), softplus=st.booleans())
    def run_one(seqlen, dim_groups, dstate, softplus):
        dim, ngroups = dim_groups
        check_scan(scan_inputs(1, seqlen, dim, dstate, ngroups, seed=seqlen, dt_softplus=softplus), grads=False)

    run_one()


def case_softplus_fast():
    """softplus_fast (dt' of the row-walking kernels) against float64 softplus on [-30, 30]: within 4 float32 ulp
    plus the rounding of its exponent's argument (relative 2^-24 |v| log2 e)."""
    import triton

    from tests.ops.selective_scan.pointwise_kernels import apply_softplus_fast

    v = torch.linspace(-30, 30, 120001)
    out = torch.empty_like(v)
    apply_softplus_fast[(triton.cdiv(v.numel(), 4096),)](v, out, v.numel(), BLOCK=4096)
    ref = torch.nn.functional.softplus(v.double())
    rel = ((out.double() - ref) / ref).abs()
    tol = 2.0 ** -24 * (4 + v.double().abs() * 1.4426950408889634)
    worst = int((rel / tol).argmax())
    assert (rel <= tol).all(), f"relative error {rel[worst]:.3g} at v={v[worst]:.6g} (tolerance {tol[worst]:.3g})"


def check_step(device="cpu", state_dtype=torch.float32, steps=5):
    """The step updates a strided state in place like selective_scan_step, and token by token it reproduces the
    full scan's outputs and final state."""
    from ssmkit.ops.selective_scan import selective_scan_step
    from ssmkit.ops.selective_scan.triton import selective_scan_step_triton, selective_scan_triton

    inp = scan_inputs(3, steps, 12, 8, 2, device=device, seed=6)
    storage = inp["initial_state"].transpose(1, 2).contiguous().to(state_dtype)
    state = storage.transpose(1, 2)  # (batch, dim, dstate), dstate not innermost
    expected = state.clone()
    kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)
    ys = []
    for t in range(steps):
        tok = [inp[k][:, t] for k in ("x", "dt")] + [inp["A"]] + [inp[k][:, t] for k in ("B", "C")]
        y = selective_scan_step_triton(state, *tok, z=inp["z"][:, t], **kw)
        y_ref = selective_scan_step(expected, *tok, z=inp["z"][:, t], **kw)
        # A 16-bit state is rounded after each step, so from the second step y carries that rounding too.
        assert_close(y, y_ref, torch.float32 if state_dtype == torch.float32 else state_dtype, name=f"y step {t}")
        assert_close(state.float(), expected.float(), state_dtype, name=f"state step {t}")
        ys.append(y)
    if state_dtype == torch.float32:
        full, final = selective_scan_triton(**inp, return_final_state=True)
        assert_close(torch.stack(ys, 1), full, torch.float32, name="steps vs full scan")
        assert_close(state, final, torch.float32, name="state vs final state")


def case_step():
    check_step()
    check_step(state_dtype=torch.bfloat16, steps=2)
    check_step_fused_parameterization()


def check_step_fused_parameterization(device="cpu"):
    """A given as A_log and dt as the low-rank input of dt_proj (its weight passed): the kernel computes
    A = -exp(A_log) and dt = F.linear(dt_low, W) itself and steps like the torch step given A and dt, in float32
    and in bfloat16 (where dt is rounded to bf16 as the linear layer's output is), with the state read before the
    PDL wait (state_prefetch, as the Mamba layer calls it) and after it."""
    import torch.nn.functional as F

    from ssmkit.ops.selective_scan import selective_scan_step
    from ssmkit.ops.selective_scan.triton import selective_scan_step_triton

    for (dtype, rank), prefetch in itertools.product(((torch.float32, 5), (torch.bfloat16, 48)), (False, True)):
        inp = scan_inputs(3, 1, 12, 8, 2, device=device, seed=11)
        g = torch.Generator().manual_seed(12)
        low = torch.randn(3, rank, generator=g).to(device=device, dtype=dtype)
        w = (torch.randn(12, rank, generator=g) / rank ** 0.5).to(device=device, dtype=dtype)
        tok = {k: inp[k][:, 0].to(dtype) for k in ("x", "B", "C", "z")}
        kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True, z=tok["z"])
        state, expected = inp["initial_state"].clone(), inp["initial_state"].clone()
        y = selective_scan_step_triton(state, tok["x"], low, torch.log(-inp["A"]), tok["B"], tok["C"],
                                       A_is_log=True, dt_proj_weight=w, state_prefetch=prefetch, **kw)
        y_ref = selective_scan_step(expected, tok["x"], F.linear(low, w), inp["A"], tok["B"], tok["C"], **kw,
                                    impl="reference")
        assert_close(y, y_ref, dtype, name=f"y fused parameterization {dtype} state_prefetch={prefetch}")
        # bf16: dt may round to the neighbouring bf16 value where the two sums straddle a rounding boundary
        assert_close(state, expected, dtype, name=f"state fused parameterization {dtype} state_prefetch={prefetch}")


def case_dispatch():
    """selective_scan(impl="triton") and selective_scan_step(impl="triton") run the kernels and match float64."""
    from ssmkit.ops.selective_scan import selective_scan

    inp = scan_inputs(1, 12, 4, 4, 1, seed=7)
    y = selective_scan(**inp, impl="triton")
    y_ref = selective_scan(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inp.items()},
                           impl="reference")
    assert_close(y, y_ref, torch.float32, name="y")
    # selective_scan_step(impl="triton") runs the step kernel: the same y and state as the float64 torch step
    from ssmkit.ops.selective_scan import selective_scan_step

    tok = [inp[k][:, 0] for k in ("x", "dt")] + [inp["A"]] + [inp[k][:, 0] for k in ("B", "C")]
    kw = dict(D=inp["D"], z=inp["z"][:, 0], dt_bias=inp["dt_bias"], dt_softplus=True)
    state, state64 = inp["initial_state"].clone(), inp["initial_state"].double()
    y_step = selective_scan_step(state, *tok, **kw, impl="triton")
    y_step64 = selective_scan_step(state64, *[t.double() for t in tok],
                                   **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
                                   impl="reference")
    assert_close(y_step, y_step64, torch.float32, name="step y")
    assert_close(state, state64, torch.float32, name="step state")


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.ops.selective_scan.test_triton", INTERPRETER_CASES)


def test_interpreted_scan_matches_float64_outputs_state_and_all_gradients_across_shapes(interpreted):
    expect(interpreted, "shapes")


def test_interpreted_scan_backward_recomputes_states_across_checkpoint_intervals(interpreted):
    expect(interpreted, "checkpoints")


def test_interpreted_loop_forward_matches_float64_and_feeds_the_backward(interpreted):
    expect(interpreted, "loop_forward")


def test_interpreted_prefetching_loop_forward_matches_float64_and_the_walk_without_prefetch(interpreted):
    expect(interpreted, "loop_prefetch")


def test_interpreted_segmented_forward_matches_float64_and_feeds_the_backward(interpreted):
    expect(interpreted, "segments")


def test_interpreted_row_walking_backward_matches_float64_gradients(interpreted):
    expect(interpreted, "backward_rows")


def test_interpreted_scan_float16_within_float16_tolerances(interpreted):
    expect(interpreted, "float16")


def test_interpreted_scan_reads_strided_projections_in_place(interpreted):
    expect(interpreted, "strided_inputs")


def test_interpreted_scan_forward_matches_float64_for_awkward_shapes(interpreted):
    expect(interpreted, "awkward_shapes")


def test_interpreted_scan_step_updates_strided_state_in_place_and_matches_full_scan(interpreted):
    expect(interpreted, "step")


def test_interpreted_selective_scan_dispatch_runs_triton(interpreted):
    expect(interpreted, "dispatch")


def test_interpreted_softplus_fast_matches_float64_softplus_to_float32_rounding(interpreted):
    expect(interpreted, "softplus_fast")


def _tiny_inputs():
    return scan_inputs(1, 6, 4, 2, 1, seed=8)


def test_triton_scan_falls_back_to_the_parallel_scan_for_float64_with_a_warning():
    pytest.importorskip("triton")
    from ssmkit.ops.selective_scan import selective_scan_parallel
    from ssmkit.ops.selective_scan.triton import selective_scan_triton

    inp = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in _tiny_inputs().items()}
    with pytest.warns(UserWarning, match="parallel scan"):
        y = selective_scan_triton(**inp)
    assert torch.equal(y, selective_scan_parallel(**inp))


def test_triton_scan_hands_packed_sequences_to_the_parallel_scan(monkeypatch):
    pytest.importorskip("triton")
    import ssmkit.ops.selective_scan.parallel as parallel_mod
    from ssmkit.ops.selective_scan import selective_scan
    from ssmkit.ops.selective_scan.triton import autograd

    seen = []
    original = parallel_mod.selective_scan_parallel
    monkeypatch.setattr(parallel_mod, "selective_scan_parallel", lambda *a, **kw: seen.append(kw) or original(*a, **kw))
    monkeypatch.setattr(autograd, "warn_once", lambda message: seen.append(message))
    inp = _tiny_inputs()
    cu = torch.tensor([0, 2, 6])
    inp["initial_state"] = torch.randn(2, 4, 2)
    y = selective_scan(**inp, cu_seqlens=cu, impl="triton")
    assert any(isinstance(s, str) and "cu_seqlens" in s for s in seen), seen
    assert any(isinstance(s, dict) and s.get("cu_seqlens") is cu for s in seen), seen
    assert torch.equal(y, selective_scan(**inp, cu_seqlens=cu, impl="parallel"))


def test_triton_scan_skips_the_autograd_function_when_nothing_needs_a_gradient(monkeypatch):
    """Inference calls the forward directly without checkpoints; a call that autograd records goes through the
    Function and asks the forward for checkpoints (stand-ins record which path ran; numbers are the
    interpreter cases' business)."""
    pytest.importorskip("triton")
    from ssmkit.ops.selective_scan.triton import autograd

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors pass the device check
    calls = []

    def fake_fwd(x, *args):
        calls.append(("fwd", args[-1]))
        return torch.zeros_like(x), torch.zeros(x.shape[0], x.shape[2], 2), None

    def fake_apply(x, *args):
        calls.append(("apply", args[-1]))
        return torch.zeros_like(x), torch.zeros(x.shape[0], x.shape[2], 2)

    monkeypatch.setattr(autograd, "selective_scan_fwd", fake_fwd)
    monkeypatch.setattr(autograd.SelectiveScanTritonFunction, "apply", fake_apply)
    inp = _tiny_inputs()
    with torch.no_grad():
        autograd.selective_scan_triton(**inp)
    autograd.selective_scan_triton(**inp)  # grad mode, but no input requires a gradient
    autograd.selective_scan_triton(**dict(inp, x=inp["x"].clone().requires_grad_()))
    assert calls == [("fwd", False), ("fwd", False), ("apply", True)]


def test_triton_scan_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from ssmkit.ops.selective_scan.triton import selective_scan_step_triton, selective_scan_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inp = _tiny_inputs()
    with pytest.raises(ValueError, match="^impl: 'triton' needs CUDA tensors"):
        selective_scan_triton(**inp)
    tok = [inp[k][:, 0] for k in ("x", "dt")] + [inp["A"]] + [inp[k][:, 0] for k in ("B", "C")]
    with pytest.raises(ValueError, match="^impl: 'triton' needs CUDA tensors"):
        selective_scan_step_triton(inp["initial_state"].clone(), *tok)


# ---------------------------------------------------------------- GPU

GPU_CASES = [
    # dtype, batch, seqlen, dim, dstate, ngroups, flags
    (torch.bfloat16, 2, 2048, 1536, 16, 1, dict()),  # a 130M-class Mamba layer (d_inner 1536)
    (torch.bfloat16, 1, 4099, 2048, 16, 1, dict()),  # odd length, 33 checkpoint intervals
    (torch.bfloat16, 3, 257, 100, 64, 2, dict(z=False)),
    (torch.float16, 2, 63, 768, 16, 1, dict(initial_state=False)),
    (torch.float32, 2, 515, 256, 16, 4, dict()),
    (torch.float32, 1, 1000, 64, 128, 1, dict(dt_softplus=False)),
]


def gpu_oracle(**kw):
    """The float64 parallel scan (tested against the loop in test_parallel.py): the loop is too slow on GPU."""
    from ssmkit.ops.selective_scan import selective_scan_parallel

    return selective_scan_parallel(**kw)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{str(c[0])[6:]}-b{c[1]}-L{c[2]}-d{c[3]}-n{c[4]}-g{c[5]}")
def test_triton_scan_matches_float64_outputs_state_and_gradients_on_gpu(case):
    dtype, *shape, flags = case
    check_scan(scan_inputs(*shape, dtype=dtype, device="cuda", seed=shape[1], **flags), oracle=gpu_oracle)


def _config_params():
    """(kind, config) for every config the tuner may pick at dstate 16 and 64, and the forward's LOOP configs
    it will pick from once these pass; empty without triton."""
    try:
        from ssmkit.ops.selective_scan.triton.plan import configs
    except ImportError:
        return []
    def label(cfg):
        return (f"t{cfg['BLOCK_T']}-d{cfg['BLOCK_D']}-w{cfg['num_warps']}" + ("-loop" if cfg.get("LOOP") else "")
                + (f"-pf{cfg['PREFETCH']}" if cfg.get("PREFETCH") else "")
                + (f"-r{cfg['maxnreg']}" if cfg.get("maxnreg") else ""))

    return [pytest.param(n, kind, cfg, id=f"n{n}-{kind}-{label(cfg)}")
            for n in (16, 64) for kind in ("fwd", "bwd") for cfg in configs(kind, n, 768, loop=True)]


@pytest.mark.gpu
@pytest.mark.parametrize("dstate,kind,cfg", _config_params())
def test_every_tunable_scan_config_matches_float64_on_gpu(dstate, kind, cfg):
    """Each config the tuner may pick, run explicitly (Triton has miscompiled scan-like kernels for some)."""
    from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd
    from ssmkit.ops.selective_scan.triton.plan import configs

    inp = scan_inputs(2, 700, 768, dstate, 2, dtype=torch.bfloat16, device="cuda", seed=dstate)
    dout, dfinal = torch.randn(2, 700, 768, device="cuda").bfloat16(), torch.randn(2, 768, dstate, device="cuda")
    y_ref, final_ref, g_ref = scan_run(gpu_oracle, inp, dout, dfinal, dtype=torch.float64)
    args = [inp[k] for k in NAMES[:8]]
    fwd_cfg = cfg if kind == "fwd" else configs("fwd", dstate, 768)[0]
    y, final, ckpt = selective_scan_fwd(*args, True, inp["initial_state"], True, config=fwd_cfg)
    assert_close(y, y_ref, torch.bfloat16, name=f"y {cfg}")
    assert_close(final, final_ref, torch.bfloat16, name=f"final {cfg}")
    if kind == "bwd":
        grads = selective_scan_bwd(dout, dfinal, *args, True, inp["initial_state"], ckpt, config=cfg)
        for name, g in zip(NAMES, grads):
            assert_close(g, g_ref[name], torch.bfloat16, grad=True, name=f"d{name} {cfg}")


@pytest.mark.gpu
@pytest.mark.parametrize("segment_rows", [None, 128, 1024, 4224])
def test_segmented_loop_forward_matches_float64_on_gpu(segment_rows):
    """The LOOP forward at batch 1 (where the default cuts the sequence into segments) and at forced segment
    lengths, one of them past the sequence (one segment): y, final state and the gradients its checkpoints feed."""
    from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd
    from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd

    inp = scan_inputs(1, 4099, 2048, 16, 1, dtype=torch.bfloat16, device="cuda", seed=11)
    dout, dfinal = torch.randn(1, 4099, 2048, device="cuda").bfloat16(), torch.randn(1, 2048, 16, device="cuda")
    y_ref, final_ref, g_ref = scan_run(gpu_oracle, inp, dout, dfinal, dtype=torch.float64)
    args = [inp[k] for k in NAMES[:8]]
    cfg = dict(BLOCK_T=8, BLOCK_D=32, num_warps=1, LOOP=True)
    y, final, ckpt = selective_scan_fwd(*args, True, inp["initial_state"], True, config=cfg,
                                        segment_rows=segment_rows)
    assert_close(y, y_ref, torch.bfloat16, name=f"y seg={segment_rows}")
    assert_close(final, final_ref, torch.bfloat16, name=f"final seg={segment_rows}")
    grads = selective_scan_bwd(dout, dfinal, *args, True, inp["initial_state"], ckpt)
    for name, g in zip(NAMES, grads):
        assert_close(g, g_ref[name], torch.bfloat16, grad=True, name=f"d{name} seg={segment_rows}")


@pytest.mark.gpu
def test_triton_scan_reads_the_mamba_layer_strided_views_on_gpu():
    from ssmkit.ops.selective_scan.triton import selective_scan_triton

    inp = scan_inputs(2, 1000, 1536, 16, 1, dtype=torch.bfloat16, device="cuda", seed=9)
    xz = torch.cat([inp["x"], inp["z"]], -1)
    proj = torch.cat([torch.randn(2, 1000, 48, device="cuda").bfloat16(), inp["B"][:, :, 0], inp["C"][:, :, 0]], -1)
    strided = dict(inp, x=xz[..., :1536], z=xz[..., 1536:], B=proj[:, :, None, 48:64], C=proj[:, :, None, 64:])
    y_s, final_s = selective_scan_triton(**strided, return_final_state=True)
    y_c, final_c = selective_scan_triton(**inp, return_final_state=True)
    assert torch.equal(y_s, y_c) and torch.equal(final_s, final_c)


@pytest.mark.gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_triton_scan_step_updates_strided_state_in_place_on_gpu(state_dtype):
    check_step("cuda", state_dtype)


@pytest.mark.gpu
def test_triton_scan_step_replayed_from_a_cuda_graph_matches_the_torch_step():
    from ssmkit.ops.selective_scan import selective_scan_step
    from ssmkit.ops.selective_scan.triton import selective_scan_step_triton

    inp = scan_inputs(16, 3, 3072, 16, 1, dtype=torch.bfloat16, device="cuda", seed=10)
    state = inp["initial_state"].clone()
    tok = {k: inp[k][:, 0].clone() for k in ("x", "dt", "B", "C", "z")}
    kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)

    def step(s):
        return selective_scan_step_triton(s, tok["x"], tok["dt"], inp["A"], tok["B"], tok["C"], z=tok["z"], **kw)

    step(state.clone())  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step(state)
    expected = state.clone()
    for t in range(3):
        for k in tok:
            tok[k].copy_(inp[k][:, t])
        graph.replay()
        y_ref = selective_scan_step(expected, tok["x"], tok["dt"], inp["A"], tok["B"], tok["C"], z=tok["z"], **kw)
        assert_close(y, y_ref, torch.bfloat16, name=f"y replay {t}")
        assert_close(state, expected, torch.float32, name=f"state replay {t}")


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
