"""The Triton split-K decode attention against a float64 softmax over the masked cache: GQA groups, per-row and
shared positions, key masks (a fully masked row gives zeros), strided caches, lengths the splits do not divide.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark and compare with SDPA, also replayed
from a CUDA graph while the position advances on the device.
"""

from __future__ import annotations

import sys

import pytest
import torch

from ssmkit.ops.attention import attention, attention_ref
from tests.compare import assert_close
from tests.ops.selective_scan.test_triton import expect, interpreted_main, run_interpreted

INTERPRETER_CASES = ("fixed_shapes", "positions_at_the_ends", "masks", "half_precision", "strided_inputs",
                     "awkward_shapes")


def make_inputs(batch, max_len, nheads, nkv_heads, headdim, *, dtype=torch.float32, shared_position=False,
                masked=False, seed=0, device="cpu"):
    """q (batch, nheads, headdim), caches (batch, max_len, nkv_heads, headdim) in dtype; position (1 or batch,)
    int64 drawn in [0, max_len); key_mask (batch, max_len) with about 30% False, or None."""
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)  # noqa: E731
    position = torch.randint(0, max_len, (1 if shared_position else batch,), generator=g, device=device)
    key_mask = torch.rand(batch, max_len, generator=g, device=device) > 0.3 if masked else None
    return dict(q=rnd(batch, nheads, headdim), k_cache=rnd(batch, max_len, nkv_heads, headdim),
                v_cache=rnd(batch, max_len, nkv_heads, headdim), position=position, key_mask=key_mask)


def allowed_keys(inp) -> torch.Tensor:
    """(batch, max_len) bool: j <= position[b], and key_mask[b, j] when given."""
    batch, max_len = inp["k_cache"].shape[:2]
    index = torch.arange(max_len, device=inp["position"].device)
    allowed = (index[None, :] <= inp["position"][:, None]).expand(batch, max_len)
    return allowed if inp["key_mask"] is None else allowed & inp["key_mask"]


def expected(inp, scale=None) -> torch.Tensor:
    """The float64 spec: attention_ref of the one query over the whole cache under the allowed-key mask."""
    q, k, v = (inp[n].to(torch.float64) for n in ("q", "k_cache", "v_cache"))
    return attention_ref(q[:, None], k, v, causal=False, scale=scale, key_padding_mask=allowed_keys(inp))[:, 0]


def check(inp, scale=None, name="out"):
    from ssmkit.ops.attention.triton import decode_attention_triton

    out = decode_attention_triton(**inp, scale=scale)
    assert out.dtype == inp["q"].dtype and out.shape == inp["q"].shape, (out.dtype, tuple(out.shape))
    assert_close(out, expected(inp, scale), inp["q"].dtype, name=name)
    return out


# ---------------------------------------------------------------- interpreter cases (child process)

SHAPES = {
    # name: (batch, max_len, nheads, nkv_heads, headdim, flags). The interpreter plans for 4 SMs (8 programs) and
    # blocks of 128 keys (64 at headdim 128): 1300 keys in 6 splits of 2 blocks (the last split 20 keys), 300 in
    # 2 splits of 2 blocks (the last 44 keys), 90 in 2 splits of one block.
    "gqa4_multi_block_splits": (1, 1300, 4, 1, 32, dict()),
    "gqa2_odd_length_shared_position": (2, 37, 4, 2, 64, dict(shared_position=True)),
    "mha_two_splits_masked": (3, 300, 2, 2, 32, dict(masked=True)),
    "length_one": (2, 1, 4, 2, 32, dict()),
    "gqa8_headdim128": (1, 90, 8, 1, 128, dict(masked=True)),
}


def plan(batch, max_len, nkv_heads, headdim):
    from ssmkit.ops.attention.triton.decode import INTERPRETER_SM_COUNT, block_n, split_plan

    return split_plan(batch, nkv_heads, max_len, INTERPRETER_SM_COUNT, block_n(headdim))


