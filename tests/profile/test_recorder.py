import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ssmkit.inference import allocate_cache, generate, prefill
from ssmkit.inference.graph_registry import eager_reason
from ssmkit.profile import Profiler, TraceStore
from tests.compare import assert_close

from .models import CONFIG, UNITS, prompt, tiny_hybrid


def _events(store, run_id):
    return store.rows("SELECT * FROM events WHERE run_id = ? ORDER BY call_id", [run_id])


def test_event_count_is_hooked_layers_times_model_calls_with_types_phases_and_shapes():
    model = tiny_hybrid()
    ids = prompt(batch=2, seqlen=7)
    with Profiler(model) as prof:
        generate(model, ids, max_new_tokens=6)
    events = _events(prof.store, prof.run_id)
    n_calls = 6  # the prefill, then one model.step per new token but the last
    assert len(UNITS) == 8 and len(events) == len(UNITS) * n_calls
    for i, e in enumerate(events):
        step, unit = divmod(i, len(UNITS))
        assert (e["call_id"], e["step"], e["request_id"]) == (i, step, 0)
        assert (e["layer_idx"], e["layer_type"]) == UNITS[unit]
        assert e["phase"] == ("prefill" if step == 0 else "decode")
        assert (e["batch"], e["seqlen"]) == ((2, 7) if step == 0 else (2, 1))
        assert e["duration_ns"] > 0 and e["start_ns"] >= 0
    starts = [e["start_ns"] for e in events]
    assert starts == sorted(starts)
    ends = [e["start_ns"] + e["duration_ns"] for e in events]
    assert all(end <= nxt for end, nxt in zip(ends, starts[1:]))  # the units of a model call never overlap
    run = prof.store.rows("SELECT * FROM runs")[0]
    assert run["status"] == "ok" and run["clock"] == "cpu" and run["wall_ns"] >= ends[-1]


def test_blocks_hold_their_fused_pre_norm_off_while_recording_and_get_it_back():
    """With the pre-norm fused into in_proj, the projection would run outside the mixer's recorded step."""
    model = tiny_hybrid()
    with Profiler(model):
        during = [block.fuse_in_proj for block in model.layers]
    assert during == [False] * len(model.layers)
    assert all(block.fuse_in_proj and "fuse_in_proj" not in vars(block) for block in model.layers)


def test_each_generate_call_is_a_new_request_and_explicit_context_overrides_ids_and_phases():
    model = tiny_hybrid()
    ids = prompt(batch=1, seqlen=7)
    with Profiler(model) as prof:
        generate(model, ids, max_new_tokens=3)
        generate(model, ids, max_new_tokens=2)
        generate(model, ids[:, :1], max_new_tokens=2)  # a one-token prompt: its forward is still the prefill
        with prof.request(41), prof.phase("prefill"):
            state = allocate_cache(model, 1, 7)
            prefill(model, ids, state, chunk_size=3)  # chunks of 3, 3 and 1 tokens, all prefill
    got = prof.store.query("SELECT request_id, step, phase, seqlen FROM events WHERE layer_idx = 0 AND "
                           "layer_type = 'mamba2' ORDER BY call_id")[1]
    assert got == [(0, 0, "prefill", 7), (0, 1, "decode", 1), (0, 2, "decode", 1),
                   (1, 0, "prefill", 7), (1, 1, "decode", 1), (2, 0, "prefill", 1), (2, 1, "decode", 1),
                   (41, 0, "prefill", 3), (41, 1, "prefill", 3), (41, 2, "prefill", 1)]


_MODEL = tiny_hybrid()


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), prompt_len=st.integers(1, 9), new_tokens=st.integers(1, 4),
       chunk=st.one_of(st.none(), st.integers(2, 4)), requests=st.integers(1, 2))
