"""RoPE tables and rotation against transformers (Llama, StableLM partial rotary) and the complex-number form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, StableLmConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.stablelm.modeling_stablelm import StableLmRotaryEmbedding

from ssmkit.ops.attention import apply_rotary, rotary_cos_sin
from tests.compare import assert_close

F64 = torch.float64


def rotary_complex(x, positions, base, rotary_dim):
    """float64 closed form: channel pair (i, i + rotary_dim/2) is the complex number x_i + j x_{i+rd/2},
    multiplied by exp(j * position * base^(-2i/rotary_dim)). x (batch, seqlen, nheads, headdim)."""
    half = rotary_dim // 2
    theta = base ** (-2 * torch.arange(half, dtype=F64) / rotary_dim)
    angle = positions.to(F64)[..., None] * theta  # (..., seqlen, half)
    rot = torch.polar(torch.ones_like(angle), angle).unsqueeze(-2)  # (..., seqlen, 1, half)
    z = torch.complex(x[..., :half].double(), x[..., half:rotary_dim].double()) * rot
    return torch.cat([z.real, z.imag, x[..., rotary_dim:].double()], dim=-1)


@pytest.mark.parametrize("headdim, base", [(16, 10000.0), (64, 500000.0), (6, 10000.0)])
def test_cos_sin_equal_transformers_llama_rotary_embedding(headdim, base):
    config = LlamaConfig(hidden_size=headdim * 2, num_attention_heads=2, head_dim=headdim, rope_theta=base)
    positions = torch.tensor([[0, 1, 2, 3, 4000], [7, 8, 9, 10, 11]])
    want_cos, want_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), positions)
    cos, sin = rotary_cos_sin(positions, headdim, base)
    assert_close(cos, want_cos, tol=(0.0, 0.0))  # the same float32 operations: bitwise equal
    assert_close(sin, want_sin, tol=(0.0, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_equals_transformers_apply_rotary_pos_emb(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 4, 32, generator=g).to(dtype)
    k = torch.randn(2, 7, 2, 32, generator=g).to(dtype)
    cos, sin = rotary_cos_sin(torch.arange(3, 10).expand(2, 7), 32, dtype=dtype)
    # transformers' layout here is (batch, seqlen, heads, headdim), so its cos/sin unsqueeze at dim 2.
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    assert_close(apply_rotary(q, cos, sin), want_q, tol=(0.0, 0.0))  # same operations: bitwise equal
    assert_close(apply_rotary(k, cos, sin), want_k, tol=(0.0, 0.0))


def test_partial_rotary_equals_transformers_stablelm():
    headdim, factor = 32, 0.25
    config = StableLmConfig(hidden_size=headdim * 2, num_attention_heads=2, partial_rotary_factor=factor)
    rotary_dim = int(headdim * factor)
    positions = torch.arange(6)[None]
    want_cos, want_sin = StableLmRotaryEmbedding(config)(torch.zeros(1), positions)
    cos, sin = rotary_cos_sin(positions, headdim, rotary_dim=rotary_dim)
    assert_close(cos, want_cos, tol=(0.0, 0.0))  # the same float32 operations: bitwise equal
    assert_close(sin, want_sin, tol=(0.0, 0.0))
    q = torch.randn(1, 6, 2, headdim, generator=torch.Generator().manual_seed(1))
    # StableLM rotates the first rotary_ndims channels and concatenates the rest unchanged.
    q_rot, _ = apply_rotary_pos_emb(q[..., :rotary_dim], q[..., :rotary_dim], want_cos, want_sin, unsqueeze_dim=2)
    assert_close(apply_rotary(q, cos, sin), torch.cat([q_rot, q[..., rotary_dim:]], -1), tol=(0.0, 0.0))


@pytest.mark.parametrize("rotary_dim", [None, 4, 10])
def test_rotation_in_float64_equals_complex_multiplication(rotary_dim):
    x = torch.randn(2, 5, 3, 10, dtype=F64, generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0, 1, 2, 3, 4], [10, 20, 30, 40, 50]])
    cos, sin = rotary_cos_sin(positions, 10, 100.0, dtype=F64, rotary_dim=rotary_dim)
    assert_close(apply_rotary(x, cos, sin), rotary_complex(x, positions, 100.0, rotary_dim or 10))


def test_scores_depend_only_on_the_position_difference():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 16, dtype=F64, generator=g), torch.randn(1, 1, 1, 16, dtype=F64, generator=g)

    def score(m, n):
        cos_m, sin_m = rotary_cos_sin(torch.tensor([m]), 16, dtype=F64)
        cos_n, sin_n = rotary_cos_sin(torch.tensor([n]), 16, dtype=F64)
        return (apply_rotary(q, cos_m, sin_m) * apply_rotary(k, cos_n, sin_n)).sum().reshape(1)

    assert_close(score(7, 3), score(104, 100))
    assert_close(score(0, 0), (q * k).sum().reshape(1))


@settings(max_examples=20, deadline=None)
@given(seqlen=st.integers(1, 9), half=st.integers(1, 6), extra=st.integers(0, 5), batch=st.integers(1, 2))
def test_awkward_shapes_equal_complex_multiplication(seqlen, half, extra, batch):
    headdim = 2 * half + extra
    x = torch.randn(batch, seqlen, 2, headdim, dtype=F64)
    positions = torch.arange(seqlen) * 3
    cos, sin = rotary_cos_sin(positions, headdim, dtype=F64, rotary_dim=2 * half)
    assert_close(apply_rotary(x, cos, sin), rotary_complex(x, positions, 10000.0, 2 * half))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: rotary_cos_sin(torch.arange(3), 8, rotary_dim=5), "rotary_dim"),
        (lambda: rotary_cos_sin(torch.arange(3), 8, rotary_dim=10), "rotary_dim"),
        (lambda: rotary_cos_sin(torch.zeros(1, 2, 3), 8), "positions"),
        (lambda: rotary_cos_sin(torch.arange(3), 0), "headdim"),
        (lambda: apply_rotary(torch.zeros(1, 3, 8), torch.zeros(3, 8), torch.zeros(3, 8)), "x"),
        (lambda: apply_rotary(torch.zeros(1, 3, 2, 8), torch.zeros(4, 8), torch.zeros(4, 8)), "cos"),
        (lambda: apply_rotary(torch.zeros(1, 3, 2, 8), torch.zeros(3, 10), torch.zeros(3, 10)), "cos"),
        (lambda: apply_rotary(torch.zeros(1, 3, 2, 8), torch.zeros(3, 8), torch.zeros(3, 6)), "sin"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_rotary_table_is_rotary_cos_sin_of_every_position_and_grows_without_freeing():
    from ssmkit.ops.attention import rotary

    args = dict(headdim=24, base=500.0, dtype=torch.float32, rotary_dim=16)
    assert rotary.rotary_table(37, **args, build=False) is None  # a key no other test uses
    table = rotary.rotary_table(37, **args)
    cos, sin = rotary_cos_sin(torch.arange(37), 24, 500.0, rotary_dim=16)
    assert table.shape == (2, 37, 16) and torch.equal(table[0], cos) and torch.equal(table[1], sin)
    retired = len(rotary._RETIRED)
    longer = rotary.rotary_table(100, **args)
    cos, sin = rotary_cos_sin(torch.arange(100), 24, 500.0, rotary_dim=16)
    assert torch.equal(longer[0], cos) and torch.equal(longer[1], sin)
    assert len(rotary._RETIRED) == retired + 1  # the 64-position table stays alive for graphs that read it
    assert rotary.rotary_table(90, **args, build=False).data_ptr() == longer.data_ptr()
    assert rotary.rotary_table(1000, **args, build=False) is None
