import numpy as np
import pytest

from ssmkit.inference import generate
from ssmkit.profile import Profiler, TraceStore
from ssmkit.profile.analysis import format_summary, summarize

from .models import prompt, sleep_on_calls, tiny_hybrid
from .synthetic import lognormal, write_run


def test_summary_percentiles_share_and_cv_equal_numpy_on_known_durations():
    rng = np.random.default_rng(0)
    durations = {(0, "mamba2"): lognormal(rng, 300e3, 0.2, 97), (0, "mlp"): lognormal(rng, 50e3, 0.5, 97),
                 (1, "attention"): lognormal(rng, 400e3, 0.1, 97), (2, "mamba2"): lognormal(rng, 310e3, 0.2, 97)}
    store = TraceStore()
    run_id = write_run(store, durations, gap_ns=1000)
    s = summarize(store, run_id)
    wall = s.wall_ns
    assert wall == sum(d.sum() for d in durations.values()) + 1000 * 4 * 97
    by_type = {r["layer_type"]: r for r in s.layer_types}
    assert set(by_type) == {"mamba2", "mlp", "attention"}
    for layer_type in by_type:
        d = np.concatenate([v for (_, t), v in durations.items() if t == layer_type])
        row = by_type[layer_type]
        assert row["calls"] == len(d)
        for q in (50, 95, 99):  # quantile_cont is numpy's default linear interpolation
            assert row[f"p{q}_ns"] == pytest.approx(np.percentile(d, q), rel=1e-12)
        assert row["cv"] == pytest.approx(d.std(ddof=1) / d.mean(), rel=1e-9)
        assert row["share"] == pytest.approx(d.sum() / wall, rel=1e-12)
    step_totals = sum(durations.values())
    model_call = next(a for a in s.aggregates if a["layer_type"] == "(model call)")
    assert model_call["calls"] == 97
    assert model_call["p99_ns"] == pytest.approx(np.percentile(step_totals, 99), rel=1e-12)


def test_tail_of_one_type_is_reported_hidden_when_whole_model_calls_barely_vary():
    rng = np.random.default_rng(1)
    n = 200
    moe = lognormal(rng, 400e3, 0.05, n)
    moe[::25] = 10e6  # 4% of the MoE calls stall for 10 ms
    durations = {(0, "mamba2"): lognormal(rng, 300e3, 0.05, n), (1, "moe"): moe,
                 **{(i, "mamba2"): lognormal(rng, 300e3, 0.05, n) for i in range(2, 40)}}
    store = TraceStore()
    s = summarize(store, write_run(store, durations))
    assert [(h["layer_type"], h["phase"]) for h in s.hidden_tails] == [("moe", "decode")]
    hidden = s.hidden_tails[0]
    assert hidden["p99_ns"] == pytest.approx(np.percentile(moe, 99))
    assert hidden["step_p99_over_p50"] < hidden["tail_ratio"] / 2
    assert "moe (decode): p99 10000.0 us" in format_summary(s)


def test_injected_delay_in_one_layer_is_the_top_outlier_while_total_latency_barely_moves():
    model = tiny_hybrid()
    delay_s, stalled_call = 0.15, 200  # layer 3's MoE on its 201st call: decode step 200
    handle = sleep_on_calls(model.layers[3].ff, delay_s, {stalled_call})
    with Profiler(model) as prof:
        generate(model, prompt(batch=1, seqlen=8), max_new_tokens=600)  # the stall well above host hiccups
    handle.remove()
    s = summarize(prof.store, prof.run_id)
    top = s.outliers[0]
    assert (top["step"], top["phase"], top["layer_idx"], top["layer_type"]) == (stalled_call, "decode", 3, "moe")
    assert top["duration_ns"] >= delay_s * 1e9
    worst = s.worst_layers[0]
    assert (worst["phase"], worst["layer_idx"], worst["layer_type"]) == ("decode", 3, "moe")
    assert "0        200   decode  3      moe" in format_summary(s)
    # The aggregate view barely moves: the stall is a small part of the total, and the median model call an
    # end-to-end dashboard would show stays far below it.
    total = prof.store.query("SELECT sum(duration_ns) FROM events")[1][0][0]
    assert top["excess_ns"] < 0.15 * total
    model_call = next(a for a in s.aggregates if a["layer_type"] == "(model call)" and a["phase"] == "decode")
    assert model_call["p50_ns"] < top["duration_ns"] / 2
