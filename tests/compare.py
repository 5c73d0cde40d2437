"""One helper that compares a result with a reference and reports both error measures.

Tolerances live in one table per dtype; gradient tolerances are their own entries. No test loosens them.
"""

from __future__ import annotations

import torch

# (relative RMS error, max absolute error scaled by the reference's max magnitude)
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    "tf32": (5e-4, 5e-3),
    torch.float16: (5e-3, 2e-2),
    torch.bfloat16: (1e-2, 5e-2),
}
GRAD_TOLERANCES = {
    torch.float64: (1e-9, 1e-8),
    torch.float32: (5e-5, 5e-4),
    "tf32": (2e-3, 2e-2),
    torch.float16: (1e-2, 5e-2),
    torch.bfloat16: (2e-2, 1e-1),
}


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, float]:
    """Returns (relative RMS error, max absolute error, max |expected|), computed in float64."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    diff = a - e
    denom = e.pow(2).mean().sqrt().item()
    rel = diff.pow(2).mean().sqrt().item() / max(denom, 1e-300)
    return rel, diff.abs().max().item() if diff.numel() else 0.0, e.abs().max().item() if e.numel() else 0.0


def assert_close(actual, expected, dtype=None, *, grad: bool = False, name: str = "output", tol=None) -> None:
    """Asserts relative RMS error and max abs error (relative to max |expected|) within the table's tolerance.

    `dtype` picks the row (a torch dtype or "tf32"); it defaults to `actual.dtype`. `tol` overrides with an
    explicit (rel_rms, max_abs) pair for comparisons whose error budget is derived in the test itself.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    key = dtype if dtype is not None else actual.dtype
    rel_tol, abs_tol = tol if tol is not None else (GRAD_TOLERANCES if grad else TOLERANCES)[key]
    rel, mx, scale = errors(actual, expected)
    nan_a, nan_e = bool(torch.isnan(actual).any()), bool(torch.isnan(expected).any())
    assert not nan_a and not nan_e, f"{name}: NaN in actual={nan_a} expected={nan_e}"
    assert rel <= rel_tol and mx <= abs_tol * max(scale, 1.0), (
        f"{name}: rel_rms={rel:.3e} (tol {rel_tol:.0e}), max_abs={mx:.3e} "
        f"(tol {abs_tol:.0e} x {max(scale, 1.0):.3g}) [{key}{', grad' if grad else ''}]"
    )
