"""The continuous-batching engine without HTTP: sequences that join a running batch at different token boundaries
produce exactly the tokens `generate` produces for each alone (greedy, and seeded sampling with a generator per
request), in pure SSM, attention, S4 and hybrid MoE models; full engines refuse work; cancelled and timed-out
sequences free their slots."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from ssmkit.inference import generate
from ssmkit.inference.sampling import SamplingConfig
from ssmkit.serve import Engine, GenerationRequest, Overloaded
from tests.serve.harness import EOS, tiny_model

PRESETS = ("tiny-mamba2", "tiny-llama", "tiny-hybrid-moe", "tiny-mamba", "tiny-s4")


def _request(prompt, max_tokens, temperature=0.0, top_p=None, seed=None, timeout_s=float("inf")):
    events: queue.Queue = queue.Queue()
    r = GenerationRequest(prompt, max_tokens, events.put, SamplingConfig(temperature, None, top_p), seed=seed,
                          eos=(EOS,), timeout_s=timeout_s)
    return r, events


def _wait_finish(events: queue.Queue, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if event.kind == "finish":
            return event


@pytest.mark.parametrize("preset", PRESETS)
def test_sequences_joining_a_running_batch_equal_generate_alone(preset):
    model = tiny_model(preset)
    engine = Engine(model, max_concurrency=3, max_queue=8, max_len=64)
    try:
        submitted = []
        for i in range(7):  # more than the slots: later ones wait, then join as slots free up
            prompt = torch.randint(0, 256, (1 + (7 * i) % 13,), generator=torch.Generator().manual_seed(i)).tolist()
            sampled = i % 2 == 1
            r, events = _request(prompt, 5 + 3 * i, temperature=0.9 if sampled else 0.0,
                                 top_p=0.8 if sampled else None, seed=100 + i if sampled else None)
            engine.submit(r)
            submitted.append((r, events))
            time.sleep(0.002 * i)  # staggered arrivals join at different token boundaries
        for r, events in submitted:
            finish = _wait_finish(events)
            ref = generate(model, torch.tensor([r.prompt_ids]), max_new_tokens=r.max_tokens,
                           temperature=r.sampling.temperature, top_p=r.sampling.top_p, seed=r.seed,
                           eos_token_id=EOS)[0, len(r.prompt_ids):].tolist()
            assert r.generated == ref, f"{preset}: prompt of {len(r.prompt_ids)} tokens"
            assert finish.reason == ("stop" if ref[-1] == EOS else "length")
        total = sum(len(r.generated) for r, _ in submitted)
        assert engine.steps < total - len(submitted), "decode steps were not shared between sequences"
        assert engine.load() == (0, 0)
    finally:
        engine.stop()


def test_full_engine_raises_overloaded_with_a_retry_estimate():
    engine = Engine(tiny_model("tiny-mamba2"), max_concurrency=2, max_queue=1, max_len=4096)
    try:
        held = [_request([1, 2, 3], 4000) for _ in range(3)]
        for r, _ in held:
            engine.submit(r)
        with pytest.raises(Overloaded) as info:
            engine.submit(_request([1, 2, 3], 4)[0])
        assert info.value.retry_after_s >= 1
        for r, events in held:
            r.cancel()
            assert _wait_finish(events).reason == "cancelled"
        assert engine.load() == (0, 0)
        r, events = _request([5, 6], 3)  # the freed slots take new work
        engine.submit(r)
        assert _wait_finish(events).reason in ("length", "stop")
    finally:
        engine.stop()


def test_timed_out_sequence_frees_its_slot():
    engine = Engine(tiny_model("tiny-llama"), max_concurrency=1, max_queue=0, max_len=8192)
    try:
        r, events = _request([1, 2, 3], 8000, timeout_s=0.2)
        engine.submit(r)
        finish = _wait_finish(events)
        assert finish.reason == "timeout" and "0.2" in finish.message
        assert 0 < len(r.generated) < 8000
        assert engine.load() == (0, 0) and int(engine.pool.lengths.sum()) == 0
    finally:
        engine.stop()


def test_stop_cancels_what_the_grace_period_does_not_cover():
    engine = Engine(tiny_model("tiny-mamba2"), max_concurrency=2, max_queue=2, max_len=100_000)
    quick, quick_events = _request([1, 2], 3)
    slow, slow_events = _request([1, 2], 90_000)
    engine.submit(quick)
    engine.submit(slow)
    assert _wait_finish(quick_events).reason in ("length", "stop")
    start = time.monotonic()
    engine.stop(grace_s=0.2)
    assert time.monotonic() - start < 5
    assert _wait_finish(slow_events).reason == "cancelled"
