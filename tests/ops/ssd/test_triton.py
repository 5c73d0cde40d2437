"""The Triton SSD kernels against the float64 spec: under TRITON_INTERPRET=1 on CPU (CI), and on GPU.

The interpreter checks live in triton_cases.py and run in one child process with TRITON_INTERPRET=1 in its
environment (triton.jit reads it at import, before any test could set it). GPU tests carry the `gpu` mark and
check every block config the tuner can pick, since Triton 3.4-3.7 is known to miscompile an SSD-like backward
on Hopper for some configs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmkit.ops.ssd import ssd
from ssmkit.ops.ssd.chunked import ssd_chunked
from tests.compare import assert_close
from tests.ops.ssd.triton_cases import GRAD_NAMES, check_all, check_step, make_inputs, reference, step_inputs

INTERPRETER_CASES = ("shapes", "varlen", "segments", "float16", "final_state_decay_gradient", "awkward_shapes", "step",
                     "dispatch", "deterministic_partials", "large_dstate")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def interpreted():
    """Runs every interpreter case once in a child process; maps case name -> (ok, message)."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "tests.ops.ssd.triton_cases", *INTERPRETER_CASES], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["name"]] = (r["ok"], r["message"])
    for name in INTERPRETER_CASES:
        results.setdefault(name, (False, f"no result; exit {proc.returncode}\n{proc.stderr[-3000:]}"))
    return results


def expect_passed(interpreted, name):
    ok, message = interpreted[name]
    assert ok, message


def test_interpreted_triton_matches_recurrent_outputs_states_and_all_gradients_across_shapes(interpreted):
    expect_passed(interpreted, "shapes")


def test_interpreted_triton_resets_state_at_packed_sequence_boundaries(interpreted):
    expect_passed(interpreted, "varlen")


def test_interpreted_triton_segments_compute_the_same_function_as_one_walk(interpreted):
    expect_passed(interpreted, "segments")


def test_interpreted_triton_db_dc_by_atomics_and_by_deterministic_partials_match_recurrent(interpreted):
    expect_passed(interpreted, "deterministic_partials")


def test_interpreted_triton_forward_walks_large_dstate_in_blocks_matching_recurrent(interpreted):
    expect_passed(interpreted, "large_dstate")


def test_interpreted_triton_float16_within_float16_tolerances(interpreted):
    expect_passed(interpreted, "float16")


def test_interpreted_triton_decay_gradient_through_final_state_has_float32_accuracy(interpreted):
    expect_passed(interpreted, "final_state_decay_gradient")


def test_interpreted_triton_forward_matches_recurrent_for_awkward_shapes(interpreted):
    expect_passed(interpreted, "awkward_shapes")


def test_interpreted_triton_step_updates_strided_state_slots_in_place(interpreted):
    expect_passed(interpreted, "step")


def test_interpreted_ssd_dispatch_runs_triton_and_falls_back_for_float64(interpreted):
    expect_passed(interpreted, "dispatch")


# ---------------------------------------------------------------- GPU

GPU_CASES = [
    # dtype, batch, seqlen, nheads, headdim, ngroups, dstate, extras
    (torch.bfloat16, 2, 300, 8, 64, 1, 64, dict()),
    (torch.bfloat16, 1, 1000, 4, 128, 2, 128, dict(D2=True)),
    (torch.bfloat16, 2, 257, 4, 32, 4, 256, dict(z=False)),
    (torch.float16, 3, 63, 8, 64, 1, 16, dict(init=False)),
    (torch.float32, 2, 515, 4, 64, 1, 64, dict()),
    (torch.float32, 1, 2048, 2, 100, 1, 64, dict(D2=True)),
    (torch.bfloat16, 1, 4096, 2, 64, 1, 64, dict()),
]


