"""The SSD tuner: its key (prompts of different lengths in one power-of-two bucket share one tuning) and when it
times configs at all."""

import torch

from ssmkit.ops.ssd.triton.plan import make_plan, tuning_shape


def plan_for(batch: int, seqlen: int, nheads: int = 4, chunk: int = 64):
    return make_plan(torch.empty(batch, seqlen, nheads, 8), nheads, None, chunk)


def test_lengths_in_one_power_of_two_bucket_share_a_key():
    keys = {tuning_shape(plan_for(1, n)) for n in (513, 700, 1000, 1024)}
    assert len(keys) == 1, keys


def test_key_changes_with_the_bucket_the_batch_and_the_chunk():
    base = tuning_shape(plan_for(1, 1000))
    assert tuning_shape(plan_for(1, 1025)) != base
    assert tuning_shape(plan_for(3, 1000)) != base
    assert tuning_shape(plan_for(1, 1000, chunk=32)) != base


def test_key_fields_are_the_powers_of_two_above_the_plan_sizes():
    plan = plan_for(3, 1000)
    q, nseq, maxlen, nseg = tuning_shape(plan)
    assert (q, nseq, maxlen) == (plan.Q, 4, 1024)
    assert nseg >= plan.nseg and nseg & (nseg - 1) == 0 and nseg < 2 * plan.nseg


def test_small_calls_take_the_first_config_untimed_and_large_ones_the_fastest(monkeypatch):
    """pick's decision on a CUDA device, with triton's do_bench replaced by fixed times (no GPU needed)."""
    import triton.testing

    from ssmkit.ops.ssd.triton import plan as plan_module

    monkeypatch.setattr(plan_module, "_TUNED", {})
    monkeypatch.setattr(plan_module, "_STATS", {"tuned": 0, "seconds": 0.0})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    fake_ms = {"a": 3.0, "b": 1.0, "c": 2.0}
    timed = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep: timed.append(fn()) or fake_ms[timed[-1]])
    candidates = [{"name": n} for n in "abc"]
    cuda = torch.device("cuda")

    def run(config):
        return config["name"]

    small = plan_module.pick("t", ("k",), candidates, run, cuda, work=plan_module.TUNE_MIN_WORK - 1)
    assert small is candidates[0] and timed == [] and plan_module.tuning_stats()["tuned"] == 0
    large = plan_module.pick("t", ("k",), candidates, run, cuda, work=plan_module.TUNE_MIN_WORK)
    assert large["name"] == "b" and timed == ["a", "b", "c"]
    again = plan_module.pick("t", ("k",), candidates, run, cuda, work=plan_module.TUNE_MIN_WORK)
    assert again is large and len(timed) == 3 and plan_module.tuning_stats()["tuned"] == 1
    # once tuned, a small call of the same key takes the tuned config
    assert plan_module.pick("t", ("k",), candidates, run, cuda, work=1) is large


def test_frozen_tuning_times_nothing_new_and_keeps_what_was_tuned(monkeypatch):
    import triton.testing

    from ssmkit.ops.ssd.triton import plan as plan_module

    monkeypatch.setattr(plan_module, "_TUNED", {})
    monkeypatch.setattr(plan_module, "_STATS", {"tuned": 0, "seconds": 0.0, "untuned": 0})
    monkeypatch.setattr(plan_module, "_FROZEN", [False])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    fake_ms = {"a": 3.0, "b": 1.0}
    timed = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep: timed.append(fn()) or fake_ms[timed[-1]])
    candidates = [{"name": "a"}, {"name": "b"}]
    cuda, work = torch.device("cuda"), plan_module.TUNE_MIN_WORK

    def run(config):
        return config["name"]

    tuned = plan_module.pick("t", ("warm",), candidates, run, cuda, work=work)
    assert tuned["name"] == "b" and len(timed) == 2
    with plan_module.tuning_frozen():
        assert plan_module.tuning_is_frozen()
        assert plan_module.pick("t", ("new",), candidates, run, cuda, work=work) is candidates[0]
        assert plan_module.pick("t", ("warm",), candidates, run, cuda, work=work) is tuned
    assert not plan_module.tuning_is_frozen() and len(timed) == 2
    assert plan_module.tuning_stats() == {"tuned": 1, "seconds": plan_module.tuning_stats()["seconds"],
                                          "untuned": 1}
    # unfrozen, the new key is tuned on its next call
    assert plan_module.pick("t", ("new",), candidates, run, cuda, work=work)["name"] == "b" and len(timed) == 4