def test_event_count_steps_and_phases_hold_for_awkward_shapes(batch, prompt_len, new_tokens, chunk, requests):
    # A last prefill chunk of one token looks like a decode step: only prof.phase("prefill") can name it.
    assume(chunk is None or prompt_len <= chunk or prompt_len % chunk != 1)
    ids = prompt(batch=batch, seqlen=prompt_len)
    with Profiler(_MODEL) as prof:
        for _ in range(requests):
            with prof.request():
                generate(_MODEL, ids, max_new_tokens=new_tokens, prefill_chunk_size=chunk)
    n_prefill = 1 if chunk is None else -(-prompt_len // chunk)
    calls = n_prefill + new_tokens - 1
    got = prof.store.query("SELECT request_id, step, phase, count(*), min(batch), max(batch) FROM events "
                           "GROUP BY ALL ORDER BY ALL")[1]
    assert got == [(r, s, "prefill" if s < n_prefill else "decode", len(UNITS), batch, batch)
                   for r in range(requests) for s in range(calls)]


def test_moe_routing_counts_equal_an_independent_top_k_of_the_router_inputs():
    model = tiny_hybrid()
    inputs = {}  # layer_idx -> list of MoE inputs (tokens, d_model)
    handles = [model.layers[i].ff.register_forward_pre_hook(
        lambda m, args, i=i: inputs.setdefault(i, []).append(args[0].reshape(-1, CONFIG.d_model).clone()))
        for i, kind in enumerate(CONFIG.feed_forwards) if kind == "moe"]
    with Profiler(model) as prof:
        generate(model, prompt(batch=3, seqlen=5), max_new_tokens=4)
    for h in handles:
        h.remove()
    rows = prof.store.rows("SELECT m.*, e.step FROM moe_routing m JOIN events e USING (run_id, call_id) "
                           "ORDER BY call_id")
    assert len(rows) == 2 * 4  # two MoE layers, four model calls
    for row in rows:
        moe = model.layers[row["layer_idx"]].ff
        x = inputs[row["layer_idx"]][row["step"]]
        probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
        expected = torch.bincount(probs.topk(CONFIG.moe_top_k, dim=-1).indices.flatten(), minlength=CONFIG.n_experts)
        assert row["expert_counts"] == expected.tolist()
        assert row["n_tokens"] == x.shape[0]
        assert row["imbalance"] == pytest.approx(expected.max().item() / expected.float().mean().item())
        capacity = -(-5 * x.shape[0] * CONFIG.moe_top_k // (4 * CONFIG.n_experts))  # ceil(1.25 t k / E)
        assert row["capacity"] == capacity
        assert row["over_capacity"] == int((expected - capacity).clamp(min=0).sum())
        assert row["expert_capacity"] == [capacity] * CONFIG.n_experts
        assert row["expert_overflow"] == (expected - capacity).clamp(min=0).tolist()
        assert row["dropped"] == 0  # eval mode never drops
        assert 0 < row["router_ns"] and 0 < row["expert_ns"]


def test_moe_routing_reports_the_layers_own_per_expert_capacities_and_drops_in_training():
    model = tiny_hybrid()
    moe = model.layers[3].ff
    moe.set_capacity_factors([0.5, 1.0, 2.0, 0.25])
    inputs = []
    handle = moe.register_forward_pre_hook(lambda m, args: inputs.append(args[0].reshape(-1, CONFIG.d_model)))
    with Profiler(model) as prof, torch.no_grad():
        model.train()(prompt(batch=3, seqlen=5))
    handle.remove()
    row = prof.store.rows("SELECT * FROM moe_routing WHERE layer_idx = 3")[0]
    probs = torch.softmax(inputs[0] @ moe.router.weight.T, dim=-1)
    counts = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=4)
    # 15 tokens x top-2 / 4 experts = 7.5 per expert: ceil(3.75, 7.5, 15, 1.875) = (4, 8, 15, 2)
    capacity = torch.tensor([4, 8, 15, 2])
    overflow = (counts - capacity).clamp(min=0)
    assert row["expert_capacity"] == capacity.tolist() and row["capacity"] is None  # the experts differ
    assert row["expert_overflow"] == overflow.tolist()
    assert row["over_capacity"] == row["dropped"] == int(overflow.sum())  # training mode drops the overflow
    assert int(overflow.sum()) > 0  # the routing does overflow, so the check above has something to count


def test_profiling_leaves_outputs_unchanged_and_removes_every_hook():
    model = tiny_hybrid(dtype=torch.float64)
    ids = prompt(batch=2, seqlen=6)
    expected = generate(model, ids, max_new_tokens=5)
    logits = model(ids)
    with Profiler(model):
        got = generate(model, ids, max_new_tokens=5)
        got_logits = model(ids)
        assert "Profiler" in eager_reason(model)  # generate decodes eagerly: a graph replay calls no layer
    assert eager_reason(model) is None
    assert torch.equal(got, expected)
    assert_close(got_logits, logits)
    for block in model.layers:
        for module in (block.mixer, getattr(block, "ff", None)):
            if module is not None:
                assert not module._forward_hooks and not module._forward_pre_hooks
                assert "step" not in module.__dict__ and "route" not in module.__dict__


def test_exception_mid_generation_leaves_a_readable_store_with_every_committed_batch(tmp_path):
    model = tiny_hybrid()
    db = tmp_path / "trace.duckdb"
    calls = [0]

    def fail_on_fifth_call(module, args, output):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        with Profiler(model, db, batch_size=len(UNITS), flush_interval_s=1e9):
            model.layers[2].ff.register_forward_hook(fail_on_fifth_call)
            generate(model, prompt(), max_new_tokens=10)
    with TraceStore(db, read_only=True) as store:
        run = store.rows("SELECT status, error FROM runs")[0]
        assert run == {"status": "error", "error": "RuntimeError: injected failure"}
        # Four whole model calls, then layer 0's two units, layer 1's two and layer 2's mixer and ff (it ended
        # before the failing hook, which runs after the profiler's).
        assert store.query("SELECT count(*) FROM events")[1][0][0] == 4 * len(UNITS) + 6


def test_killed_process_keeps_every_batch_committed_before_the_kill(tmp_path):
    db = tmp_path / "trace.duckdb"
    script = textwrap.dedent(f"""
        import os, torch
        from ssmkit.inference import generate
        from ssmkit.profile import Profiler
        from tests.profile.models import UNITS, prompt, tiny_hybrid
        torch.set_num_threads(1)
        model = tiny_hybrid()
        calls = [0]
        def kill(module, args):
            calls[0] += 1
            if calls[0] == 4:
                os._exit(3)  # no cleanup at all: no flush, no end of run
        model.layers[0].ff.register_forward_pre_hook(kill)  # its 4th call is in step 3
        with Profiler(model, {str(db)!r}, batch_size=len(UNITS), flush_interval_s=1e9, background=False):
            generate(model, prompt(), max_new_tokens=10)
    """)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    with TraceStore(db, read_only=True) as store:
        assert store.rows("SELECT status, error FROM runs") == [{"status": "running", "error": None}]
        steps = store.query("SELECT step, count(*) FROM events GROUP BY step ORDER BY step")[1]
    assert steps == [(0, len(UNITS)), (1, len(UNITS)), (2, len(UNITS))]


@pytest.mark.gpu
def test_cuda_events_time_every_layer_and_resolve_after_the_run():
    model = tiny_hybrid().cuda()
    with Profiler(model, batch_size=16) as prof:
        generate(model, prompt().cuda(), max_new_tokens=20)
    run = prof.store.rows("SELECT clock, status FROM runs")[0]
    assert run == {"clock": "cuda", "status": "ok"}
    events = _events(prof.store, prof.run_id)
    assert len(events) == 20 * len(UNITS)
    assert all(e["duration_ns"] > 0 for e in events)
    starts = [e["start_ns"] for e in events]
    assert starts == sorted(starts)


def test_kernel_detail_attributes_each_aten_op_to_the_layer_call_that_ran_it():
    model = tiny_hybrid()
    with Profiler(model, kernels=True) as prof:
        generate(model, prompt(batch=1, seqlen=4), max_new_tokens=3)
    store = prof.store
    calls = store.query("SELECT count(DISTINCT call_id) FROM kernels")[1][0][0]
    assert calls == store.query("SELECT count(*) FROM events")[1][0][0] == 3 * len(UNITS)
    # Every op row belongs to a recorded call, and the ops inside a call never take longer than the call.
    rows = store.query("SELECT e.layer_type, k.name, k.duration_ns, e.duration_ns FROM kernels k "
                       "JOIN events e USING (run_id, call_id)")[1]
    assert len(rows) == store.query("SELECT count(*) FROM kernels")[1][0][0]
    per_call = store.query("SELECT k.call_id, sum(k.duration_ns), any_value(e.duration_ns) FROM kernels k "
                           "JOIN events e USING (run_id, call_id) GROUP BY k.call_id")[1]
    assert all(0 < ops <= total for _, ops, total in per_call)
    names = {(t, n) for t, n, _, _ in rows}
    assert ("mlp", "aten::linear") in names and ("moe", "aten::topk") in names


@pytest.mark.gpu
def test_cuda_kernel_detail_attributes_gpu_kernels_to_layer_calls():
    model = tiny_hybrid().cuda()
    with Profiler(model, kernels=True) as prof:
        generate(model, prompt().cuda(), max_new_tokens=3)
    got = prof.store.query("SELECT count(DISTINCT k.call_id), count(*) FROM kernels k JOIN events e "
                           "USING (run_id, call_id) WHERE k.device_type = 'cuda' AND k.duration_ns > 0")[1][0]
    assert got[0] == 3 * len(UNITS) and got[1] >= got[0]
