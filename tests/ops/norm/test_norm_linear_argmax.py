"""norm_linear with argmax=: an LM head that also leaves each row's greedy token as a packed int64 key.

The keys the one-row GEMV's epilogue folds in (CUDA, the interpreter) must be exactly ssmkit.ops.argmax_keys'
argmax_keys of the kernel's own output, and their indices torch.argmax's on it: ties between features of one
block and of blocks in different programs (the first index wins), all-negative rows with the block's padding
features beyond N (whose zeros must not count), -inf and +inf, 1 to 3 rows, persistent grids and one block a
program, float32, float16 and bfloat16 outputs. Elsewhere the composed ops and fold_argmax_keys give the same keys.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys

import pytest
import torch

from ssmkit.ops.argmax_keys import EMPTY_KEY, argmax_keys, key_index
from ssmkit.ops.conv1d import ConvStep
from ssmkit.ops.norm import norm_linear
from tests.ops.norm.test_norm_linear import make
from tests.ops.selective_scan.test_triton import interpreted_main, interpreter_cases_test

INTERPRETER_CASES = ("ties_first_index_wins", "negative_rows_and_padding", "infinities", "nan_ranking",
                     "earlier_keys_are_kept")

# (GEMV block of output features, programs per SM; 0 = one block a program): the interpreter has 1 SM, so a
# persistent config runs that many programs, each walking every programs-th block.
CONFIGS = ((4, 2), (2, 3), (16, 0), (4, 0))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def empty(rows: int) -> torch.Tensor:
    return torch.full((rows,), EMPTY_KEY, dtype=torch.int64)


def run_with_keys(kw, keys=None, impl="triton"):
    """(out, keys) of one call with argmax=; out must equal the same call's without it, bit for bit."""
    rows = kw["x"].shape[0]
    keys = empty(rows) if keys is None else keys
    out, _ = norm_linear(**kw, eps=1e-5, argmax=keys, impl=impl)
    plain, _ = norm_linear(**kw, eps=1e-5, impl=impl)
    assert torch.equal(out.view(torch.uint8), plain.view(torch.uint8)), "the epilogue changed the output's bits"
    return out, keys


def check_against_argmax(kw, label: str, impl="triton") -> torch.Tensor:
    out, keys = run_with_keys(kw, impl=impl)
    try:
        assert torch.equal(keys, argmax_keys(out)), f"keys {keys.tolist()} vs argmax_keys {argmax_keys(out).tolist()}"
        assert torch.equal(key_index(keys), torch.argmax(out, -1)), \
            f"indices {key_index(keys).tolist()} vs torch.argmax {torch.argmax(out, -1).tolist()}"
    except AssertionError as e:
        raise AssertionError(f"{label}: {e}") from None
    return out


def with_config(block_n: int, programs_per_sm: int):
    """A context that makes pick_config hand out this one-pass GEMV config for every shape."""
    import contextlib

    import ssmkit.ops.norm.triton.linear as kernel

    @contextlib.contextmanager
    def patched():
        picked = kernel.pick_config
        cfg = kernel.Config(block_n, 0, False, 4, 1, programs_per_sm)
        kernel.pick_config = lambda m, k, n, norm=True: cfg
        try:
            yield cfg
        finally:
            kernel.pick_config = picked

    return patched()


def tied(rows, dim, n, dtype, positions, *, negative=False, seed=0):
    """Inputs whose first row's largest output (smallest, for the second row: its negation) is reached at every
    one of `positions`: those features share one weight row, 1.5 times the weight row of the row's largest
    output. Rows: x0, -x0 (outputs exactly negated), then random ones. negative: every output of every row
    negative (x, residual and norm weight positive, weight rows negative; the tied rows half the largest's)."""
    kw = make(rows, dim, n, dtype, residual="tensor", seed=seed)
    if negative:
        kw["x"] = kw["x"].abs() + 0.1
        kw["residual"] = kw["residual"].abs()
        kw["norm_weight"] = kw["norm_weight"].abs()
        kw["weight"] = -(kw["weight"].abs() + 0.01)
    if rows > 1 and not negative:
        kw["x"][1] = -kw["x"][0]
        kw["residual"][1] = -kw["residual"][0]
    out, _ = norm_linear(**kw, eps=1e-5, impl="reference")
    top = int(out[0].float().argmax())
    star = kw["weight"][top].float() * (1.5 if not negative else 0.5)  # 0.5: closer to 0 when all are negative
    kw["weight"][list(positions)] = star.to(dtype)
    return kw


# ---------------------------------------------------------------- interpreter cases (child process)

