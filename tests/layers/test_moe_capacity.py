"""MoE per-expert capacity factors: which assignments overflow which expert, checked against a hand computation on
router logits with a known top-k; the single factor and no factor behave as before."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import MoE
from ssmkit.models import ModelConfig
from tests.compare import assert_close

# Router logits of 6 tokens over 3 experts (top-2 in brackets, in token order):
# t0 [0,1]  t1 [0,2]  t2 [0,1]  t3 [1,2]  t4 [1,2]  t5 [0,2]: 4 assignments per expert.
LOGITS = torch.tensor([[3., 2., 0.], [3., 0., 2.], [2., 3., 0.], [0., 3., 2.], [0., 2., 3.], [3., 0., 2.]],
                      dtype=torch.float64)
# 6 tokens x top-2 / 3 experts = 4 per expert; factors (0.5, 1, 0.25) give capacities ceil(2, 4, 1) = (2, 4, 1).
FACTORS = (0.5, 1.0, 0.25)
CAPACITY = [2, 4, 1]
# Expert 0 keeps t0, t1 and drops t2, t5; expert 1 keeps all four; expert 2 keeps t1 and drops t3, t4, t5.
OVERFLOW = [2, 0, 3]
KEPT = {(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (3, 1), (4, 1)}  # (token, expert); t5 loses both experts


def _moe(capacity_factor=None) -> tuple[MoE, torch.Tensor]:
    """A 3-expert top-2 MoE whose router logits are the first 3 features of x; x carries LOGITS there."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=12, mixers="mamba", feed_forwards="moe", d_ff=10, n_experts=3, moe_top_k=2,
                      moe_capacity_factor=capacity_factor)
    moe = MoE(cfg).to(torch.float64)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :3] = torch.eye(3, dtype=torch.float64)
    x = torch.cat([LOGITS, torch.randn(6, 9, dtype=torch.float64)], dim=1)
    return moe, x


def _hand_output(moe: MoE, x: torch.Tensor, kept) -> torch.Tensor:
    """sum over the kept (token, expert) pairs of softmax(logits)[t, e] * SwiGLU_e(x_t), token by token."""
    probs = torch.softmax(LOGITS, dim=-1)
    out = torch.zeros_like(x)
    for t, e in kept:
        gate, up = (moe.experts.gate_up_proj[e] @ x[t]).chunk(2)
        out[t] += probs[t, e] * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
    return out


def test_per_expert_capacity_drops_the_hand_computed_assignments_in_training():
    moe, x = _moe()
    moe.set_capacity_factors(FACTORS)
    with torch.no_grad():
        y = moe.train()(x)
    assert_close(y, _hand_output(moe, x, KEPT), name="per-expert capacity")
    assert moe.last_capacity.tolist() == CAPACITY
    assert moe.last_overflow.tolist() == OVERFLOW and moe.last_dropped.tolist() == OVERFLOW
    assert moe.last_expert_counts.tolist() == [4, 4, 4]  # routed assignments, before dropping
    assert y[5].abs().max() == 0  # both of t5's experts were full: no reroute to a third choice


def test_per_expert_capacity_reports_overflow_but_drops_nothing_at_inference():
    moe, x = _moe()
    moe.set_capacity_factors(FACTORS)
    all_pairs = {(t, int(e)) for t in range(6) for e in torch.topk(LOGITS[t], 2).indices}
    with torch.no_grad():
        assert_close(moe.eval()(x), _hand_output(moe, x, all_pairs), name="eval ignores capacity")
    assert moe.last_capacity.tolist() == CAPACITY and moe.last_overflow.tolist() == OVERFLOW
    assert moe.last_dropped.tolist() == [0, 0, 0]


def test_equal_per_expert_factors_match_the_single_capacity_factor():
    single, x = _moe(capacity_factor=0.5)
    per_expert, _ = _moe()
    per_expert.set_capacity_factors([0.5, 0.5, 0.5])
    with torch.no_grad():
        assert_close(per_expert.train()(x), single.train()(x), name="equal factors vs the single factor")
    # ceil(0.5 * 4) = 2 per expert: e0 keeps t0, t1; e1 keeps t0, t2; e2 keeps t1, t3
    assert single.last_capacity.tolist() == per_expert.last_capacity.tolist() == [2, 2, 2]
    assert single.last_overflow.tolist() == per_expert.last_overflow.tolist() == [2, 2, 2]
    assert_close(single(x).detach(), _hand_output(single, x, {(0, 0), (1, 0), (0, 1), (2, 1), (1, 2), (3, 2)}),
                 name="single factor vs hand")


def test_without_factors_there_is_no_capacity_and_reset_restores_the_single_factor():
    moe, x = _moe()
    with torch.no_grad():
        moe.train()(x)
    assert moe.last_capacity is None and moe.last_overflow is None and moe.last_dropped is None
    moe, x = _moe(capacity_factor=1.0)
    moe.set_capacity_factors(FACTORS)
    moe.set_capacity_factors(None)
    with torch.no_grad():
        moe.train()(x)
    assert moe.last_capacity.tolist() == [4, 4, 4] and moe.last_overflow.tolist() == [0, 0, 0]


def test_capacity_factors_stay_out_of_the_state_dict_and_survive_a_dtype_cast():
    moe, _ = _moe()
    keys = set(moe.state_dict())
    moe.set_capacity_factors([0.3, 0.3, 0.3])
    moe.to(torch.float32)
    assert set(moe.state_dict()) == keys
    # ceil(0.3 * 15 * 2 / 3) = ceil(3.0) = 3; a float32 0.3 (0.300000012) would give ceil(3.0000001) = 4
    assert moe.expert_capacity(15) == [3, 3, 3]


@pytest.mark.parametrize("factors", [[1.0, 1.0], [1.0, 0.0, 1.0], [1.0, float("nan"), 1.0]])
def test_bad_capacity_factors_are_refused_naming_the_argument(factors):
    moe, _ = _moe()
    with pytest.raises(ValueError, match="factors: expected None or 3 finite values > 0"):
        moe.set_capacity_factors(factors)
