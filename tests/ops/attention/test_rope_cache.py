"""rope_and_cache: the static decode step's RoPE and KV-cache write. The torch reference against rotary_cos_sin at
each row's position and a per-row write; the Triton kernel against the reference bit for bit in 16-bit dtypes.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys

import pytest
import torch

from ssmkit.ops.attention import apply_rotary, rope_and_cache, rotary_cos_sin, rotary_table
from tests.compare import assert_close
from tests.ops.selective_scan.test_triton import expect, interpreted_main, run_interpreted

INTERPRETER_CASES = ("matches_reference", "awkward_shapes")


def make_inputs(batch, nheads, nkv_heads, headdim, max_len, *, rotary_dim=None, rope=True, shared=False,
                dtype=torch.float32, masked=True, seed=0, device="cpu"):
    """q, k, v of one token, zero caches, a RoPE table longer than the cache (a view, as rotary_table returns
    when a longer one exists), positions in [0, max_len) (one shared or one per row) and a key mask."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    table = None
    if rope:
        full = torch.stack(rotary_cos_sin(torch.arange(max_len + 7), headdim, 500.0, dtype=dtype,
                                          rotary_dim=rotary_dim)).to(device)
        table = full[:, :max_len]
    position = torch.randint(0, max_len, (1 if shared else batch,), generator=g).to(device)
    return dict(q=rnd(batch, nheads, headdim), k=rnd(batch, nkv_heads, headdim), v=rnd(batch, nkv_heads, headdim),
                position=position, k_cache=rnd(batch, max_len, nkv_heads, headdim),
                v_cache=rnd(batch, max_len, nkv_heads, headdim), cos_sin=table,
                key_mask=torch.zeros(batch, max_len, dtype=torch.bool, device=device) if masked else None)


def run(inp, impl):
    """rope_and_cache on copies of the caches and mask; returns (q rotated, k_cache, v_cache, key_mask)."""
    kc, vc = inp["k_cache"].clone(), inp["v_cache"].clone()
    mask = None if inp["key_mask"] is None else inp["key_mask"].clone()
    q = rope_and_cache(inp["q"], inp["k"], inp["v"], inp["position"], kc, vc, cos_sin=inp["cos_sin"],
                       key_mask=mask, impl=impl)
    return q, kc, vc, mask


def check_kernel_equals_reference(inp):
    got, want = run(inp, "triton"), run(inp, "reference")
    for name, a, b in zip(("q", "k_cache", "v_cache", "key_mask"), got, want):
        if b is None:
            continue
        if a.dtype in (torch.float16, torch.bfloat16, torch.bool):
            assert torch.equal(a, b), f"{name} differs from the reference"
        else:  # float32: the kernel may fuse x * cos + rot * sin into one FMA
            assert_close(a, b, torch.float32, name=name)


# ---------------------------------------------------------------- interpreter cases (child process)

def case_matches_reference():
    """GQA and MHA, full and partial rotary, no RoPE, shared and per-row positions, with and without a mask."""
    for i, (kw, dtype) in enumerate([
        (dict(batch=2, nheads=4, nkv_heads=2, headdim=32, max_len=9), torch.float16),
        (dict(batch=3, nheads=2, nkv_heads=2, headdim=16, max_len=5, rotary_dim=8, shared=True), torch.float16),
        (dict(batch=1, nheads=4, nkv_heads=1, headdim=64, max_len=3, rope=False, masked=False), torch.float16),
        (dict(batch=2, nheads=4, nkv_heads=4, headdim=32, max_len=6), torch.float32),
    ]):
        try:
            check_kernel_equals_reference(make_inputs(**kw, dtype=dtype, seed=i))
        except AssertionError as e:
            raise AssertionError(f"{kw} {dtype}: {e}") from None


