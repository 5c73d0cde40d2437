"""Requests admitted together are prefilled in one left-padded forward (or a few, by prefill_groups), and each
continues exactly as `generate` on its prompt alone: logits at every step (SlotPool, float64 and float32) and
tokens through the engine, for Mamba-2, Transformer++ and a Mamba-2/attention/MoE hybrid."""

from __future__ import annotations

import queue
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.inference import generate, generate_steps
from ssmkit.inference.sampling import SamplingConfig
from ssmkit.serve import Engine, GenerationRequest
from ssmkit.serve.engine import PAD_SLACK, prefill_groups
from ssmkit.serve.slots import SlotPool
from tests.compare import assert_close
from tests.serve.harness import EOS, tiny_model

PRESETS = ("tiny-mamba2", "tiny-llama", "tiny-hybrid-moe")


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("preset", PRESETS)
def test_prompts_prefilled_together_continue_step_by_step_as_each_alone(preset, dtype):
    model = tiny_model(preset).to(dtype)
    pool = SlotPool(model, n_slots=6, max_len=64)
    steps = 6
    with torch.no_grad():
        # Slots 4 and 0 first hold a padded batch, so the later lone prefill into slot 4 must clear its key mask.
        pool.prefill([_prompt(3, 90), _prompt(20, 91)], [4, 0])
        pool.release(4)
        pool.release(0)
        prompts = [_prompt(n, seed=n) for n in (1, 7, 13, 40, 2, 5)]  # 40: longer than the SSD chunk of 32
        slots = [3, 0, 5, 1, 2, 4]
        logits = torch.cat([pool.prefill(prompts[:5], slots[:5]), pool.prefill(prompts[5:], slots[5:])])
        alone = [list(generate_steps(model, torch.tensor([p]), max_new_tokens=steps, eos_token_id=[]))
                 for p in prompts]
        for t in range(steps):
            for b in range(len(prompts)):
                assert_close(logits[b], alone[b][t].logits[0], name=f"{preset} prompt {len(prompts[b])} step {t}")
            tokens = torch.zeros(pool.n_slots, dtype=torch.int64)
            tokens[slots] = torch.stack([alone[b][t].tokens[0] for b in range(len(prompts))])
            logits = model.step(tokens, pool.prefix(pool.n_slots))[slots]
            pool.advance(pool.n_slots, [])


def _request(prompt, max_tokens, seed=None):
    events: queue.Queue = queue.Queue()
    sampling = SamplingConfig(0.9, None, 0.8) if seed is not None else SamplingConfig()
    return GenerationRequest(prompt, max_tokens, events.put, sampling, seed=seed, eos=(EOS,)), events


def _run_together(engine: Engine, requests) -> list:
    """Submits every request before the engine thread can look (it waits on the same lock), so one loop
    iteration admits them all; returns each request's finish event."""
    with engine._cond:
        for r, _ in requests:
            engine.submit(r)
    finishes = []
    for _, events in requests:
        deadline = time.monotonic() + 60
        event = events.get(timeout=60)
        while event.kind != "finish":
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        finishes.append(event)
    return finishes


def _assert_equal_generate_alone(model, requests, label: str) -> None:
    for r, _ in requests:
        ref = generate(model, torch.tensor([r.prompt_ids]), max_new_tokens=r.max_tokens,
                       temperature=r.sampling.temperature, top_p=r.sampling.top_p, seed=r.seed,
                       eos_token_id=EOS)[0, len(r.prompt_ids):].tolist()
        assert r.generated == ref, f"{label}: prompt of {len(r.prompt_ids)} tokens"


@pytest.mark.parametrize("preset", PRESETS)
def test_requests_of_different_lengths_arriving_together_share_one_prefill(preset):
    model = tiny_model(preset)
    engine = Engine(model, max_concurrency=6, max_queue=0, max_len=64)
    try:
        lengths = (1, 4, 7, 9, 15, 12)  # within PAD_SLACK of each other: one batch
        requests = [_request(_prompt(n, seed=10 + n), 6 + n % 5, seed=7 if n == 9 else None) for n in lengths]
        _run_together(engine, requests)
        _assert_equal_generate_alone(model, requests, preset)
        assert (engine.prefills, engine.prefilled) == (1, len(lengths))
    finally:
        engine.stop()


