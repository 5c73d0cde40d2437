"""A closed form derived by hand: one head, one channel, dstate 1, constant decay and constant input.

With a = exp(dt A), B = C = 1, x_t = 1: h_t = a h_{t-1} + dt, so h_t = dt (1 - a^t) / (1 - a) + a^t h_0 and y_t = h_t.
"""

import math

import pytest
import torch

from ssmkit.ops.ssd import ssd


@pytest.mark.parametrize("impl", ["reference", "quadratic", "chunked"])
def test_constant_decay_matches_geometric_sum(impl):
    T, dt, A, h0 = 50, 0.3, -0.7, 2.5
    ones = torch.ones(1, T, 1, 1, dtype=torch.float64)
    y, h = ssd(ones, torch.full((1, T, 1), dt, dtype=torch.float64), torch.tensor([A], dtype=torch.float64),
               ones, ones, initial_state=torch.full((1, 1, 1, 1), h0, dtype=torch.float64), chunk_size=7,
               impl=impl, return_final_state=True)
    a = math.exp(dt * A)
    expected = torch.tensor([dt * (1 - a ** t) / (1 - a) + a ** t * h0 for t in range(1, T + 1)],
                            dtype=torch.float64)
    assert torch.allclose(y.flatten(), expected, rtol=1e-12, atol=1e-12)
    assert abs(h.item() - expected[-1].item()) < 1e-12
