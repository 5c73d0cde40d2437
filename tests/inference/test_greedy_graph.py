"""Greedy feedback inside the decode graph (GraphedDecoder.begin_greedy / step_greedy) and generate's use of it:
its tokens equal those of an independent loop of the dynamic step and torch.argmax, for every family, batch 1 and
3, across KV-cache growth, in the eager fallback, and on a GPU from the captured graph. A run past its steps
raises before anything is written."""

from __future__ import annotations

import importlib

import pytest
import torch

from ssmkit.inference import allocate_cache, generate, generate_steps, prefill
from ssmkit.inference.graph_registry import clear_graphs, graphed_decoder, release_decoder
from ssmkit.inference.graphs import GraphedDecoder, _feed_back_logits
from ssmkit.ops.argmax_keys import EMPTY_KEY, argmax_keys, key_index
from tests.compare import assert_close
from tests.inference.models import CONFIGS, random_ids, tiny_model

generate_module = importlib.import_module("ssmkit.inference.generate")

NEW = 9  # tokens per run: the first from the prefill's logits, then NEW - 1 greedy steps
GPU_FAMILIES = ("mamba", "mamba2", "llama", "hybrid-moe", "jamba-like")


@torch.no_grad()
def eager_greedy(model, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: prefill into a cache of its own, then the dynamic model.step and torch.argmax, op by op.
    Returns tokens (batch, n) and the logits of the n - 1 steps (batch, n - 1, vocab)."""
    batch, prompt_len = prompt.shape
    cache = allocate_cache(model, batch, prompt_len + n)
    logits = prefill(model, prompt, cache, cuda_graph=False)
    tokens, step_logits = [torch.argmax(logits, dim=-1)], []
    for _ in range(n - 1):
        step_logits.append(model.step(tokens[-1], cache))
        tokens.append(torch.argmax(step_logits[-1], dim=-1))
    return torch.stack(tokens, 1), torch.stack(step_logits, 1)


@torch.no_grad()
def decoder_greedy(model, decoder: GraphedDecoder, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same run through the decoder's greedy feedback; also checks that its history holds the tokens."""
    decoder.reset()
    logits = prefill(model, prompt, decoder.state, cuda_graph=False)
    decoder.start(prompt.shape[1])
    first = torch.argmax(logits, dim=-1)
    decoder.begin_greedy(first, n - 1)
    tokens, step_logits = [first], []
    for _ in range(n - 1):
        token, logits = decoder.step_greedy()
        tokens.append(token.clone())
        step_logits.append(logits.clone())
    tokens = torch.stack(tokens, 1)
    assert torch.equal(decoder.greedy_history(), tokens)
    return tokens, torch.stack(step_logits, 1)


def assert_same_run(got, expected, name: str) -> None:
    assert torch.equal(got[0], expected[0]), f"{name}: tokens {got[0].tolist()} != {expected[0].tolist()}"
    assert_close(got[1], expected[1], name=f"{name} logits")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_feedback_of_the_static_step_picks_the_eager_argmax_tokens(name, batch):
    model = tiny_model(name).eval()
    prompt = random_ids(model.config.vocab_size, batch, 5)
    decoder = GraphedDecoder(model, batch, 5 + NEW, capture=False)
    assert_same_run(decoder_greedy(model, decoder, prompt, NEW), eager_greedy(model, prompt, NEW), name)


@pytest.mark.parametrize("name", ["llama", "hybrid-moe", "jamba-like"])
def test_greedy_feedback_keeps_its_history_and_input_across_kv_cache_growth(name):
    """A cache of 4 positions for 3 + 12: the run grows it at positions 4 and 8 (and 16 is not reached)."""
    model = tiny_model(name).eval()
    prompt = random_ids(model.config.vocab_size, 2, 3)
    decoder = GraphedDecoder(model, 2, 4, capture=False)
    got = decoder_greedy(model, decoder, prompt, 13)
    assert decoder.capacity == 16 and decoder.length == 15
    assert_same_run(got, eager_greedy(model, prompt, 13), f"{name} across growth")


def test_greedy_feedback_of_the_fallback_decoder_uses_the_dynamic_step_and_grows():
    model = tiny_model("jamba-like").eval()
    decoder = GraphedDecoder(model, 3, 6, capture=False)
    decoder.fallback_reason = "simulated"  # as _capture sets it when a step cannot be captured
    prompt = random_ids(model.config.vocab_size, 3, 4)
    calls = []
    decoder._greedy_step = lambda: calls.append(1)  # the static path must not run
    got = decoder_greedy(model, decoder, prompt, NEW)
    assert calls == [] and decoder.capacity == 12  # 4 + 8 positions: grown once
    assert_same_run(got, eager_greedy(model, prompt, NEW), "fallback")


def test_a_longer_run_reallocates_the_history_and_a_shorter_one_reuses_it():
    model = tiny_model("mamba2").eval()
    prompt = random_ids(model.config.vocab_size, 2, 3)
    decoder = GraphedDecoder(model, 2, 8, capture=False)
    for n, columns in ((5, 64), (70, 128), (65, 128)):
        assert_same_run(decoder_greedy(model, decoder, prompt, n), eager_greedy(model, prompt, n), f"{n} tokens")
        assert decoder.history.shape == (2, columns)


def test_a_greedy_run_past_its_steps_raises_before_writing():
    model = tiny_model("llama").eval()
    prompt = random_ids(model.config.vocab_size, 1, 4)
    decoder = GraphedDecoder(model, 1, 16, capture=False)
    decoder_greedy(model, decoder, prompt, 4)  # begun for 3 steps, all taken
    length, history = decoder.length, decoder.history.clone()
    with pytest.raises(RuntimeError, match="begun for 3 steps, all taken"):
        decoder.step_greedy()
    assert decoder.length == length and decoder.history_len == 4 and int(decoder.history_index) == 4
    assert torch.equal(decoder.history, history)


def test_step_greedy_needs_a_run_and_begin_greedy_checks_its_arguments():
    model = tiny_model("mamba").eval()
    decoder = GraphedDecoder(model, 2, 8, capture=False)
    with pytest.raises(RuntimeError, match="begin_greedy"):
        decoder.step_greedy()
    with pytest.raises(RuntimeError, match="begin_greedy"):
        decoder.greedy_history()
    tokens = torch.tensor([1, 2])
    for bad in (torch.tensor([1, 2, 3]), tokens.int(), [1, 2]):
        with pytest.raises(ValueError, match="tokens"):
            decoder.begin_greedy(bad, 3)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="steps"):
            decoder.begin_greedy(tokens, bad)
    decoder.begin_greedy(tokens, 3)
    decoder.step(tokens)  # feeds tokens of its own: the run's next input is gone
    with pytest.raises(RuntimeError, match="no greedy run"):
        decoder.step_greedy()
    decoder.begin_greedy(tokens, 3)
    decoder.reset()
    with pytest.raises(RuntimeError, match="no greedy run"):
        decoder.step_greedy()


