"""Packed sequences: with cu_seqlens the result equals running each sequence alone."""

import pytest
import torch

from ssmkit.ops.ssd import ssd
from tests.compare import assert_close
from tests.ops.ssd.inputs import cu_seqlens_from_lengths, make_inputs


@pytest.mark.parametrize("impl", ["reference", "quadratic", "chunked"])
@pytest.mark.parametrize("lengths,chunk", [([5, 1, 17, 9], 8), ([3, 0, 12], 4), ([40], 16), ([1] * 7, 3)])
def test_packed_equals_each_sequence_alone(impl, lengths, chunk):
    total = sum(lengths)
    args = make_inputs(batch=1, seqlen=total, with_h0=True, nseq=len(lengths), seed=total)
    cu = cu_seqlens_from_lengths(lengths)
    y, finals = ssd(**args, cu_seqlens=cu, chunk_size=chunk, impl=impl, return_final_state=True)
    assert finals.shape[0] == len(lengths)
    for k, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone = {n: (v[:, s:e] if isinstance(v, torch.Tensor) and v.ndim >= 3 and v.shape[1] == total else v)
                 for n, v in args.items()}
        alone["initial_state"] = args["initial_state"][k:k + 1]
        if e == s:
            assert_close(finals[k], args["initial_state"][k], name="empty sequence keeps its state")
            continue
        y_k, h_k = ssd(**alone, impl="reference", return_final_state=True)
        assert_close(y[:, s:e], y_k, name=f"y of sequence {k}")
        assert_close(finals[k:k + 1], h_k, name=f"final state of sequence {k}")