def case_fixed_shapes():
    """float32 vs float64 for each shape in SHAPES, with the default and an explicit scale."""
    plans = [plan(1, 1300, 1, 32), plan(3, 300, 2, 32), plan(1, 90, 1, 128)]
    assert plans == [(6, 256), (2, 256), (2, 64)], plans
    for name, (*shape, flags) in SHAPES.items():
        inp = make_inputs(*shape, seed=shape[1], **flags)
        check(inp, name=name)
        check(inp, scale=0.3, name=f"{name} scale=0.3")


def case_positions_at_the_ends():
    """Position 0 (one key) and max_len - 1 (every key), per row and shared; split programs past the position
    write empty partials that the merge must ignore."""
    for shared in (False, True):
        inp = make_inputs(3, 300, 4, 2, 32, shared_position=shared, seed=5)
        for value in (0, 299, 255, 256, 127, 128):  # splits of 256 keys, blocks of 128
            inp["position"] = torch.full_like(inp["position"], value)
            check(inp, name=f"position {value} shared={shared}")
        if not shared:
            inp["position"] = torch.tensor([0, 299, 150])
            check(inp, name="positions 0, 299, 150")


def case_masks():
    """A fully masked row gives zeros; a mask that empties whole blocks and splits of a row leaves the others
    exact; a mask with every key allowed equals no mask."""
    from ssmkit.ops.attention.triton import decode_attention_triton

    assert plan(3, 700, 1, 32) == (3, 256)
    inp = make_inputs(3, 700, 4, 1, 32, masked=True, seed=6)
    inp["position"] = torch.tensor([699, 699, 300])
    inp["key_mask"][0] = False
    # Row 1: the first block of split 0 holds no allowed key, its second block does; split 1 holds none at all.
    inp["key_mask"][1, :150] = False
    inp["key_mask"][1, 256:512] = False
    out = check(inp, name="masked rows")
    assert torch.equal(out[0], torch.zeros_like(out[0])), "a fully masked row must give exact zeros"
    nothing = dict(inp, position=torch.tensor([-1]))  # no key is at or before position -1
    assert torch.equal(decode_attention_triton(**nothing), torch.zeros_like(out))
    everything = dict(inp, key_mask=torch.ones(3, 700, dtype=torch.bool))
    assert torch.equal(decode_attention_triton(**everything), decode_attention_triton(**dict(inp, key_mask=None)))


def case_half_precision():
    """bfloat16 and float16 caches within their tolerances of the float64 softmax."""
    for dtype in (torch.bfloat16, torch.float16):
        for name, (*shape, flags) in SHAPES.items():
            check(make_inputs(*shape, dtype=dtype, seed=shape[1] + 1, **flags), name=f"{name} {dtype}")


def case_strided_inputs():
    """Caches read in place from an interleaved (batch, max_len, 2, nkv_heads, headdim) buffer, q from a wider
    one, and a non-contiguous key mask give the contiguous result."""
    from ssmkit.ops.attention.triton import decode_attention_triton

    inp = make_inputs(2, 75, 4, 2, 64, masked=True, seed=7)
    kv = torch.stack([inp["k_cache"], inp["v_cache"]], dim=2)  # (batch, max_len, 2, nkv_heads, headdim)
    wide_q = torch.randn(2, 4, 2, 64)
    wide_q[:, :, 1] = inp["q"]
    wide_mask = torch.zeros(2, 75, 3, dtype=torch.bool)
    wide_mask[:, :, 1] = inp["key_mask"]
    strided = dict(q=wide_q[:, :, 1], k_cache=kv[:, :, 0], v_cache=kv[:, :, 1], position=inp["position"],
                   key_mask=wide_mask[:, :, 1])
    assert not strided["k_cache"].is_contiguous() and not strided["key_mask"].is_contiguous()
    out = check(strided, name="strided")
    assert torch.equal(out, decode_attention_triton(**inp))


