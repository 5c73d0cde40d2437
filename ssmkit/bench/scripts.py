"""What the GPU benchmark scripts in benchmarks/ share: a timestamped log line, device synchronization and
memory release between measurements, and the random-weight models they time."""

from __future__ import annotations

import gc
import sys
import time

import torch


def log(msg: str) -> None:
    """One progress line on stderr, prefixed with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drops unreferenced tensors and, on CUDA, returns the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def random_model(preset: str, device, dtype, head_scale: float = 8.0):
    """A LanguageModel of `preset` with random weights (seed 0) made on the device, in eval mode; the LM head is
    scaled by head_scale so the logits spread out (random heads give nearly flat logits)."""
    from ssmkit.models import LanguageModel, ModelConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = LanguageModel(ModelConfig.from_name(preset))
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model.to(dtype).eval()


def select_models(models: dict, wanted: str | None, error) -> dict:
    """The entries of `models` named in the comma-separated `wanted` (all when None), in that order; an unknown
    name calls error(message) (argparse's parser.error)."""
    if not wanted:
        return models
    names = wanted.split(",")
    unknown = sorted(set(names) - set(models))
    if unknown:
        error(f"--models: unknown {unknown}; expected from {sorted(models)}")
    return {k: models[k] for k in names}
