"""Sampling: the top-k / top-p filters against hand computations and transformers' warpers, the sampler's empirical
distribution against the filtered softmax, and seeded reproducibility of generate."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.inference import SamplingConfig, filtered_logits, generate, next_token, top_k_filter, top_p_filter
from tests.inference.models import random_ids, tiny_model

INF = float("inf")


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_largest_and_their_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert kept(top_k_filter(logits, 1)) == [1, 3]  # two logits tie for first place: both stay
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert kept(top_k_filter(logits, 3)) == [1, 2, 3]
    assert kept(top_k_filter(logits, 99)) == [0, 1, 2, 3, 4]
    assert torch.equal(top_k_filter(logits, 3)[0, [1, 2, 3]], logits[0, [1, 2, 3]])  # kept values unchanged


def test_top_p_keeps_the_shortest_prefix_reaching_p_by_hand():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=torch.float64)  # ranked: 1 (0.5), 3 (0.3), 0, 2
    logits = probs.log()[None]
    assert kept(top_p_filter(logits, 0.3)) == [1]  # the top token alone reaches 0.3
    assert kept(top_p_filter(logits, 0.6)) == [1, 3]  # 0.5 < 0.6 <= 0.8
    assert kept(top_p_filter(logits, 0.79)) == [1, 3]
    assert kept(top_p_filter(logits, 0.81)) == [0, 1, 3]  # 0.8 < 0.81 <= 0.95
    assert kept(top_p_filter(logits, 0.96)) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 1e-9)) == [1]  # at least one token always survives


@pytest.mark.parametrize("top_k, top_p", [(5, None), (None, 0.7), (12, 0.9), (3, 0.2), (None, 1.0)])
def test_filters_match_transformers_warpers(top_k, top_p):
    transformers = pytest.importorskip("transformers")
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(3)) * 3
    ours = filtered_logits(logits, SamplingConfig(temperature=0.7, top_k=top_k, top_p=top_p))
    theirs = TemperatureLogitsWarper(0.7)(None, logits.clone())
    if top_k is not None:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p is not None:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    finite = torch.isfinite(ours)
    assert torch.equal(ours[finite], theirs[finite])
    del transformers


@pytest.mark.parametrize("config", [SamplingConfig(1.0), SamplingConfig(0.7, top_k=4),
                                    SamplingConfig(1.3, top_p=0.8), SamplingConfig(0.9, top_k=5, top_p=0.9)])
def test_samples_follow_the_filtered_distribution(config):
    n = 40_000
    logits = torch.tensor([2.0, 0.5, 1.5, -1.0, 0.0, 1.0, -0.5, 1.2], dtype=torch.float64)
    target = torch.softmax(filtered_logits(logits[None], config), -1)[0]
    draws = next_token(logits.expand(n, -1), config, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=logits.numel()).double() / n
    support = (target > 0).nonzero().flatten().tolist()
    assert sorted(set(draws.tolist())) == support  # nothing outside the filtered support, everything inside it
    # Each frequency is a mean of n Bernoulli(p) draws: within 5 standard deviations, sqrt(p (1 - p) / n).
    sigma = (target * (1 - target) / n).sqrt()
    worst = ((freq - target).abs() / sigma.clamp(min=1e-12))[target > 0].max().item()
    assert worst < 5, f"a frequency is {worst:.1f} sigma from its probability: freq={freq} target={target}"


def test_greedy_takes_the_first_maximal_logit_whatever_the_generator():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 5.0, 5.0]])
    assert next_token(logits, SamplingConfig(0.0, top_k=1, top_p=0.5)).tolist() == [1, 0]


def test_same_seed_same_tokens_other_seed_other_tokens_and_the_global_rng_untouched():
    model = tiny_model("hybrid-moe")
    prompt = random_ids(model.config.vocab_size, 2, 5)
    kwargs = dict(max_new_tokens=16, temperature=1.5, top_k=50, top_p=0.95)
    rng_before = torch.get_rng_state()
    a = generate(model, prompt, seed=7, **kwargs)
    b = generate(model, prompt, seed=7, **kwargs)
    c = generate(model, prompt, seed=8, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Unseeded sampling draws from torch's global RNG, so torch.manual_seed makes it repeatable too.
    torch.manual_seed(1)
    d = generate(model, prompt, **kwargs)
    torch.manual_seed(1)
    assert torch.equal(d, generate(model, prompt, **kwargs))


def test_top_k_one_sampling_equals_greedy():
    model = tiny_model("mamba2")
    prompt = random_ids(model.config.vocab_size, 2, 5)
    greedy = generate(model, prompt, max_new_tokens=10)
    assert torch.equal(generate(model, prompt, max_new_tokens=10, temperature=2.0, top_k=1, seed=3), greedy)
    tiny_p = generate(model, prompt, max_new_tokens=10, temperature=2.0, top_p=1e-6, seed=3)
    assert torch.equal(tiny_p, greedy)


def test_low_temperature_concentrates_on_the_argmax():
    logits = torch.tensor([[1.0, 1.1, 0.9]])
    probs = torch.softmax(filtered_logits(logits, SamplingConfig(0.01)), -1)
    assert math.isclose(probs[0, 1].item(), 1.0, rel_tol=0, abs_tol=1e-4)