def case_ties_first_index_wins():
    """Equal maxima in one block and in blocks walked by different programs (features 5, 7 share a block of 4;
    117 and n - 1 sit in later blocks): the key of feature 5, for 1, 2 and 3 rows."""
    n = 203
    positions = (117, 7, 5, n - 1)
    for block_n, per_sm in CONFIGS:
        with with_config(block_n, per_sm):
            for dtype in DTYPES:
                for rows in (1, 2, 3):
                    kw = tied(rows, 96, n, dtype, positions, seed=rows)
                    label = f"block {block_n}, programs/SM {per_sm}, {dtype}, rows {rows}"
                    out = check_against_argmax(kw, label)
                    assert (out[0, list(positions)] == out[0].max()).all(), f"{label}: the tie was not built"
                    assert int(key_index(argmax_keys(out))[0]) == 5, label


def case_negative_rows_and_padding():
    """Every output negative, n off every block size: the padding features beyond n compute 0, which must not
    win; ties among the negative maxima (first index wins) and the largest at the last feature."""
    for block_n, per_sm in CONFIGS:
        with with_config(block_n, per_sm):
            for dtype in DTYPES:
                for rows, n, positions in ((1, 301, (300,)), (3, 77, (40, 41, 76)), (2, 9, (8, 3))):
                    kw = tied(rows, 64, n, dtype, positions, negative=True, seed=n)
                    label = f"block {block_n}, programs/SM {per_sm}, {dtype}, rows {rows}, n {n}"
                    out = check_against_argmax(kw, label)
                    assert (out < 0).all(), f"{label}: not all negative"
                    assert int(key_index(argmax_keys(out))[0]) == min(positions), label


def case_infinities():
    """float16 outputs past its range: a row with -inf features beside finite ones and +inf at two features (the
    first wins), the same row again, a random one; then every feature of every row -inf (torch.argmax: 0)."""
    for block_n, per_sm in CONFIGS:
        with with_config(block_n, per_sm):
            kw = make(3, 64, 50, torch.float16, residual="tensor", seed=7)
            kw["x"][1] = kw["x"][0]
            kw["residual"][1] = kw["residual"][0]
            normed, _ = norm_linear(**dict(kw, weight=torch.eye(64, dtype=torch.float16)), eps=1e-5,
                                    impl="reference")
            big = 5000.0 * torch.sign(normed[0].float())  # row 0's output there: 5000 * sum |a| > 65504
            w = kw["weight"]
            w[[3, 20, 33]] = (-big).to(torch.float16)
            w[[12, 45]] = big.to(torch.float16)
            label = f"block {block_n}, programs/SM {per_sm}"
            got = check_against_argmax(kw, label)
            assert torch.isneginf(got[:2, [3, 20, 33]]).all(), f"{label}: precondition -inf"
            assert torch.isposinf(got[:2, [12, 45]]).all(), f"{label}: precondition +inf"
            assert key_index(argmax_keys(got))[:2].tolist() == [12, 12], label
            kw["weight"] = -(1000 * kw["weight"].abs().float() + 5000).to(torch.float16)
            kw["x"] = kw["x"].abs() + 1
            kw["residual"] = kw["residual"].abs()
            kw["norm_weight"] = kw["norm_weight"].abs() + 0.1
            got = check_against_argmax(kw, f"{label}, all -inf")
            assert torch.isneginf(got).all(), f"{label}: precondition all -inf"
            assert (key_index(argmax_keys(got)) == 0).all(), f"{label}: all -inf"


def case_nan_ranking():
    """NaN as documented (ssmkit.ops.argmax_keys.reference.argmax_keys): a NaN with the sign bit clear ranks
    above every number, so alone in its row it is torch.argmax's answer; with the sign bit set it ranks below
    -inf, where torch.argmax still returns it. A NaN weight row gives that feature a NaN of the row's sign
    (checked first: the interpreter's float32 products keep the NaN operand)."""
    with with_config(4, 2):
        for sign in (1.0, -1.0):
            kw = make(2, 64, 90, torch.float32, residual="tensor", seed=11)
            kw["weight"][37] = torch.tensor(float("nan")).copysign(torch.tensor(sign))
            out, keys = run_with_keys(kw)
            bits = out[:, 37].view(torch.int32)
            assert torch.isnan(out[:, 37]).all() and ((bits < 0) == (sign < 0)).all(), \
                f"precondition: NaN of sign {sign} at feature 37, got bits {bits.tolist()}"
            assert torch.isnan(out).sum() == 2 and (torch.argmax(out, -1) == 37).all(), "precondition: torch.argmax"
            assert torch.equal(keys, argmax_keys(out)), f"sign {sign}: keys vs argmax_keys"
            finite = torch.where(torch.isnan(out), torch.full_like(out, -float("inf")), out)
            want = torch.argmax(out, -1) if sign > 0 else torch.argmax(finite, -1)
            assert torch.equal(key_index(keys), want), f"sign {sign}: {key_index(keys).tolist()} vs {want.tolist()}"


