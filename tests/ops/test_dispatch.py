"""impl="auto" takes a Triton module only once it declares AUTO_SELECTABLE (its GPU tests have passed)."""

import sys
import types

import torch

from ssmkit.ops import dispatch


def _fake_triton_module(monkeypatch, selectable: bool):
    module = types.ModuleType("fakepkg.triton")
    module.op_triton = lambda *a: "triton"
    if selectable:
        module.AUTO_SELECTABLE = True
    monkeypatch.setitem(sys.modules, "fakepkg.triton", module)
    monkeypatch.setattr(dispatch, "triton_module_available", lambda package: True)


def reference(*args):
    return "reference"


def test_auto_keeps_the_reference_until_the_triton_module_is_declared_selectable(monkeypatch):
    cuda = torch.device("cuda")
    _fake_triton_module(monkeypatch, selectable=False)
    assert dispatch.pick_impl("fakepkg", "op", "auto", cuda, reference)() == "reference"
    assert dispatch.pick_impl("fakepkg", "op", "triton", cuda, reference)() == "triton"
    _fake_triton_module(monkeypatch, selectable=True)
    assert dispatch.pick_impl("fakepkg", "op", "auto", cuda, reference)() == "triton"


def test_auto_on_cpu_is_always_the_reference(monkeypatch):
    _fake_triton_module(monkeypatch, selectable=True)
    assert dispatch.pick_impl("fakepkg", "op", "auto", torch.device("cpu"), reference)() == "reference"


def test_selective_scan_auto_skips_an_unvalidated_triton_module():
    from ssmkit.ops.selective_scan import auto_impl
    from ssmkit.ops.selective_scan.triton import AUTO_SELECTABLE

    assert auto_impl("cuda") == ("triton" if AUTO_SELECTABLE else "parallel")
    assert auto_impl("cpu") == "parallel"


def test_records_autograd_only_with_grad_mode_and_an_input_that_requires_grad():
    from ssmkit.ops.dispatch import records_autograd

    a, b = torch.ones(2), torch.ones(2, requires_grad=True)
    assert not records_autograd(a, None, 3) and records_autograd(a, b, None)
    with torch.no_grad():
        assert not records_autograd(a, b)