def case_awkward_shapes():
    """Hypothesis: batch 1-3, max_len 1-300, GQA groups 1, 2 and 4, headdim 32 or 64, per-row or shared
    positions, with or without a key mask, float32 or bfloat16."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=12, deadline=None, database=None, derandomize=True)
    @given(batch=st.integers(1, 3), max_len=st.one_of(st.just(1), st.integers(1, 300)),
           heads=st.sampled_from([(4, 1), (4, 2), (2, 2)]), headdim=st.sampled_from([32, 64]),
           shared=st.booleans(), masked=st.booleans(), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
           seed=st.integers(0, 2**16))
    def run_one(batch, max_len, heads, headdim, shared, masked, dtype, seed):
        torch.manual_seed(seed)
        check(make_inputs(batch, max_len, *heads, headdim, dtype=dtype, shared_position=shared, masked=masked,
                          seed=seed))

    run_one()


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    return run_interpreted("tests.ops.attention.test_decode_triton", INTERPRETER_CASES)


def test_interpreted_decode_matches_float64_for_gqa_groups_and_split_counts(interpreted):
    expect(interpreted, "fixed_shapes")


def test_interpreted_decode_matches_float64_at_positions_zero_and_last(interpreted):
    expect(interpreted, "positions_at_the_ends")


def test_interpreted_decode_gives_zeros_for_fully_masked_rows_and_skips_masked_splits(interpreted):
    expect(interpreted, "masks")


def test_interpreted_decode_bfloat16_and_float16_within_their_tolerances(interpreted):
    expect(interpreted, "half_precision")


def test_interpreted_decode_reads_strided_caches_queries_and_masks_in_place(interpreted):
    expect(interpreted, "strided_inputs")


def test_interpreted_decode_matches_float64_for_awkward_shapes(interpreted):
    expect(interpreted, "awkward_shapes")


def test_split_plan_covers_the_cache_with_whole_blocks_and_no_empty_split():
    pytest.importorskip("triton")
    from ssmkit.ops.attention.triton.decode import WAVES, block_n, split_plan

    for batch, nkv_heads, max_len, headdim, sms in ((1, 8, 4096, 128, 132), (1, 1, 65536, 64, 132),
                                                    (16, 12, 65536, 64, 132), (1, 1, 1, 256, 132),
                                                    (2, 2, 130, 32, 4), (1, 1, 1300, 32, 4)):
        block = block_n(headdim)
        nsplit, keys = split_plan(batch, nkv_heads, max_len, sms, block)
        assert keys % block == 0 and (nsplit - 1) * keys < max_len <= nsplit * keys, (nsplit, keys)
        assert nsplit == 1 or batch * nkv_heads * nsplit <= WAVES * sms + batch * nkv_heads, (nsplit, keys)


BAD_INPUTS = {
    # name: (argument the message names, change to valid inputs)
    "q_two_dims": ("q", lambda a: dict(a, q=a["q"][:, 0])),
    "q_float64": ("q", lambda a: dict(a, q=a["q"].double())),
    "headdim_48": ("q", lambda a: dict(a, q=a["q"][..., :48], k_cache=a["k_cache"][..., :48],
                                       v_cache=a["v_cache"][..., :48])),
    "k_wrong_batch": ("k_cache", lambda a: dict(a, k_cache=a["k_cache"][:1])),
    "k_wrong_headdim": ("k_cache", lambda a: dict(a, k_cache=a["k_cache"][..., :32])),
    "k_heads_not_dividing": ("k_cache", lambda a: dict(a, k_cache=torch.randn(2, 9, 3, 64),
                                                       v_cache=torch.randn(2, 9, 3, 64))),
    "k_three_dims": ("k_cache", lambda a: dict(a, k_cache=a["k_cache"][:, 0])),
    "k_bfloat16": ("k_cache", lambda a: dict(a, k_cache=a["k_cache"].bfloat16())),
    "k_strided_headdim": ("k_cache", lambda a: dict(a, k_cache=a["k_cache"].transpose(2, 3).contiguous()
                                                    .transpose(2, 3))),
    "v_wrong_length": ("v_cache", lambda a: dict(a, v_cache=a["v_cache"][:, :5])),
    "v_float16": ("v_cache", lambda a: dict(a, v_cache=a["v_cache"].half())),
    "position_int32": ("position", lambda a: dict(a, position=a["position"].int())),
    "position_wrong_length": ("position", lambda a: dict(a, position=torch.zeros(3, dtype=torch.int64))),
    "position_an_int": ("position", lambda a: dict(a, position=4)),
    "key_mask_float": ("key_mask", lambda a: dict(a, key_mask=torch.ones(2, 9))),
    "key_mask_wrong_shape": ("key_mask", lambda a: dict(a, key_mask=torch.ones(2, 8, dtype=torch.bool))),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_decode_rejects_bad_input_naming_the_argument(case):
    pytest.importorskip("triton")
    from ssmkit.ops.attention.triton import decode_attention_triton

    name, change = BAD_INPUTS[case]
    inp = make_inputs(2, 9, 4, 2, 64)
    with pytest.raises(ValueError, match=f"^{name}:"):
        decode_attention_triton(**change(inp))


def test_decode_rejects_headdim_that_is_not_a_power_of_two_pointing_to_sdpa():
    pytest.importorskip("triton")
    from ssmkit.ops.attention.triton import decode_attention_triton

    inp = make_inputs(1, 4, 2, 2, 100)
    with pytest.raises(ValueError, match=r"^q: headdim must be one of \(32, 64, 128, 256\).*got 100.*sdpa"):
        decode_attention_triton(**inp)


def test_decode_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from ssmkit.ops.attention.triton import decode_attention_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^impl: 'triton' needs CUDA tensors"):
        decode_attention_triton(**make_inputs(1, 4, 2, 2, 32))


# ---------------------------------------------------------------- GPU

def sdpa_oracle(inp) -> torch.Tensor:
    """SDPA in float32 over the whole cache under the allowed-key mask, (batch, nheads, headdim) float32."""
    q, k, v = (inp[n].float() for n in ("q", "k_cache", "v_cache"))
    return attention(q[:, None], k, v, causal=False, key_padding_mask=allowed_keys(inp), impl="sdpa")[:, 0]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("max_len", [4096, 65536])
@pytest.mark.parametrize("nheads, nkv_heads, headdim", [(12, 12, 64), (32, 8, 128)])
def test_decode_matches_sdpa_on_gpu(batch, max_len, nheads, nkv_heads, headdim):
    from ssmkit.ops.attention.triton import decode_attention_triton

    inp = make_inputs(batch, max_len, nheads, nkv_heads, headdim, dtype=torch.bfloat16, device="cuda",
                      seed=max_len + batch)
    inp["key_mask"] = torch.ones(batch, max_len, dtype=torch.bool, device="cuda")
    inp["key_mask"][0, : max_len // 8] = False  # a left-padded prompt
    inp["position"][0] = max_len - 1
    out = decode_attention_triton(**inp)
    assert_close(out, sdpa_oracle(inp), torch.bfloat16, name="out")


@pytest.mark.gpu
def test_decode_replayed_from_a_cuda_graph_follows_the_position_advanced_in_place():
    from ssmkit.ops.attention.triton import decode_attention_triton

    inp = make_inputs(4, 2048, 32, 8, 128, dtype=torch.bfloat16, device="cuda", seed=3)
    inp["key_mask"] = torch.ones(4, 2048, dtype=torch.bool, device="cuda")
    inp["key_mask"][1, :40] = False
    position = torch.tensor([100, 0, 1500, 1900], device="cuda")
    inp["position"] = position
    decode_attention_triton(**inp)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention_triton(**inp)
    rows = torch.arange(4, device="cuda")
    for step in range(4):
        # The decode step's order: write the new token's key and value at the position, then attend.
        inp["k_cache"][rows, position] = torch.randn(4, 8, 128, device="cuda", dtype=torch.bfloat16)
        inp["v_cache"][rows, position] = torch.randn(4, 8, 128, device="cuda", dtype=torch.bfloat16)
        graph.replay()
        assert_close(out.float(), sdpa_oracle(inp), torch.bfloat16, name=f"replay {step}")
        position.add_(1 + 9 * step)
        inp["key_mask"][2, step] = False

def patch_interpreter_bf16_dot():
    """triton 3.6's interpreter keeps bfloat16 as its uint16 bits and hands those to np.matmul in tl.dot, which
    multiplies the integers. Widen bfloat16 operands to float32 first: exact, as a tensor core's bf16 products
    accumulated in float32 are."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    dot = interpreter.InterpreterBuilder.create_dot

    def widened(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


if __name__ == "__main__":
    patch_interpreter_bf16_dot()
    interpreted_main(globals(), sys.argv[1:])
