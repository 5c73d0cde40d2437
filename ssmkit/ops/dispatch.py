"""Choosing an operator's implementation: the `_ref` spec, or the GPU module `<op package>.triton` when present.

`impl="auto"` takes the Triton form on CUDA when its module exists and declares `AUTO_SELECTABLE = True` (set once
its GPU tests have passed on a GPU), else the reference; `impl="triton"` asks for it and fails with a clear
message when it is missing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from typing import Callable, Sequence

import torch

from .validate import check_impl


@functools.lru_cache(maxsize=None)
def _properties(index: int):
    return torch.cuda.get_device_properties(index)


def _cuda_properties(device: torch.device):
    """A CUDA device's properties, queried once per device (host-side: no synchronisation)."""
    return _properties(device.index if device.index is not None else torch.cuda.current_device())


def cuda_sm_count(device: torch.device) -> int:
    """A CUDA device's multiprocessor count. Each kernel module chooses its own count off CUDA (the interpreter)."""
    return _cuda_properties(device).multi_processor_count


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability (major, minor)."""
    props = _cuda_properties(device)
    return props.major, props.minor


def triton_module_available(package: str) -> bool:
    """True when the triton package and `<package>.triton` can both be imported."""
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec(f"{package}.triton") is not None


def pick_impl(package: str, name: str, impl: str, device: torch.device, reference: Callable,
              impls: Sequence[str] = ("auto", "reference", "triton")) -> Callable:
    """Resolves impl to a function: `reference`, or `<package>.triton.<name>_triton`."""
    check_impl(impl, impls)
    if impl == "reference" or (impl == "auto" and device.type != "cuda"):
        return reference
    if not triton_module_available(package):
        if impl == "auto":
            return reference
        raise ValueError(f"impl: 'triton' is not available (needs the triton package and {package}.triton)")
    # Imported only when present, so an error inside the kernel module surfaces instead of falling back.
    module = importlib.import_module(f"{package}.triton")
    if impl == "auto" and not getattr(module, "AUTO_SELECTABLE", False):
        return reference
    return getattr(module, f"{name}_triton")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1), as the CPU tests do."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_triton_device(x: torch.Tensor) -> None:
    """A Triton impl needs CUDA tensors, or the interpreter."""
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"impl: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {x.device}")


def records_autograd(*tensors) -> bool:
    """Whether autograd would record an op on these inputs (grad mode on and one of them requires a gradient).
    The Triton ops call their forward directly otherwise: torch.autograd.Function.apply costs about 20 us of host
    time per call, paid several times per layer in a prefill that no backward follows."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def warn_once(message: str, _seen: set = set()) -> None:
    """A fallback warning, given once per distinct message per process."""
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, stacklevel=3)