def test_feedback_takes_the_first_maximal_index_and_writes_one_history_column():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    tokens, history, index = torch.zeros(3, dtype=torch.int64), torch.full((3, 4), -1), torch.tensor([2])
    keys = torch.full((3,), EMPTY_KEY)
    _feed_back_logits(logits, keys, tokens, history, index)
    assert tokens.tolist() == [1, 0, 2] and int(index) == 3 and (keys == EMPTY_KEY).all()
    assert history.tolist() == [[-1, -1, 1, -1], [-1, -1, 0, -1], [-1, -1, 2, -1]]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", ["mamba", "mamba2", "llama", "hybrid-moe", "all-mixers-moe"])
def test_step_with_argmax_keys_folds_the_argmax_of_its_own_logits(name, batch):
    """LanguageModel.step(argmax_keys=): the same logits as without, and the keys of those logits (static and
    dynamic step); keys already larger are kept."""
    model = tiny_model(name, torch.float32).eval()
    prompt = random_ids(model.config.vocab_size, batch, 4)
    with torch.no_grad():
        caches = [allocate_cache(model, batch, 8) for _ in range(2)]
        for cache in caches:
            prefill(model, prompt, cache, cuda_graph=False)
        tokens = random_ids(model.config.vocab_size, batch, seed=5)
        keys = torch.full((batch,), EMPTY_KEY)
        got = model.step(tokens, caches[0], torch.tensor([4]), argmax_keys=keys)
        plain = model.step(tokens, caches[1], torch.tensor([4]))
    assert torch.equal(got, plain), name
    assert torch.equal(keys, argmax_keys(plain)) and torch.equal(key_index(keys), torch.argmax(plain, -1)), name
    infinite = argmax_keys(torch.tensor([[float("inf")]])).expand(batch)  # above every finite logit's key
    larger = infinite.clone()
    with torch.no_grad():
        model.step(tokens, caches[0], argmax_keys=larger)  # the dynamic step
    assert torch.equal(larger, infinite), name