@pytest.mark.parametrize("preset", PRESETS)
def test_a_warmed_up_engine_ran_every_shape_class_and_serves_the_same_tokens(preset):
    """Warm-up: batch sizes 1, 2, 4 and 6 (max_concurrency), prompts of 16 and 32 tokens (max_len 64 // 2), one
    decode step per batch size; the slots it used must leave no trace in the requests served after it."""
    model = tiny_model(preset)
    engine = Engine(model, max_concurrency=6, max_queue=0, max_len=64, warmup=True)
    try:
        stats = engine.warmup_stats
        assert (stats["prefills"], stats["steps"]) == (4 * 2, 4) and stats["seconds"] > 0
        assert engine.pool.lengths.tolist() == [0] * 6 and engine.pool.padded == [False] * 6
        lengths = (1, 4, 7, 9, 15, 12)
        requests = [_request(_prompt(n, seed=10 + n), 6 + n % 5, seed=7 if n == 9 else None) for n in lengths]
        _run_together(engine, requests)
        _assert_equal_generate_alone(model, requests, f"{preset} after warm-up")
        assert (engine.prefills, engine.prefilled) == (1, len(lengths))  # warm-up forwards are not counted
    finally:
        engine.stop()


def test_warm_up_keeps_each_prefill_within_max_prefill_tokens_and_half_of_max_len():
    model = tiny_model("tiny-llama")
    engine = Engine(model, max_concurrency=3, max_queue=0, max_len=100, max_prefill_tokens=70, warmup=True)
    try:
        # batch 1: 16, 32 (<= min(50, 70)); batch 2: 16, 32 (<= 35); batch 3: 16 (<= 23)
        assert (engine.warmup_stats["prefills"], engine.warmup_stats["steps"]) == (5, 3)
    finally:
        engine.stop()


@pytest.mark.parametrize("preset", PRESETS)
def test_one_long_prompt_is_prefilled_apart_from_the_short_ones(preset):
    model = tiny_model(preset)
    engine = Engine(model, max_concurrency=5, max_queue=0, max_len=128)
    try:
        requests = [_request(_prompt(n, seed=20 + n), 5) for n in (70, 1, 3, 5, 2)]
        _run_together(engine, requests)
        _assert_equal_generate_alone(model, requests, preset)
        assert (engine.prefills, engine.prefilled) == (2, 5)  # the long one alone, the four short ones together
    finally:
        engine.stop()


def test_prefill_batches_hold_at_most_max_prefill_tokens():
    model = tiny_model("tiny-llama")
    engine = Engine(model, max_concurrency=4, max_queue=0, max_len=64, max_prefill_tokens=20)
    try:
        requests = [_request(_prompt(10, seed=30 + i), 4) for i in range(4)]
        _run_together(engine, requests)
        _assert_equal_generate_alone(model, requests, "max_prefill_tokens=20")
        assert (engine.prefills, engine.prefilled) == (2, 4)
    finally:
        engine.stop()


def test_a_request_whose_slot_cannot_hold_the_padding_is_prefilled_alone():
    model = tiny_model("tiny-llama")
    engine = Engine(model, max_concurrency=2, max_queue=0, max_len=32)
    try:
        # The 4-token prompt asks for 29 new tokens: its slot has no room for 6 positions of padding.
        requests = [_request(_prompt(4, seed=40), 29), _request(_prompt(10, seed=41), 5)]
        _run_together(engine, requests)
        _assert_equal_generate_alone(model, requests, "full slot")
        assert engine.prefills == 2
    finally:
        engine.stop()


def test_a_request_that_fails_prefill_does_not_fail_the_ones_batched_with_it():
    model = tiny_model("tiny-mamba2")
    engine = Engine(model, max_concurrency=3, max_queue=0, max_len=64)
    try:
        bad, bad_events = _request([1, 2, model.config.vocab_size + 5], 4)  # an id outside the vocabulary
        good = [_request(_prompt(n, seed=50 + n), 4) for n in (2, 5)]
        finishes = _run_together(engine, good + [(bad, bad_events)])
        _assert_equal_generate_alone(model, good, "beside a bad request")
        assert finishes[-1].reason == "error" and "input_ids" in finishes[-1].message and bad.generated == []
        assert [f.reason for f in finishes[:-1]] == ["length", "length"]
        assert engine.load() == (0, 0)
    finally:
        engine.stop()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 60)), min_size=1, max_size=12),
       st.integers(1, 1000))
def test_prefill_groups_cover_every_request_once_within_the_limits(requests, max_prefill_tokens):
    lengths = [n for n, _ in requests]
    capacities = [n + extra for n, extra in requests]  # every slot holds at least its own prompt
    groups = prefill_groups(lengths, capacities, max_prefill_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        if len(g) > 1:
            assert len(g) * longest <= max_prefill_tokens
        for i in g:
            assert longest <= capacities[i]
            assert 2 * lengths[i] >= longest or longest - lengths[i] <= PAD_SLACK
