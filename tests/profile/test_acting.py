import numpy as np
import pytest
import torch

from ssmkit.inference import generate
from ssmkit.profile import Profiler, TraceStore
from ssmkit.profile.balance import (OnlineImbalancePenalty, apply_imbalance_penalty, expert_load,
                                    penalized_bias)
from ssmkit.profile.whatif import ExchangeModel, overlap_ns, serial_ns, shared_ns, what_if
from tests.compare import assert_close

from .models import prompt, tiny_hybrid

SKEW = torch.tensor([1.5, 0.5, 0.0, 0.0])  # router logits favouring experts 0 and 1


def _skewed_model():
    """The tiny hybrid with both MoE routers skewed (a forward hook adding SKEW to the router logits, as a
    router with a logit bias would)."""
    model = tiny_hybrid()
    for block in model.layers:
        if block.ff_kind == "moe":
            block.ff.router.register_forward_hook(lambda m, args, out: out + SKEW)
    return model


def _imbalance(store, run_id):
    """Per-call max/mean expert load of a run: (mean, p99)."""
    values = np.array([r[0] for r in store.query("SELECT imbalance FROM moe_routing WHERE run_id = ?",
                                                 [run_id])[1]])
    return values.mean(), np.percentile(values, 99)


def test_penalized_bias_moves_each_expert_by_lr_times_its_relative_excess_load():
    bias = torch.tensor([0.0, 0.1, 0.0, -0.1])
    got = penalized_bias(bias, [8, 4, 2, 2], lr=0.1)  # mean 4: excess 1, 0, -0.5, -0.5
    assert_close(got, torch.tensor([-0.1, 0.1, 0.05, -0.05]))
    assert torch.equal(penalized_bias(bias, [0, 0, 0, 0], lr=0.1), bias)
    with pytest.raises(ValueError, match=r"load: expected \(4,\) per-expert counts, got shape \(3,\)"):
        penalized_bias(bias, [1, 2, 3], lr=0.1)


def test_imbalance_penalty_from_traces_flattens_the_expert_load_of_a_skewed_router():
    model = _skewed_model()
    calibration = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    held_out = prompt(batch=16, seqlen=6, seed=7)
    store = TraceStore()
    with torch.no_grad(), Profiler(model, store) as before:
        generate(model, held_out, max_new_tokens=40)
    for _ in range(12):  # profile a calibration batch, then act on the load the trace shows
        with torch.no_grad(), Profiler(model, store) as prof:
            model(calibration)
        apply_imbalance_penalty(model, expert_load(store, prof.run_id), lr=0.05)
    with torch.no_grad(), Profiler(model, store) as after:
        generate(model, held_out, max_new_tokens=40)
    mean_before, p99_before = _imbalance(store, before.run_id)
    mean_after, p99_after = _imbalance(store, after.run_id)
    assert mean_before > 1.6 and mean_after < 0.8 * mean_before
    assert p99_after < p99_before  # the MoE tail (the busiest expert of the worst calls) comes down too
    calib_load = expert_load(store, prof.run_id)
    for load in calib_load.values():
        assert max(load) / np.mean(load) < 1.2
    bias = model.layers[1].ff.router_bias
    assert bias[0] < bias[2] and bias[1] < bias[3]  # the favoured experts are penalized


def test_online_penalty_tunes_the_bias_per_call_and_detaches_on_exit():
    model = _skewed_model()
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    store = TraceStore()
    with torch.no_grad(), Profiler(model, store) as first:
        model(ids)
    with torch.no_grad(), OnlineImbalancePenalty(model, lr=0.05):
        for _ in range(12):
            model(ids)
    with torch.no_grad(), Profiler(model, store) as last:
        model(ids)
    assert _imbalance(store, last.run_id)[0] < 0.7 * _imbalance(store, first.run_id)[0]
    assert all(not b.ff._forward_hooks for b in model.layers if b.ff_kind == "moe")


def test_expert_load_sums_the_counts_of_a_phase():
    model = tiny_hybrid()
    store = TraceStore()
    with Profiler(model, store) as prof:
        generate(model, prompt(batch=2, seqlen=5), max_new_tokens=4)
    rows = store.rows("SELECT m.layer_idx, m.expert_counts, e.phase FROM moe_routing m JOIN events e "
                      "USING (run_id, call_id)")
    for phase in (None, "prefill", "decode"):
        expected = {}
        for r in rows:
            if phase in (None, r["phase"]):
                expected[r["layer_idx"]] = [a + b for a, b in zip(expected.get(r["layer_idx"], [0] * 4),
                                                                 r["expert_counts"])]
        assert expert_load(store, prof.run_id, phase=phase) == expected
    with pytest.raises(ValueError, match=r"loads: layers \[0\] are not MoE layers"):
        apply_imbalance_penalty(model, {0: [1, 1, 1, 1]})


def test_schedulers_match_hand_computed_makespans():
    a = [("compute", 10.0), ("exchange", 5.0), ("compute", 10.0), ("exchange", 5.0)]
    b = [("compute", 10.0), ("exchange", 5.0), ("compute", 10.0), ("exchange", 5.0)]
    assert serial_ns(a, b) == 60.0
    assert shared_ns(a, b, latency_ns=2.0) == 10 + 10 + (5 + 5 - 2) + 10 + 10 + (5 + 5 - 2)
    # a: c 0-10, x 10-15, c 20-30, x 30-35; b: c 10-20, x 20-25, c 30-40, x 40-45
    assert overlap_ns(a, b) == 45.0
    heavy = [("compute", 1.0), ("exchange", 20.0), ("compute", 1.0), ("exchange", 20.0)]
    # Exchange-bound: the link serializes 80 of exchange either way; sharing saves a launch latency per layer.
    assert overlap_ns(heavy, heavy) >= 80.0 and shared_ns(heavy, heavy, 5.0) == 4 + 80 - 10


def test_what_if_over_a_recorded_trace_reports_each_policy_and_overlap_never_loses_to_serial():
    model = tiny_hybrid()
    store = TraceStore()
    with Profiler(model, store):
        generate(model, prompt(batch=4, seqlen=5), max_new_tokens=21)
    w = what_if(store, exchange=ExchangeModel(world_size=2, latency_ns=20e3, bytes_per_ns=0.05))
    assert w.pairs == 10  # 20 decode model calls
    assert 0 < w.exchange_share < 1
    for stat in ("p50_ns", "p99_ns"):
        assert w.overlap[stat] <= w.serial[stat] and w.shared[stat] < w.serial[stat]