def case_earlier_keys_are_kept():
    """The buffer is folded into, not overwritten: a larger key already there stays, a smaller one is replaced."""
    with with_config(4, 2):
        kw = make(2, 64, 90, torch.float16, residual="tensor", seed=12)
        plain, _ = norm_linear(**kw, eps=1e-5, impl="triton")
        fresh = argmax_keys(plain)
        keys = torch.stack([fresh[0] + 2 ** 32, fresh[1] - 2 ** 32])  # row 0: a larger value seen; row 1: smaller
        out, keys = run_with_keys(kw, keys=keys.clone())
        assert keys[0] == fresh[0] + 2 ** 32 and keys[1] == fresh[1], keys.tolist()


# ---------------------------------------------------------------- tests

test_interpreted_epilogue_matches_torch_argmax_of_the_kernel_output = interpreter_cases_test(
    "tests.ops.norm.test_norm_linear_argmax", INTERPRETER_CASES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_composed_path_folds_the_same_keys(dtype):
    """Off CUDA (1 and 3 rows, ties and all-negative rows): the composed ops, then fold_argmax_keys."""
    for rows in (1, 3):
        check_against_argmax(tied(rows, 48, 70, dtype, (60, 3, 30), seed=rows), f"rows {rows}", impl="auto")
        check_against_argmax(tied(rows, 48, 70, dtype, (69,), negative=True, seed=rows), f"rows {rows}, negative",
                             impl="reference")


def test_bad_argmax_buffers_are_named():
    kw = make(2, 32, 40, torch.float32, residual="tensor")
    conv = ConvStep(torch.zeros(2, 8, 4), torch.zeros(8, 4), None, 0, "silu")
    for keys, extra, match in ((empty(2).int(), {}, r"argmax: expected an int64 tensor of shape \(2,\)"),
                               (empty(3), {}, r"argmax: expected an int64 tensor of shape \(2,\)"),
                               (empty(2)[None], {}, r"argmax: expected an int64 tensor of shape \(2,\)"),
                               (empty(4)[::2], {}, "argmax: expected a contiguous tensor"),
                               (empty(2).to("meta"), {}, "argmax: expected a tensor on cpu"),
                               ([EMPTY_KEY] * 2, {}, "argmax: expected an int64 tensor"),
                               (empty(2), dict(conv=conv), "argmax: not with conv")):
        with pytest.raises(ValueError, match=match):
            norm_linear(**kw, **extra, argmax=keys)


def test_launcher_refuses_argmax_outside_the_one_pass_gemv():
    """norm_linear_fwd with a config that runs _norm_linear_kernel (tensor cores, two passes): refused before any
    launch, as for conv."""
    pytest.importorskip("triton")
    from ssmkit.ops.norm.triton.linear import Config, norm_linear_fwd

    kw = make(3, 64, 40, torch.float32)
    keys = empty(3)
    for cfg in (Config(32, 256, True, 4, 3), Config(4, 32, False, 4, 1)):
        with pytest.raises(ValueError, match="conv, argmax, stacked weights: the one-pass GEMV's alone"):
            norm_linear_fwd(kw["x"], None, None, kw["norm_weight"], 1e-5, 64, kw["weight"], None, torch.float32,
                            cfg, argmax=keys)
    assert (keys == EMPTY_KEY).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dim_in, vocab, dtype", [(768, 50280, torch.bfloat16), (2048, 32000, torch.bfloat16),
                                                  (768, 50280, torch.float32)])
def test_lm_head_epilogue_matches_torch_argmax_on_gpu(dim_in, vocab, dtype):
    """The LM heads of the 130M / 1.3B presets after the last residual add + norm_f, on the config pick_config
    hands out: the keys are argmax_keys of the output, their indices torch.argmax's; with a tie built across
    programs, the first index."""
    for seed in range(3):
        kw = make(1, dim_in, vocab, dtype, residual="tensor", seed=seed, device="cuda")
        kw["norm_dtype"] = torch.float32
        keys = torch.full((1,), EMPTY_KEY, dtype=torch.int64, device="cuda")
        out, _ = norm_linear(**kw, eps=1e-5, argmax=keys)
        assert torch.equal(keys, argmax_keys(out)) and torch.equal(key_index(keys), torch.argmax(out, -1)), seed
        top = int(torch.argmax(out, -1))
        kw["weight"][[vocab - 1, 1000, 3]] = (1.5 * kw["weight"][top].float()).to(dtype)
        keys.fill_(EMPTY_KEY)
        out, _ = norm_linear(**kw, eps=1e-5, argmax=keys)
        assert torch.equal(key_index(keys), torch.argmax(out, -1)) and int(key_index(keys)) == 3, seed


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