@pytest.fixture
def graph_path_on_cpu(monkeypatch):
    """generate takes the graph path on the CPU (the decoder's static step, eagerly); records which decoder
    steps run."""
    monkeypatch.setattr(generate_module, "_use_cuda_graph", lambda cuda_graph, device, model: cuda_graph is not False)
    calls = []
    for method in ("step", "step_greedy"):
        original = getattr(GraphedDecoder, method)
        monkeypatch.setattr(GraphedDecoder, method,
                            lambda self, *a, _f=original, _m=method: calls.append(_m) or _f(self, *a))
    yield calls
    clear_graphs()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", ["mamba", "mamba2", "llama", "hybrid-moe", "jamba-like", "all-mixers-moe"])
def test_generate_decodes_greedily_in_the_graph_and_returns_the_eager_tokens(graph_path_on_cpu, name, batch):
    model = tiny_model(name)
    prompt = random_ids(model.config.vocab_size, batch, 6)
    out = generate(model, prompt, max_new_tokens=NEW, cuda_graph=None)
    assert graph_path_on_cpu == ["step_greedy"] * (NEW - 1)
    expected = eager_greedy(model.eval(), prompt, NEW)[0]
    assert torch.equal(out, torch.cat([prompt, expected], 1)), name
    decoder = graphed_decoder(model, batch, 6 + NEW)  # released by generate
    assert decoder is not None
    release_decoder(model, decoder)


def test_generate_with_stop_tokens_or_sampling_keeps_the_per_step_path(graph_path_on_cpu):
    model = tiny_model("hybrid-moe")
    prompt = random_ids(model.config.vocab_size, 2, 5)
    generate(model, prompt, max_new_tokens=4, eos_token_id=[3], cuda_graph=None)
    generate(model, prompt, max_new_tokens=4, temperature=0.7, seed=1, cuda_graph=None)
    assert graph_path_on_cpu == ["step"] * 6


def test_generate_steps_of_the_greedy_graph_path_are_copies_with_the_eager_logits(graph_path_on_cpu):
    """The history's columns and the logits buffer are the decoder's: a later generation on the same decoder must
    not change the steps an earlier one yielded."""
    model = tiny_model("jamba-like")
    prompt = random_ids(model.config.vocab_size, 3, 5)
    steps = list(generate_steps(model, prompt, max_new_tokens=NEW, cuda_graph=None))
    tokens = torch.stack([s.tokens for s in steps], 1)
    logits = torch.stack([s.logits for s in steps[1:]], 1)
    expected = eager_greedy(model.eval(), prompt, NEW)
    assert_same_run((tokens, logits), expected, "generate_steps")
    generate(model, random_ids(model.config.vocab_size, 3, 5, seed=8), max_new_tokens=NEW, cuda_graph=None)
    assert_same_run((torch.stack([s.tokens for s in steps], 1), torch.stack([s.logits for s in steps[1:]], 1)),
                    expected, "generate_steps after another generation")
    assert graph_path_on_cpu == ["step_greedy"] * (2 * (NEW - 1))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", GPU_FAMILIES)
def test_cuda_graph_greedy_feedback_tokens_equal_the_eager_loop(name, batch):
    model = tiny_model(name, torch.float32).cuda().eval()
    prompt = random_ids(model.config.vocab_size, batch, 7).cuda()
    decoder = GraphedDecoder(model, batch, 7 + NEW)
    got = decoder_greedy(model, decoder, prompt, NEW)
    assert decoder.captured and decoder._greedy_graph is not None, f"{name}: the greedy step should be captured"
    assert_same_run(got, eager_greedy(model, prompt, NEW), f"{name} batch {batch} greedy graph")
    assert_same_run(decoder_greedy(model, decoder, prompt, NEW), eager_greedy(model, prompt, NEW),
                    f"{name} batch {batch} greedy graph, second run")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", GPU_FAMILIES)
