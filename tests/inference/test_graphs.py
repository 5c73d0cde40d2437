"""generate through a GraphedDecoder: the same tokens and logits as the eager step for every family. On the CPU the
decoder runs its static step eagerly (forced with monkeypatch, since cuda_graph=True needs CUDA); on a GPU it
captures and replays a CUDA graph, or falls back to the eager step with one warning where capture is impossible.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from ssmkit.inference import generate, generate_steps, left_pad
from ssmkit.inference.graph_registry import (clear_graphs, eager_only, eager_reason, graph_keys, graphed_decoder,
                                             release_decoder)
from ssmkit.inference.graphs import GraphedDecoder
from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close
from tests.inference.models import check_decoder_follows_the_dynamic_step, random_ids, tiny_model

generate_module = importlib.import_module("ssmkit.inference.generate")

HYBRID = ModelConfig.from_name("tiny-hybrid-moe", feed_forwards="mlp")  # the same pattern without MoE
FAMILIES = ("mamba", "mamba2", "llama", "hybrid", "hybrid-moe")


def family_model(name: str, dtype=torch.float64) -> LanguageModel:
    """The tiny presets (tiny-mamba, tiny-mamba2, tiny-llama, tiny-hybrid-moe) and that hybrid with MLPs."""
    if name != "hybrid":
        return tiny_model(name, dtype)
    torch.manual_seed(0)
    model = LanguageModel(HYBRID)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.lm_head.weight.mul_(10.0)
    return model.to(dtype)


@pytest.fixture
def static_on_cpu(monkeypatch):
    """generate takes the graph path on the CPU (the decoder's static step, eagerly); counts its steps."""
    monkeypatch.setattr(generate_module, "_use_cuda_graph", lambda cuda_graph, device, model: cuda_graph is not False)
    calls = []
    original = GraphedDecoder._static_step
    monkeypatch.setattr(GraphedDecoder, "_static_step", lambda self, **kw: calls.append(1) or original(self, **kw))
    yield calls
    clear_graphs()


def both_paths(model, ids, **kwargs):
    eager = list(generate_steps(model, ids, cuda_graph=False, **kwargs))
    graph = list(generate_steps(model, ids, cuda_graph=None, **kwargs))
    return eager, graph


def assert_same(eager, graph, name):
    assert len(eager) == len(graph)
    assert torch.equal(torch.stack([s.tokens for s in graph], 1), torch.stack([s.tokens for s in eager], 1)), name
    assert_close(torch.stack([s.logits for s in graph], 1), torch.stack([s.logits for s in eager], 1), name=name)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("case", ["left-padded", "batch-1", "prompt-length-1"])
def test_static_decode_generates_the_eager_greedy_tokens(static_on_cpu, name, case):
    model = family_model(name)
    vocab = model.config.vocab_size
    mask = None
    if case == "left-padded":
        ids, mask = left_pad([random_ids(vocab, n, seed=n).tolist() for n in (5, 1, 8)])
    elif case == "batch-1":
        ids = random_ids(vocab, 1, 6)
    else:
        ids = random_ids(vocab, 2, 1)
    eager, graph = both_paths(model, ids, attention_mask=mask, max_new_tokens=7)
    assert len(static_on_cpu) == 6  # every decode step after the first token went through the static step
    assert_same(eager, graph, f"{name} {case}")


def test_static_decode_reuses_one_decoder_across_prompts_of_nearby_lengths(static_on_cpu):
    """A padded call, then unpadded ones of other lengths in the same cache bucket: reset must clear the padding
    mask and the SSM states the earlier call left."""
    model = family_model("hybrid")
    vocab = model.config.vocab_size
    ids, mask = left_pad([random_ids(vocab, 9, seed=1).tolist(), random_ids(vocab, 2, seed=2).tolist()])
    calls = [(ids, mask), (random_ids(vocab, 2, 4), None), (random_ids(vocab, 2, 11, seed=3), None)]
    for ids, mask in calls:
        eager, graph = both_paths(model, ids, attention_mask=mask, max_new_tokens=5)
        assert_same(eager, graph, f"prompt length {ids.shape[1]}")
    assert graph_keys(model) == [(2, 256, torch.float64, None)]


def test_static_decode_with_stop_tokens_sampling_and_chunked_prefill_matches_eager(static_on_cpu):
    model = family_model("hybrid-moe")
    ids = random_ids(model.config.vocab_size, 3, 7)
    kwargs = dict(max_new_tokens=12, temperature=1.1, top_k=30, seed=5, eos_token_id=[3, 7, 11],
                  prefill_chunk_size=3)
    eager, graph = both_paths(model, ids, **kwargs)
    assert_same(eager, graph, "sampled with stops")
    assert torch.equal(torch.stack([s.finished for s in graph]), torch.stack([s.finished for s in eager]))


def test_static_decode_respects_an_exact_max_cache_len(static_on_cpu):
    model = family_model("llama")
    ids = random_ids(model.config.vocab_size, 2, 5)
    eager, graph = both_paths(model, ids, max_new_tokens=4, max_cache_len=8)
    assert_same(eager, graph, "max_cache_len=8")
    decoder = graphed_decoder(model, 2, 8, exact=True)
    assert decoder.capacity == 8


def test_cuda_graph_true_on_cpu_raises_and_bad_values_are_rejected():
    model = family_model("mamba")
    ids = random_ids(model.config.vocab_size, 1, 3)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(model, ids, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(model, ids, cuda_graph="yes")
    assert torch.equal(generate(model, ids, cuda_graph=False), generate(model, ids))


def test_eager_only_keeps_a_cuda_model_off_graphs_and_refuses_cuda_graph_true():
    """The decision generate() makes for a CUDA device (no GPU needed: only the device type is read)."""
    model, cuda = family_model("mamba"), torch.device("cuda")
    decide = generate_module._use_cuda_graph
    assert decide(None, cuda, model) and decide(True, cuda, model) and not decide(False, cuda, model)
    with eager_only(model, "a test observes the layer calls"):
        with eager_only(model, "an inner observer"):
            assert eager_reason(model) == "an inner observer"
        assert eager_reason(model) == "a test observes the layer calls"
        assert not decide(None, cuda, model) and not decide(False, cuda, model)
        with pytest.raises(ValueError, match="while a test observes the layer calls, got True"):
            decide(True, cuda, model)
    assert eager_reason(model) is None and decide(None, cuda, model)


def test_registry_gives_one_decoder_per_key_none_while_busy_and_a_new_one_after_to():
    model = family_model("llama")
    a = graphed_decoder(model, 2, 100)
    assert a.capacity == 256
    assert graphed_decoder(model, 2, 200) is None  # same key (256 positions), still in use
    release_decoder(model, a)
    assert graphed_decoder(model, 2, 200) is a
    release_decoder(model, a)
    assert graphed_decoder(model, 3, 200) is not a
    model.to(torch.float32)  # new parameter tensors: every graph of the old ones is stale
    b = graphed_decoder(model, 2, 200)
    assert b is not a and b.state[0].kv.k.dtype == torch.float32
    clear_graphs(model)


def test_idle_decoders_past_the_byte_budget_go_least_recently_used_first(monkeypatch):
    """Decoders of batch x capacity = 256 positions (equal bytes) under a budget of two of them: releasing a
    third drops the oldest idle one; a busy one is never dropped; one bigger than the budget is not kept idle."""
    registry_module = importlib.import_module("ssmkit.inference.graph_registry")
    model = family_model("llama")

    def decoder(batch, capacity):
        return graphed_decoder(model, batch, capacity, exact=True)

    def kept():
        return [k[:2] for k in graph_keys(model)]

    a = decoder(1, 256)
    per_decoder = a.nbytes
    monkeypatch.setattr(registry_module, "idle_budget", lambda m: 2 * per_decoder)
    b, c = decoder(2, 128), decoder(4, 64)
    assert b.nbytes == c.nbytes == per_decoder > 0
    for d in (a, b, c):
        release_decoder(model, d)
    assert kept() == [(2, 128), (4, 64)]  # a, the least recently used, went
    d = decoder(8, 32)  # busy: the idle ones stay within the budget without it
    assert kept() == [(2, 128), (4, 64), (8, 32)]
    release_decoder(model, d)  # three idle: b goes
    assert kept() == [(4, 64), (8, 32)]
    big = decoder(3, 128)  # 1.5x: within the budget alone
    release_decoder(model, big)
    assert kept() == [(3, 128)]
    monkeypatch.setattr(registry_module, "idle_budget", lambda m: per_decoder // 2)
    huge = decoder(1, 256)
    assert kept() == [(1, 256)]  # busy: kept whatever its size
    release_decoder(model, huge)
    assert kept() == []
    clear_graphs(model)


def _model_with_an_idle_decoder():
    """A tiny Llama with one released decoder, and a reader of how many decoders the registry keeps (for use
    inside GraphedDecoder.__init__, where graph_keys would wait on the lock graphed_decoder holds)."""
    registry_module = importlib.import_module("ssmkit.inference.graph_registry")
    model = family_model("llama")
    release_decoder(model, graphed_decoder(model, 1, 256))
    return model, lambda: len(registry_module._REGISTRY.by_model[model]["decoders"])


def test_a_decoder_that_runs_out_of_memory_drops_the_idle_ones_and_tries_once_more(monkeypatch):
    model, kept = _model_with_an_idle_decoder()
    original, calls = GraphedDecoder.__init__, []

    def out_of_memory_once(self, *args, **kwargs):
        calls.append(kept())  # decoders kept when this allocation starts
        if len(calls) == 1:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        original(self, *args, **kwargs)

    monkeypatch.setattr(GraphedDecoder, "__init__", out_of_memory_once)
    fresh = graphed_decoder(model, 2, 256)
    assert calls == [1, 0] and fresh is not None and [k[:2] for k in graph_keys(model)] == [(2, 256)]
    release_decoder(model, fresh)
    calls.clear()

    def always_out_of_memory(self, *args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("simulated: still out of memory")

    monkeypatch.setattr(GraphedDecoder, "__init__", always_out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="still out of memory"):
        graphed_decoder(model, 3, 256)
    assert len(calls) == 2 and graph_keys(model) == []
    clear_graphs(model)


def test_a_capture_that_runs_out_of_memory_is_retried_and_never_marks_the_model_uncapturable(monkeypatch):
    """Capture out of memory is simulated as _capture reports it (fallback_reason "OutOfMemoryError: ...")."""
    registry_module = importlib.import_module("ssmkit.inference.graph_registry")
    model, kept = _model_with_an_idle_decoder()
    original, made = GraphedDecoder.__init__, []

    def capture_out_of_memory(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(kept())
        if len(made) <= failures:
            self.fallback_reason = "OutOfMemoryError: simulated: CUDA out of memory"

    monkeypatch.setattr(GraphedDecoder, "__init__", capture_out_of_memory)
    failures = 1  # the first capture fails: idle decoders go, the second succeeds
    fresh = graphed_decoder(model, 2, 256)
    assert made == [1, 0] and fresh is not None and fresh.fallback_reason is None
    release_decoder(model, fresh)
    made.clear()
    failures = 2  # both fail: this generation decodes eagerly, and the next one tries again
    assert graphed_decoder(model, 3, 256) is None and len(made) == 2
    assert registry_module._REGISTRY.by_model[model]["failed"] is None
    failures = 0
    assert graphed_decoder(model, 3, 256) is not None
    clear_graphs(model)


def test_a_model_that_cannot_be_captured_decodes_eagerly_and_is_not_tried_again(static_on_cpu, monkeypatch):
    """Capture failure is simulated by a decoder that reports a fallback reason, as _capture sets it on a GPU."""
    built = []
    original = GraphedDecoder.__init__

    def failing_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)
        self.fallback_reason = "RuntimeError: simulated host read"

    monkeypatch.setattr(GraphedDecoder, "__init__", failing_init)
    model = family_model("hybrid")
    ids = random_ids(model.config.vocab_size, 2, 5)
    eager, graph = both_paths(model, ids, max_new_tokens=4)
    assert_same(eager, graph, "fallback")
    both_paths(model, ids, max_new_tokens=4)
    assert len(built) == 1 and graph_keys(model) == [] and static_on_cpu == []


def test_a_fallback_decoder_steps_with_the_dynamic_step():
    model = family_model("hybrid").eval()
    decoder = GraphedDecoder(model, 2, 6, capture=False)
    decoder.fallback_reason = "simulated"
    prompt = random_ids(model.config.vocab_size, 2, 4)
    new_ids = random_ids(model.config.vocab_size, 2, 4, seed=9)  # past 6 positions: the fallback grows too
    check_decoder_follows_the_dynamic_step(model, decoder, prompt, new_ids, "fallback")


@pytest.mark.gpu
@pytest.mark.parametrize("name", FAMILIES + ("s4", "jamba-like", "all-mixers-moe", "llama-partial-rope-bias"))
def test_cuda_graph_tokens_equal_eager_tokens_for_every_family(name):
    model = (family_model(name, torch.float32) if name in FAMILIES else tiny_model(name, torch.float32)).cuda()
    vocab = model.config.vocab_size
    ids, mask = left_pad([random_ids(vocab, n, seed=n).tolist() for n in (6, 1, 9)], device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # S4 steps are not capturable: the one-time fallback warning
        eager, graph = both_paths(model, ids, attention_mask=mask, max_new_tokens=9)
        single = both_paths(model, ids[:1, -1:], max_new_tokens=5)
    assert_same(eager, graph, f"{name} cuda graph, padded batch")
    assert_same(*single, f"{name} cuda graph, batch 1, prompt length 1")
    decoder = graphed_decoder(model, 3, 18)
    # S4's step checks values on the host (layers/s4.py), so models with S4 layers decode eagerly.
    if name not in ("s4", "all-mixers-moe"):
        assert decoder is not None and decoder.captured, f"{name}: the step should be capturable"
    if decoder is not None:
        release_decoder(model, decoder)
    clear_graphs(model)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "hybrid"])
def test_cuda_graph_decoder_grows_and_recaptures_past_its_capacity(name):
    model = family_model(name, torch.float32).cuda().eval()
    prompt = random_ids(model.config.vocab_size, 2, 3).cuda()
    new_ids = random_ids(model.config.vocab_size, 2, 7, seed=6).cuda()
    decoder = GraphedDecoder(model, 2, 4)
    assert decoder.captured
    check_decoder_follows_the_dynamic_step(model, decoder, prompt, new_ids, name)
    assert decoder.captured and decoder.capacity == 16


@pytest.mark.gpu
def test_cuda_graph_bfloat16_logits_stay_within_bfloat16_of_the_eager_step():
    model = family_model("hybrid", torch.bfloat16).cuda()
    ids = random_ids(model.config.vocab_size, 4, 12).cuda()
    eager, graph = both_paths(model, ids, max_new_tokens=1 + 1)
    assert torch.equal(eager[0].tokens, graph[0].tokens)  # the first token comes from the shared prefill
    assert_close(graph[1].logits, eager[1].logits, name="bf16 graph step")
    clear_graphs(model)
