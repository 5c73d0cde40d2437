"""The static-shape decode step (what a CUDA graph captures), run eagerly on the CPU: its logits equal the dynamic
step's for every family, with left padding, per-row positions and a KV cache larger than what it holds; a
GraphedDecoder grows past its capacity without overflowing and keeps decoding the same logits."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import allocate_cache, prefill
from ssmkit.inference.graphs import GraphedDecoder, graph_cache_len
from ssmkit.layers.attention import Attention
from ssmkit.models import ModelConfig
from ssmkit.ops.attention.kv_cache import KVCache
from tests.compare import assert_close
from tests.inference.models import CONFIGS, check_decoder_follows_the_dynamic_step, random_ids, tiny_model


def dynamic_and_static_logits(model, prompt, mask, new_ids, static_len):
    """Prefills `prompt` into two states, then feeds new_ids (batch, n) by the dynamic step into a cache of just
    the needed size and by the static step into one of static_len positions; returns both (batch, n, vocab)."""
    batch, prompt_len = prompt.shape
    n = new_ids.shape[1]
    eager = allocate_cache(model, batch, prompt_len + n)
    static = allocate_cache(model, batch, static_len)
    prefill(model, prompt, eager, key_padding_mask=mask)
    prefill(model, prompt, static, key_padding_mask=mask)
    position = torch.tensor([prompt_len])
    a, b = [], []
    with torch.no_grad():
        for t in range(n):
            a.append(model.step(new_ids[:, t], eager))
            b.append(model.step(new_ids[:, t], static, position))
            position.add_(1)
    return torch.stack(a, 1), torch.stack(b, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_step_logits_equal_dynamic_step_for_every_family(name, dtype):
    model = tiny_model(name, dtype).eval()
    prompt = random_ids(model.config.vocab_size, 2, 7)
    new_ids = random_ids(model.config.vocab_size, 2, 5, seed=2)
    # A cache of 20 positions for 12 filled: the 8 unfilled ones must get zero weight.
    dynamic, static = dynamic_and_static_logits(model, prompt, None, new_ids, static_len=20)
    assert_close(static, dynamic, name=f"{name} static step logits")


@pytest.mark.parametrize("name", ["llama", "hybrid-moe", "jamba-like", "llama-partial-rope-bias"])
def test_static_step_ignores_left_padding_as_the_dynamic_step_does(name):
    model = tiny_model(name).eval()
    prompt = random_ids(model.config.vocab_size, 3, 6)
    mask = torch.tensor([[True] * 6, [False] * 5 + [True], [False, False] + [True] * 4])
    new_ids = random_ids(model.config.vocab_size, 3, 4, seed=3)
    dynamic, static = dynamic_and_static_logits(model, prompt, mask, new_ids, static_len=16)
    assert_close(static, dynamic, name=f"{name} padded static step logits")


def test_static_attention_step_with_per_row_positions_equals_the_per_row_dynamic_step():
    """Rows at different positions (as the serving engine's slots): position (batch,) selects each row's RoPE
    angle, write index and mask, like KVCache(per_row=True) lengths do in the dynamic step."""
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny-llama")
    attn = Attention(config).double().eval()
    hidden = torch.randn(2, 6, config.d_model, dtype=torch.float64)
    new = torch.randn(2, config.d_model, dtype=torch.float64)
    lengths = torch.tensor([6, 3])
    dyn = attn.allocate_state(2, 10, torch.float64, per_row=True)
    sta = attn.allocate_state(2, 10, torch.float64)
    with torch.no_grad():
        attn(hidden, dyn)
        attn(hidden, sta)
        dyn.kv.truncate(lengths)  # row 1 keeps its first 3 positions; the rest is stale and must be masked
        expected = attn.step(new, dyn)
        actual = attn.step(new, sta, lengths.clone())
    assert_close(actual, expected, name="per-row static attention step")


def test_static_step_position_of_every_row_equals_a_shared_position():
    model = tiny_model("llama").eval()
    prompt = random_ids(model.config.vocab_size, 3, 5)
    tokens = random_ids(model.config.vocab_size, 3, seed=4)
    out = []
    for position in (torch.tensor([5]), torch.tensor([5, 5, 5])):
        state = allocate_cache(model, 3, 9)
        prefill(model, prompt, state)
        with torch.no_grad():
            out.append(model.step(tokens, state, position))
    assert_close(out[1], out[0], name="per-row vs shared position")


def test_kv_cache_write_at_writes_one_position_and_rejects_a_bad_position():
    kv = KVCache(2, 5, 1, 4, dtype=torch.float64)
    k = torch.randn(2, 1, 1, 4, dtype=torch.float64)
    k_all, v_all = kv.write_at(torch.tensor([2, 4]), k, -k)
    assert k_all.shape == (2, 5, 1, 4) and kv.length == 0
    assert_close(k_all[0, 2], k[0, 0], name="row 0 at 2")
    assert_close(v_all[1, 4], -k[1, 0], name="row 1 at 4")
    assert k_all[0, 4].abs().sum() == 0 and k_all[1, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="position"):
        kv.write_at(torch.tensor([1, 2, 3]), k, k)
    with pytest.raises(ValueError, match="position"):
        kv.write_at(torch.tensor([1], dtype=torch.int32), k, k)


def test_int8_kv_cache_static_step_equals_the_dynamic_step_within_float32():
    """int8 storage rounds each key the same way in both paths (same quantizer, same values)."""
    model = tiny_model("llama", torch.float32).eval()
    prompt = random_ids(model.config.vocab_size, 2, 6)
    tokens = random_ids(model.config.vocab_size, 2, seed=5)
    eager = allocate_cache(model, 2, 7, kv_dtype=torch.int8)
    static = allocate_cache(model, 2, 12, kv_dtype=torch.int8)
    prefill(model, prompt, eager)
    prefill(model, prompt, static)
    with torch.no_grad():
        assert_close(model.step(tokens, static, torch.tensor([6])), model.step(tokens, eager), name="int8 static")


@pytest.mark.parametrize("name", ["llama", "hybrid-moe", "mamba2"])
def test_decoder_grows_past_its_capacity_and_keeps_the_dynamic_step_logits(name):
    model = tiny_model(name).eval()
    prompt = random_ids(model.config.vocab_size, 2, 3)
    new_ids = random_ids(model.config.vocab_size, 2, 9, seed=6)
    decoder = GraphedDecoder(model, 2, 4, capture=False)
    assert not decoder.captured
    check_decoder_follows_the_dynamic_step(model, decoder, prompt, new_ids, name)  # positions 3..11: past 4, 8
    assert decoder.length == 12
    if name == "mamba2":
        assert decoder.capacity is None
    else:
        assert decoder.capacity == 16 and all(s.kv.length == 12 for s in decoder.state if hasattr(s, "kv"))


def test_decoder_reset_forgets_the_previous_sequence():
    model = tiny_model("hybrid-moe").eval()
    decoder = GraphedDecoder(model, 1, 8, capture=False)
    prompt = random_ids(model.config.vocab_size, 1, 4)
    tok = random_ids(model.config.vocab_size, 1, seed=7)
    runs = []
    for _ in range(2):
        decoder.reset()
        prefill(model, prompt, decoder.state)
        decoder.start(4)
        runs.append(decoder.step(tok).clone())
    assert torch.equal(runs[0], runs[1])
    ssm = [t for s in decoder.state for t in vars(s).values() if isinstance(t, torch.Tensor) and t.dtype != torch.bool]
    assert ssm and any(t.count_nonzero() for t in ssm)  # the step left state behind
    decoder.reset()
    assert not any(t.count_nonzero() for t in ssm)  # zeroed in place (one multi-tensor launch)
    assert all(s.kv.length == 0 for s in decoder.state if hasattr(s, "kv"))


def test_decoder_rejects_bad_sizes_and_capture_on_cpu():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="batch"):
        GraphedDecoder(model, 0, 8)
    with pytest.raises(ValueError, match="max_len"):
        GraphedDecoder(model, 1, 0)
    with pytest.raises(ValueError, match="capture"):
        GraphedDecoder(model, 1, 8, capture=True)
    decoder = GraphedDecoder(model, 1, 8)
    with pytest.raises(ValueError, match="length"):
        decoder.start(9)


@pytest.mark.parametrize("needed, expected", [(1, 256), (256, 256), (257, 512), (4096, 4096), (4097, 4608),
                                              (70000, 73728)])
def test_graph_cache_len_rounds_up_by_less_than_256_or_an_eighth(needed, expected):
    got = graph_cache_len(needed)
    assert got == expected and 0 <= got - needed < max(256, needed / 8)