def test_cuda_generate_greedy_tokens_equal_the_eager_loop(name, batch):
    model = tiny_model(name, torch.float32).cuda()
    prompt = random_ids(model.config.vocab_size, batch, 7).cuda()
    out = generate(model, prompt, max_new_tokens=NEW, cuda_graph=True)
    expected = eager_greedy(model.eval(), prompt, NEW)[0]
    assert torch.equal(out, torch.cat([prompt, expected], 1)), name
    assert torch.equal(generate(model, prompt, max_new_tokens=NEW, cuda_graph=False), out), name
    decoder = graphed_decoder(model, batch, 7 + NEW)
    assert decoder is not None and decoder._greedy_graph is not None, f"{name}: generate used the greedy graph"
    release_decoder(model, decoder)
    clear_graphs(model)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "jamba-like"])
def test_cuda_greedy_graph_is_captured_again_when_the_kv_caches_grow(name):
    model = tiny_model(name, torch.float32).cuda().eval()
    prompt = random_ids(model.config.vocab_size, 2, 3).cuda()
    decoder = GraphedDecoder(model, 2, 4)
    got = decoder_greedy(model, decoder, prompt, 13)
    assert decoder.capacity == 16 and decoder.captured and decoder._greedy_graph is not None
    assert_same_run(got, eager_greedy(model, prompt, 13), f"{name} greedy graph across growth")


@pytest.mark.gpu
def test_cuda_greedy_step_without_its_graph_replays_the_step_graph_and_takes_the_argmax_after(monkeypatch):
    """What a failed greedy capture leaves (simulated by skipping it)."""
    monkeypatch.setattr(GraphedDecoder, "_capture_greedy", lambda self: None)
    model = tiny_model("hybrid-moe", torch.float32).cuda().eval()
    prompt = random_ids(model.config.vocab_size, 3, 5).cuda()
    decoder = GraphedDecoder(model, 3, 5 + NEW)
    got = decoder_greedy(model, decoder, prompt, NEW)
    assert decoder.captured and decoder._greedy_graph is None
    assert_same_run(got, eager_greedy(model, prompt, NEW), "step graph + eager argmax")


def record_folds(monkeypatch) -> list:
    """Records every fold_argmax_keys call of the model and of norm_linear (the LM head's keys computed after it
    rather than in its epilogue)."""
    import ssmkit.models.lm as lm_module
    import ssmkit.ops.norm as norm_module

    calls = []
    for module in (lm_module, norm_module):
        original = module.fold_argmax_keys
        monkeypatch.setattr(module, "fold_argmax_keys",
                            lambda keys, logits, _f=original: calls.append(tuple(logits.shape)) or _f(keys, logits))
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", ["llama", "mamba", "mamba2", "hybrid-moe"])
def test_cuda_greedy_tokens_are_the_argmax_of_the_graph_logits_from_the_lm_head_epilogue(monkeypatch, name, batch,
                                                                                          dtype):
    """Each greedy token is torch.argmax of the step logits the graph returned (bfloat16's ties too); at batch 1
    the keys come from the LM head's epilogue (no fold after it, not even at capture), at batch 3 from the fold.
    The keys are empty after every step."""
    folds = record_folds(monkeypatch)
    model = tiny_model(name, dtype).cuda().eval()
    prompt = random_ids(model.config.vocab_size, batch, 7).cuda()
    decoder = GraphedDecoder(model, batch, 7 + NEW)
    tokens, logits = decoder_greedy(model, decoder, prompt, NEW)
    assert decoder._greedy_graph is not None, f"{name}: the greedy step should be captured"
    assert torch.equal(tokens[:, 1:], torch.argmax(logits, -1)), f"{name} {dtype} batch {batch}"
    assert (decoder.keys == EMPTY_KEY).all()
    assert (folds == []) == (batch == 1), f"{name} batch {batch}: folds {folds}"
    if dtype == torch.float32:
        assert_same_run((tokens, logits), eager_greedy(model, prompt, NEW), f"{name} batch {batch} vs eager")
