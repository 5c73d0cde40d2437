"""MoE: routed output equals a dense reference, counts and the load-balancing loss match transformers', the
router bias moves only the choice of experts, and capacity drops assignments only in training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import MoE
from ssmkit.models import ModelConfig
from tests.compare import assert_close


def _moe(renormalize=False, capacity_factor=None, n_experts=5, top_k=2, dtype=torch.float64) -> MoE:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=12, mixers="mamba", feed_forwards="moe", d_ff=10, n_experts=n_experts, moe_top_k=top_k,
                      moe_renormalize=renormalize, moe_capacity_factor=capacity_factor)
    return MoE(cfg).to(dtype)


def _dense_reference(moe: MoE, x: torch.Tensor, bias: torch.Tensor | None = None, keep=None) -> torch.Tensor:
    """Every expert on every token, combined with the top-k softmax weights (zero for the other experts)."""
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
    chosen = torch.topk(probs + (0 if bias is None else bias), moe.top_k, dim=-1).indices
    gate = torch.zeros_like(probs).scatter(-1, chosen, probs.gather(-1, chosen))
    if moe.renormalize:
        gate = gate / gate.sum(-1, keepdim=True)
    if keep is not None:
        gate = gate * keep
    outs = []
    for e in range(moe.n_experts):
        g, u = (x @ moe.experts.gate_up_proj[e].T).chunk(2, dim=-1)
        outs.append((F.silu(g) * u) @ moe.experts.down_proj[e].T)
    return torch.einsum("...e,e...d->...d", gate, torch.stack(outs))


@pytest.mark.parametrize("renormalize", [False, True])
def test_moe_matches_dense_reference(renormalize):
    moe = _moe(renormalize)
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    assert_close(moe(x), _dense_reference(moe, x), name="moe output")
    assert int(moe.last_expert_counts.sum()) == 3 * 7 * 2


def test_counts_and_aux_loss_match_transformers():
    jamba = pytest.importorskip("transformers.models.jamba.modeling_jamba")
    moe = _moe(n_experts=4, top_k=2, dtype=torch.float32)
    x = torch.randn(2, 9, 12)
    moe(x)
    logits = x.reshape(-1, 12) @ moe.router.weight.T
    expected = jamba.load_balancing_loss_func((logits,), num_experts=4, top_k=2)
    assert_close(moe.aux_loss, expected, name="aux loss")
    chosen = torch.topk(torch.softmax(logits, -1), 2, dim=-1).indices
    assert torch.equal(moe.last_expert_counts, torch.bincount(chosen.reshape(-1), minlength=4))


def test_padded_tokens_are_left_out_of_counts_and_loss():
    moe = _moe()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :4] = False
    moe(x, key_padding_mask=mask)
    counts, loss = moe.last_expert_counts, moe.aux_loss
    moe(x[mask][None])  # only the real tokens
    assert torch.equal(counts, moe.last_expert_counts)
    assert_close(loss, moe.aux_loss, name="aux loss over real tokens")


def test_router_bias_changes_which_experts_not_their_weights():
    moe = _moe()
    bias = torch.tensor([3.0, 0.0, 0.0, 0.0, -3.0], dtype=torch.float64)
    with torch.no_grad():
        moe.router_bias.copy_(bias)
    x = torch.randn(20, 12, dtype=torch.float64)
    assert_close(moe(x), _dense_reference(moe, x, bias=bias), name="biased routing")
    assert int(moe.last_expert_counts[0]) == 20 and int(moe.last_expert_counts[4]) == 0


def test_capacity_drops_late_assignments_in_training_only():
    moe = _moe(capacity_factor=0.5)
    x = torch.randn(16, 12, dtype=torch.float64)
    full = _dense_reference(moe, x)
    assert_close(moe.eval()(x), full, name="eval ignores capacity")
    capacity = math.ceil(0.5 * 16 * 2 / 5)
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
    chosen = torch.topk(probs, 2, dim=-1).indices
    keep = torch.zeros(16, 5, dtype=torch.float64)
    for e in range(5):  # the first `capacity` tokens (in order) routed to e keep it
        tokens = (chosen == e).any(-1).nonzero()[:, 0][:capacity]
        keep[tokens, e] = 1.0
    assert_close(moe.train()(x), _dense_reference(moe, x, keep=keep), name="training with capacity")
    assert int(moe.last_expert_counts.sum()) == 32  # counts are routed assignments, before dropping
