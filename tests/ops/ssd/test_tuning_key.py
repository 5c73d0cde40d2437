"""The SSD tuner's key: prompts of different lengths in one power-of-two bucket share one tuning."""

import torch

from ssmkit.ops.ssd.triton.plan import make_plan, tuning_shape


def plan_for(batch: int, seqlen: int, nheads: int = 4, chunk: int = 64):
    return make_plan(torch.empty(batch, seqlen, nheads, 8), nheads, None, chunk)


def test_lengths_in_one_power_of_two_bucket_share_a_key():
    keys = {tuning_shape(plan_for(1, n)) for n in (513, 700, 1000, 1024)}
    assert len(keys) == 1, keys


def test_key_changes_with_the_bucket_the_batch_and_the_chunk():
    base = tuning_shape(plan_for(1, 1000))
    assert tuning_shape(plan_for(1, 1025)) != base
    assert tuning_shape(plan_for(3, 1000)) != base
    assert tuning_shape(plan_for(1, 1000, chunk=32)) != base


def test_key_fields_are_the_powers_of_two_above_the_plan_sizes():
    plan = plan_for(3, 1000)
    q, nseq, maxlen, nseg = tuning_shape(plan)
    assert (q, nseq, maxlen) == (plan.Q, 4, 1024)
    assert nseg >= plan.nseg and nseg & (nseg - 1) == 0 and nseg < 2 * plan.nseg
