"""ssmkit.ops.pdl: which launches get programmatic dependent launch. The kernels' waits run under the GPU tests of
the decode steps (tests/ops/norm, tests/ops/conv1d, tests/ops/ssd, tests/ops/selective_scan, tests/inference)."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops.pdl
from ssmkit.ops.pdl import pdl_options


def test_off_the_gpu_no_launch_option_is_passed():
    assert pdl_options(torch.device("cpu")) == {"PDL": False}


def test_interpreter_gets_no_pdl(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl_options(torch.device("cuda", 0)) == {"PDL": False}  # decided before any CUDA query


@pytest.mark.gpu
def test_on_hopper_pdl_is_on_and_the_switch_turns_it_off(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    device = torch.device("cuda", torch.cuda.current_device())
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    assert pdl_options(device) == ({"PDL": True, "launch_pdl": True} if hopper else {"PDL": False})
    monkeypatch.setattr(ssmkit.ops.pdl, "PDL_AUTO", False)
    assert pdl_options(device) == {"PDL": False}