def case_awkward_shapes():
    """Hypothesis: head sizes off the power-of-two block, rotary dims, batch 1, cache length 1."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=8, deadline=None, database=None)
    @given(batch=st.integers(1, 3), group=st.sampled_from([(1, 1), (3, 1), (4, 2)]),
           dims=st.sampled_from([(24, 24), (24, 8), (40, 20), (16, None)]), max_len=st.integers(1, 7),
           shared=st.booleans())
    def one(batch, group, dims, max_len, shared):
        headdim, rotary_dim = dims
        check_kernel_equals_reference(make_inputs(batch, group[0], group[1], headdim, max_len, rotary_dim=rotary_dim,
                                                  shared=shared, dtype=torch.float16, seed=max_len))

    one()


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.ops.attention.test_rope_cache", INTERPRETER_CASES)


def test_interpreted_kernel_equals_the_reference_bit_for_bit(interpreted):
    expect(interpreted, "matches_reference")


def test_interpreted_kernel_on_awkward_shapes(interpreted):
    expect(interpreted, "awkward_shapes")


def test_reference_rotates_by_each_rows_position_and_writes_only_there():
    inp = make_inputs(3, 4, 2, 16, 8, rotary_dim=8, dtype=torch.float64)
    q, kc, vc, mask = run(inp, "reference")
    pos = inp["position"]
    cos, sin = rotary_cos_sin(pos[:, None], 16, 500.0, dtype=torch.float64, rotary_dim=8)  # (batch, 1, 8)
    assert_close(q, apply_rotary(inp["q"][:, None], cos, sin)[:, 0], name="q")
    k_rot = apply_rotary(inp["k"][:, None], cos, sin)[:, 0]
    for b in range(3):
        p = int(pos[b])
        assert_close(kc[b, p], k_rot[b], name=f"k row {b}")
        assert torch.equal(vc[b, p], inp["v"][b])
        others = [j for j in range(8) if j != p]
        assert torch.equal(kc[b, others], inp["k_cache"][b, others]), "other positions changed"
        assert mask[b].tolist() == [j == p for j in range(8)]


def test_auto_on_cpu_is_the_reference_and_bad_inputs_are_named():
    inp = make_inputs(2, 4, 2, 16, 5, dtype=torch.float32)
    for a, b in zip(run(inp, "auto"), run(inp, "reference")):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="position"):
        rope_and_cache(inp["q"], inp["k"], inp["v"], inp["position"].int(), inp["k_cache"], inp["v_cache"])
    with pytest.raises(ValueError, match="key_mask"):
        rope_and_cache(inp["q"], inp["k"], inp["v"], inp["position"], inp["k_cache"], inp["v_cache"],
                       key_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="cos_sin"):
        rope_and_cache(inp["q"], inp["k"], inp["v"], inp["position"], inp["k_cache"], inp["v_cache"],
                       cos_sin=torch.zeros(3, 5, 8))
    with pytest.raises(ValueError, match="k_cache"):
        rope_and_cache(inp["q"], inp["k"], inp["v"], inp["position"], inp["k_cache"][:, :, :1], inp["v_cache"])


@pytest.mark.gpu
def test_auto_takes_the_kernel_on_cuda_only_once_it_is_declared_selectable(monkeypatch):
    import ssmkit.ops.attention as attention_ops

    inp = make_inputs(2, 4, 2, 64, 16, dtype=torch.bfloat16, device="cuda")
    calls = []
    import ssmkit.ops.attention.triton.rope_cache as kernel_module

    launch = kernel_module.rope_cache_write
    monkeypatch.setattr(kernel_module, "rope_cache_write", lambda *a: calls.append(1) or launch(*a))
    run(inp, "auto")
    assert calls == [] if not attention_ops.ROPE_KERNEL_AUTO else calls == [1]
    monkeypatch.setattr(attention_ops, "ROPE_KERNEL_AUTO", True)
    run(inp, "auto")
    assert calls[-1:] == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 12, 12, 64, 2048), (16, 32, 8, 128, 4096), (4, 16, 16, 64, 100)])
def test_kernel_matches_the_reference_on_gpu(shape):
    """The caches' v rows and the mask bit for bit; q and k within the forward-error bound of a rounded
    x * cos + rotate_half(x) * sin (three roundings of u = 2^-8 at most: u (|x cos| + |rot sin|) twice) of the
    float64 rotation, as the torch path is. On an H100 the compiler contracts the products into the sum (FMA), so
    the two differ in the last bit of about a quarter of the elements (bit for bit in the interpreter)."""
    batch, nheads, nkv, hd, max_len = shape
    for shared in (False, True):
        inp = make_inputs(batch, nheads, nkv, hd, max_len, shared=shared, dtype=torch.bfloat16, device="cuda")
        inp["cos_sin"] = rotary_table(max_len, hd, 500.0, dtype=torch.bfloat16, device="cuda")
        (q, kc, vc, mask), (q_ref, kc_ref, vc_ref, mask_ref) = run(inp, "triton"), run(inp, "reference")
        assert torch.equal(vc, vc_ref) and torch.equal(mask, mask_ref)
        rows = torch.arange(batch, device="cuda")
        pos = inp["position"].expand(batch)
        other, other_ref = kc.clone(), kc_ref.clone()
        other[rows, pos], other_ref[rows, pos] = 0, 0
        assert torch.equal(other, other_ref), "k_cache: positions other than the new token's"
        cs = inp["cos_sin"].double()[:, pos][:, :, None]  # (2, batch, 1, rotary_dim): the bf16 table, exactly
        for name, got, want, x in (("q", q, q_ref, inp["q"]), ("k", kc[rows, pos], kc_ref[rows, pos], inp["k"])):
            x = x.double()
            half = hd // 2
            rot = torch.cat((-x[..., half:], x[..., :half]), -1)
            exact, bound = x * cs[0] + rot * cs[1], 2 * 2.0 ** -8 * ((x * cs[0]).abs() + (rot * cs[1]).abs())
            for who, t in (("kernel", got), ("torch path", want)):
                assert ((t.double() - exact).abs() <= bound).all(), f"{name}: the {who} is outside the error bound"


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
