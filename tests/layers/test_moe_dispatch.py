"""MoE dispatch without host synchronization: both layouts (dense, expert-sorted blocks) equal a per-token loop
over each token's top-k experts in float64, for awkward token counts, expert counts and top-k, with capacity drops
and gradients in training; the forward runs on the meta device and with host reads patched to raise; on a GPU it
runs under the sync debug mode and replays from a CUDA graph."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.layers import MoE
from ssmkit.layers.moe import n_blocks
from ssmkit.models import ModelConfig
from tests.compare import assert_close

# None: dense layout; an int: blocks of that many rows (1: one block per assignment; 3 divides few counts)
LAYOUTS = [None, 1, 3, 8]


def _moe(n_experts=5, top_k=2, renormalize=False, capacity_factor=None, d_model=12, d_ff=10,
         dtype=torch.float64, seed=0) -> MoE:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=d_model, mixers="mamba", feed_forwards="moe", d_ff=d_ff, n_experts=n_experts,
                      moe_top_k=top_k, moe_renormalize=renormalize, moe_capacity_factor=capacity_factor)
    moe = MoE(cfg).to(dtype)
    with torch.no_grad():  # a router this large spreads the tokens over all experts
        moe.router.weight.mul_(4.0)
    return moe


def _force_layout(monkeypatch, moe: MoE, rows) -> None:
    monkeypatch.setattr(moe, "dispatch_plan", lambda n_tokens: rows)


def _loop_reference(moe: MoE, x: torch.Tensor, capacity: list[int] | None = None) -> torch.Tensor:
    """Token by token, in order: each of its top-k experts (a plain SwiGLU on that one token) times its softmax
    weight, skipping an assignment once its expert has taken `capacity[e]` earlier ones. x (tokens, d_model)."""
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
    taken = [0] * moe.n_experts
    rows = []
    for t in range(x.shape[0]):
        chosen = torch.topk(probs[t] + moe.router_bias, moe.top_k).indices.tolist()
        w = probs[t, chosen]
        if moe.renormalize:
            w = w / w.sum()
        y = torch.zeros_like(x[t])
        for j, e in enumerate(chosen):
            taken[e] += 1
            if capacity is not None and taken[e] > capacity[e]:
                continue
            gate, up = (moe.experts.gate_up_proj[e] @ x[t]).chunk(2)
            y = y + w[j] * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 1, 12), (1, 7, 12), (3, 5, 12), (2, 13, 12), (4, 12)])
def test_every_layout_matches_the_per_token_loop(monkeypatch, rows, shape):
    moe = _moe().eval()
    _force_layout(monkeypatch, moe, rows)
    x = torch.randn(*shape, dtype=torch.float64)
    assert_close(moe(x), _loop_reference(moe, x.reshape(-1, 12)).reshape(shape), name=f"rows={rows} {shape}")


@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("n_experts,top_k,renormalize", [(4, 1, False), (6, 6, True), (3, 3, False), (7, 2, True),
                                                          (1, 1, False)])
def test_every_layout_matches_the_loop_for_expert_and_top_k_variants(monkeypatch, rows, n_experts, top_k,
                                                                     renormalize):
    moe = _moe(n_experts, top_k, renormalize).eval()
    _force_layout(monkeypatch, moe, rows)
    x = torch.randn(11, 12, dtype=torch.float64)
    assert_close(moe(x), _loop_reference(moe, x), name=f"E={n_experts} k={top_k} rows={rows}")


@settings(max_examples=25, deadline=None)
@given(n_tokens=st.integers(1, 40), n_experts=st.integers(1, 6), data=st.data(),
       rows=st.one_of(st.none(), st.integers(1, 9)), renormalize=st.booleans())
def test_any_layout_matches_the_loop_on_random_shapes(n_tokens, n_experts, data, rows, renormalize):
    top_k = data.draw(st.integers(1, n_experts))
    moe = _moe(n_experts, top_k, renormalize, seed=n_tokens).eval()
    moe.dispatch_plan = lambda n: rows  # an instance attribute, dropped with the module
    x = torch.randn(n_tokens, 12, dtype=torch.float64)
    assert_close(moe(x), _loop_reference(moe, x), name="random shape")


@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("factors", [None, (0.5, 1.0, 0.25, 2.0, 0.75)])
def test_training_output_and_gradients_match_the_loop_with_and_without_capacity(monkeypatch, rows, factors):
    moe = _moe().train()
    moe.set_capacity_factors(factors)
    _force_layout(monkeypatch, moe, rows)
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    capacity = moe.expert_capacity(18)
    params = [x, moe.router.weight, moe.experts.gate_up_proj, moe.experts.down_proj]
    probe = torch.randn(2, 9, 12, dtype=torch.float64)
    y = moe(x)
    expected = _loop_reference(moe, x.reshape(-1, 12), capacity).reshape(2, 9, 12)
    assert_close(y, expected, name="training output")
    grads = torch.autograd.grad((y * probe).sum(), params)
    expected_grads = torch.autograd.grad((expected * probe).sum(), params)
    for name, g, e in zip(["x", "router", "gate_up_proj", "down_proj"], grads, expected_grads):
        assert_close(g, e, grad=True, name=f"d{name}")
    if factors is not None:
        assert int(moe.last_dropped.sum()) > 0  # the factors do drop assignments here


def test_eval_ignores_capacity_in_every_layout(monkeypatch):
    for rows in LAYOUTS:
        moe = _moe(capacity_factor=0.5).eval()
        _force_layout(monkeypatch, moe, rows)
        x = torch.randn(16, 12, dtype=torch.float64)
        assert_close(moe(x), _loop_reference(moe, x), name=f"eval rows={rows}")
        assert int(moe.last_overflow.sum()) > 0 and int(moe.last_dropped.sum()) == 0


def test_capacity_reports_clear_when_the_factors_are_removed():
    moe = _moe()
    moe.set_capacity_factors([0.5] * 5)
    x = torch.randn(8, 12, dtype=torch.float64)
    moe.eval()(x)
    assert moe.last_capacity.tolist() == [math.ceil(0.5 * 8 * 2 / 5)] * 5
    moe.set_capacity_factors(None)
    moe(x)
    assert moe.last_capacity is None and moe.last_overflow is None and moe.last_dropped is None


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=8), rows=st.integers(1, 12))
def test_block_bound_holds_for_any_split_of_the_assignments(counts, rows):
    n = sum(counts)
    assert sum(math.ceil(c / rows) for c in counts) <= n_blocks(n, len(counts), rows)


def test_plan_gathers_one_tokens_experts_runs_small_batches_dense_and_blocks_long_prefills():
    moe = _moe(n_experts=16, top_k=2)
    assert moe.dispatch_plan(1) == 1  # 2 gathered experts read fewer bytes than all 16
    assert moe.dispatch_plan(16) is None  # every expert read once, on a batch small enough to be memory bound
    rows = moe.dispatch_plan(8192)
    nk = 8192 * 2
    padded = n_blocks(nk, 16, rows) * rows
    assert rows > 1 and padded <= 2 * nk < 16 * 8192  # about the routed work, far below the dense layout's


def _forbid_host_reads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the MoE forward read a tensor value back to the host")
    for name in ["item", "tolist", "nonzero", "__bool__", "__int__", "__float__"]:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)
    monkeypatch.setattr(torch, "bincount", refuse)


@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("training", [False, True])
def test_forward_reads_nothing_back_to_the_host(monkeypatch, rows, training):
    moe = _moe(capacity_factor=0.75).train(training)
    _force_layout(monkeypatch, moe, rows)
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    expected = _loop_reference(moe, x.reshape(-1, 12), moe.expert_capacity(21) if training else None)
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        with pytest.raises(AssertionError, match="read a tensor value back"):
            torch.ones(2).tolist()  # the guard is on
        y = moe(x)
    assert_close(y, expected.reshape(3, 7, 12), name="guarded forward")


@pytest.mark.parametrize("rows", LAYOUTS + ["auto"])
@pytest.mark.parametrize("n_tokens", [1, 5, 3000])
@pytest.mark.parametrize("training", [False, True])
def test_forward_runs_on_the_meta_device_so_no_shape_depends_on_data(monkeypatch, rows, n_tokens, training):
    moe = _moe(n_experts=8, capacity_factor=1.0).to("meta").train(training)
    if rows != "auto":
        _force_layout(monkeypatch, moe, rows)
    x = torch.empty(n_tokens, 12, dtype=torch.float64, device="meta")
    assert moe(x).shape == (n_tokens, 12)
    assert moe.last_expert_counts.shape == (8,) and moe.last_overflow.shape == (8,)


def test_old_host_reading_dispatch_would_fail_on_meta():
    """The meta check catches what the issue names: bincount(...) has a data-dependent size."""
    with pytest.raises(NotImplementedError):
        torch.bincount(torch.empty(4, dtype=torch.int64, device="meta"), minlength=3)


def _cpu_float64(moe: MoE) -> MoE:
    """A float64 CPU copy for the reference, leaving the GPU module (and a captured graph's pointers) alone."""
    return copy.deepcopy(moe).cpu().double()


@pytest.mark.gpu
@pytest.mark.parametrize("n_tokens", [1, 4, 4096])
@pytest.mark.parametrize("factors", [None, (1.0, 0.5, 2.0, 1.0, 1.0, 0.25, 1.0, 1.0)])
@torch.no_grad()  # inference, as in decode; the aux loss of a grad-enabled call would also stop the deepcopy below
def test_eval_forward_on_gpu_never_synchronizes(n_tokens, factors):
    moe = _moe(n_experts=8, capacity_factor=1.0, d_model=64, d_ff=96, dtype=torch.float32).cuda().eval()
    moe.set_capacity_factors(factors)  # None: the single factor 1.0; a tuple: per-expert capacities by fills
    x = torch.randn(n_tokens, 64, device="cuda")
    moe(x)  # first call: allocator and kernel set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = moe(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = _loop_reference(_cpu_float64(moe), x.cpu().double())
    assert_close(y, expected, dtype=torch.float32, name="gpu eval")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (2, 1500, 64)])
def test_cuda_graph_replay_matches_eager(shape):
    moe = _moe(n_experts=8, d_model=64, d_ff=96, dtype=torch.float32).cuda().eval()
    static_x = torch.randn(*shape, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):  # warm-up off the capture stream, as torch.cuda.graphs asks
            moe(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_y = moe(static_x)
    for _ in range(2):
        static_x.copy_(torch.randn(*shape, device="cuda"))
        graph.replay()
        with torch.no_grad():
            eager = moe(static_x)
        assert_close(static_y, eager, name="graph vs eager")
        reference = _loop_reference(_cpu_float64(moe), static_x.cpu().double().reshape(-1, 64)).reshape(shape)
        assert_close(static_y, reference, dtype=torch.float32, name="graph vs loop")
