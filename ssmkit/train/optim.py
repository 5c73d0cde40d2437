"""AdamW with decoupled weight decay on weight matrices only, and the warmup + cosine learning-rate schedule.

Biases, norm weights and the SSM parameters A_log, D, dt_bias (and S4's log_dt, B, C) get no weight decay, as
in the Mamba and Mamba-2 reference training code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", "D", "dt_bias", "log_dt")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, each with `names` (parameter names, for checkpoints) beside `params`."""
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = p.ndim < 2 or leaf in NO_DECAY_NAMES or ".mixer.B" in name or ".mixer.C" in name
        group = no_decay if skip else decay
        group[0].append(name)
        group[1].append(p)
    return [{"names": decay[0], "params": decay[1], "weight_decay": weight_decay},
            {"names": no_decay[0], "params": no_decay[1], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    # foreach=False: the per-parameter loop gives the same floating-point sums on every run and device count.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, foreach=False)


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to lr over warmup_steps, then a cosine
    from lr down to lr * min_lr_ratio at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    low = lr * min_lr_ratio
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
