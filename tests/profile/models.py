"""The tiny hybrid Mamba-2 / attention / MoE model of the profiler tests, and helpers that inject delays."""

from __future__ import annotations

import time

import torch

from ssmkit.models import LanguageModel, ModelConfig

CONFIG = ModelConfig.from_name("tiny-hybrid-moe")
# Units hooked per model call: every block's mixer, and its feed-forward when it has one.
UNITS = [(i, kind) for i in range(CONFIG.n_layers)
         for kind in (CONFIG.mixers[i], CONFIG.feed_forwards[i]) if kind is not None]


def tiny_hybrid(seed: int = 0, dtype: torch.dtype = torch.float32) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(CONFIG).to(dtype).eval()


def prompt(batch: int = 2, seqlen: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (batch, seqlen), generator=g)


def sleep_on_calls(module: torch.nn.Module, seconds: float, calls: set[int]):
    """A forward pre-hook sleeping `seconds` on the listed calls of `module` (counted from 0); the profiler's own
    pre-hook runs first, so the sleep is inside the measured call. Returns the handle."""
    count = [0]

    def hook(_module, _args):
        if count[0] in calls:
            time.sleep(seconds)
        count[0] += 1

    return module.register_forward_pre_hook(hook)