def cotangents(y_shape, final_shape, dtype, seed=0):
    """dout (in dtype) and dfinal (float32) from a seeded CUDA generator: with the global one each run (and each
    xdist worker order) drew another dout, and about one draw in tens nearly cancels dA (a float32 run on an
    H100 read 5.2e-5 relative against the 5e-5 bound; 8 seeded draws x 4 configs: median 5.1e-6, max 1.9e-5)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(y_shape, device="cuda", generator=g).to(dtype),
            torch.randn(final_shape, device="cuda", generator=g))


def gpu_reference(inp, cu_seqlens=None, dout=None, dfinal=None):
    """Float64 chunked form on the GPU (itself tested against the recurrence in test_orders_agree.py)."""
    def oracle(*args, **kw):
        return ssd_chunked(*args, chunk_size=32, **kw)

    return reference(inp, cu_seqlens=cu_seqlens, dout=dout, dfinal=dfinal, oracle=oracle)


def check_gpu_case(inp, nseq, cu_seqlens, dtype, chunk_size=64):
    import ssmkit.ops.ssd.triton as mod
    from tests.ops.ssd.triton_cases import run_triton

    P, N = inp["x"].shape[-1], inp["B"].shape[-1]
    dout, dfinal = cotangents(inp["x"].shape, (nseq, inp["x"].shape[2], P, N), dtype)
    out = run_triton(mod, inp, cu_seqlens=cu_seqlens, dout=dout, dfinal=dfinal, chunk_size=chunk_size)
    check_all(*out, gpu_reference(inp, cu_seqlens=cu_seqlens, dout=dout, dfinal=dfinal), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c}" if not isinstance(c, tuple) else
                         f"{str(c[0])[6:]}-b{c[1]}-L{c[2]}-h{c[3]}-p{c[4]}-g{c[5]}-n{c[6]}")
def test_triton_matches_float64_outputs_states_and_gradients_on_gpu(case):
    dtype, *shape, extras = case
    inp = make_inputs(*shape, dtype=dtype, device="cuda", seed=shape[1], **extras)
    check_gpu_case(inp, shape[0], None, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_many_short_packed_sequences_match_float64_on_gpu(dtype):
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(0, 90, (60,), generator=g).tolist() + [700]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    inp = make_inputs(1, int(cu[-1]), 8, 64, 2, 64, dtype=dtype, device="cuda", nseq=len(lengths), seed=12)
    check_gpu_case(inp, len(lengths), cu, dtype)


CONFIG_SHAPES = [
    # dtype, headdim, dstate, varlen
    (torch.bfloat16, 64, 64, False),
    (torch.bfloat16, 128, 128, True),
    (torch.bfloat16, 32, 256, False),
    (torch.float16, 64, 128, True),
    (torch.float32, 64, 64, False),
]


def _config_params():
    """(shape, kind, config) for every config the tuner may pick; empty where triton cannot be imported."""
    try:
        from ssmkit.ops.ssd.triton.plan import configs
    except ImportError:
        return []
    return [pytest.param(shape, kind, cfg, id=f"{str(shape[0])[6:]}-p{shape[1]}-n{shape[2]}-vl{int(shape[3])}-"
                         f"{kind}-bp{cfg['BLOCK_P']}-w{cfg['num_warps']}-s{cfg['num_stages']}")
            for shape in CONFIG_SHAPES for kind in ("fwd", "bwd") for cfg in configs(shape[1], shape[2], kind)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,kind,cfg", _config_params())
def test_every_tunable_config_matches_float64_on_gpu(shape, kind, cfg):
    """Each config the tuner may pick, forward or backward, run explicitly (segments forced on)."""
    from ssmkit.ops.ssd.triton.bwd import ssd_bwd
    from ssmkit.ops.ssd.triton.fwd import ssd_fwd
    from ssmkit.ops.ssd.triton.plan import configs

    dtype, P, N, varlen = shape
    cu = torch.tensor([0, 100, 101, 700, 1100], dtype=torch.int32, device="cuda") if varlen else None
    batch, seqlen, nseq = (1, 1100, 4) if varlen else (2, 550, 2)
    inp = make_inputs(batch, seqlen, 4, P, 2, N, dtype=dtype, device="cuda", nseq=nseq, seed=P + N)
    dout, dfinal = cotangents(inp["x"].shape, (nseq, 4, P, N), dtype)
    y_ref, final_ref, grads_ref = gpu_reference(inp, cu_seqlens=cu, dout=dout, dfinal=dfinal)
    args = [inp[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    y, final, plan, segst, seglog = ssd_fwd(*args, True, None, inp["initial_state"], cu, 64,
                                            config=cfg if kind == "fwd" else configs(P, N, "fwd")[0], seg_chunks=3)
    assert plan.nseg > 1
    assert_close(y, y_ref, dtype, name=f"y {cfg}")
    assert_close(final, final_ref, dtype, name=f"final {cfg}")
    if kind == "bwd":
        grads = ssd_bwd(dout, dfinal, *args, True, None, inp["initial_state"], cu, plan, segst, seglog,
                        config=cfg)
        for name, g in zip(GRAD_NAMES, grads):
            assert_close(g, grads_ref[name], dtype, grad=True, name=f"d{name} {cfg}")


@pytest.mark.gpu
def test_deterministic_mode_gives_bit_identical_db_dc_matching_the_atomic_path_on_gpu():
    """Under torch.use_deterministic_algorithms(True) dB and dC come from fixed-order sums of per-head partials:
    two runs agree bit for bit, and both modes match float64 (4 heads a group, ngroups 2)."""
    from ssmkit.ops.ssd.triton.bwd import atomic_group_grads

    inp = make_inputs(2, 300, 8, 64, 2, 64, dtype=torch.bfloat16, device="cuda", seed=31)
    dout, dfinal = cotangents(inp["x"].shape, (2, 8, 64, 64), torch.bfloat16)
    ref = gpu_reference(inp, dout=dout, dfinal=dfinal)
    import ssmkit.ops.ssd.triton as mod
    from tests.ops.ssd.triton_cases import run_triton

    runs = []
    try:
        for deterministic in (True, True, False):
            torch.use_deterministic_algorithms(deterministic, warn_only=True)  # other ops may lack one
            assert atomic_group_grads() is not deterministic
            runs.append(run_triton(mod, inp, dout=dout, dfinal=dfinal, chunk_size=64))
    finally:
        torch.use_deterministic_algorithms(False)
    for run in runs:
        check_all(*run, ref, torch.bfloat16)
    (_, _, g1), (_, _, g2) = runs[0], runs[1]
    for name in ("B", "C"):
        assert torch.equal(g1[name], g2[name]), f"d{name} differs between two deterministic runs"


@pytest.mark.gpu
def test_triton_reads_non_contiguous_inputs_correctly_on_gpu():
    inp = make_inputs(2, 200, 4, 64, 2, 64, dtype=torch.bfloat16, device="cuda", seed=21)
    strided = dict(inp)
    strided["x"] = inp["x"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, (b, h, l, p) storage
    strided["B"] = torch.cat([inp["B"], inp["B"]], dim=-1)[..., :64]  # a view with a wider row stride
    assert not strided["x"].is_contiguous() and not strided["B"].is_contiguous()

    def call(t):
        return ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                   dt_softplus=True, initial_state=t["initial_state"], return_final_state=True, impl="triton")

    y, final = call(inp)
    y_s, final_s = call(strided)
    assert torch.equal(y, y_s) and torch.equal(final, final_s)
    assert torch.equal(ssd(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
                           dt_bias=inp["dt_bias"], dt_softplus=True, initial_state=inp["initial_state"],
                           impl="auto"), y)


@pytest.mark.gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_triton_step_updates_strided_state_slots_in_place_on_gpu(state_dtype):
    from ssmkit.ops.ssd.triton import ssd_step_triton

    check_step(ssd_step_triton, state_dtype, device="cuda")


@pytest.mark.gpu
def test_public_step_on_cuda_runs_the_kernel_and_replays_from_a_cuda_graph_like_the_torch_step(monkeypatch):
    """ssd_step(impl="auto") on CUDA picks the kernel, its input checks capture, and replays match the spec."""
    import ssmkit.ops.ssd.triton as mod
    from ssmkit.ops.ssd import ssd_step, ssd_step_reference

    launches = []
    kernel = mod.ssd_step_triton
    monkeypatch.setattr(mod, "ssd_step_triton", lambda *a, **kw: launches.append(1) or kernel(*a, **kw))
    batch, nheads, headdim, ngroups, dstate = 8, 16, 64, 1, 128
    state = torch.randn(batch, nheads, headdim, dstate, device="cuda")
    static = step_inputs(batch, nheads, headdim, ngroups, dstate, device="cuda")
    names = ("x", "dt", "A", "B", "C")
    kw = dict(D=static["D"], z=static["z"], dt_bias=static["dt_bias"], dt_softplus=True)
    ssd_step(state.clone(), *[static[k] for k in names], **kw)  # compile outside the capture
    assert launches == [1]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = ssd_step(state, *[static[k] for k in names], **kw)
    expected = state.clone()
    for seed in range(3):
        fresh = step_inputs(batch, nheads, headdim, ngroups, dstate, device="cuda", seed=100 + seed)
        for k in ("x", "dt", "B", "C", "z"):
            static[k].copy_(fresh[k])
        graph.replay()
        y_ref = ssd_step_reference(expected, *[static[k] for k in names], **kw)
        assert_close(y_static, y_ref, torch.float32, name=f"y replay {seed}")
        assert_close(state, expected, torch.float32, name=f"state replay {seed}")
