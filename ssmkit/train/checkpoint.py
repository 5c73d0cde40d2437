"""Training checkpoints, written atomically, without pickle.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/` holding model.safetensors (the model's state dict),
optimizer.safetensors (AdamW moments and step counts by parameter name, and the torch RNG states as uint8
tensors) and trainer_state.json (step, schedule, configs, optimizer hyperparameters, Python RNG state). It is
written into a temporary folder and renamed into place; the `latest` pointer is replaced with os.replace, so a
crash at any moment leaves the previous checkpoint intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, flushes it to disk, then renames it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(out_dir, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int) -> Path:
    """Writes checkpoint `step` of the model (unwrapped), the optimizer and `state` (JSON-able), points `latest`
    at it and deletes all but the newest `keep` checkpoints. Returns its folder."""
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    tensors, groups = optimizer_tensors(optimizer)
    tensors.update(rng_tensors())
    save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
    full = {**state, "step": step, "optimizer_groups": groups, "python_rng": _python_rng()}
    write_atomic(tmp / STATE_FILE, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / LATEST, (final.name + "\n").encode())
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir) -> Path | None:
    """The folder `latest` points at in out_dir/checkpoints, or None when there is no complete checkpoint."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def read_checkpoint(path) -> tuple[dict, dict, dict]:
    """(model tensors, optimizer + RNG tensors, trainer state) of a checkpoint folder."""
    path = Path(path)
    for name in (STATE_FILE, MODEL_FILE, OPTIMIZER_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint: {path} is not a complete training checkpoint (no {name})")
    state = json.loads((path / STATE_FILE).read_text())
    return load_file(str(path / MODEL_FILE)), load_file(str(path / OPTIMIZER_FILE)), state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """Optimizer state as {"state/<param name>/<key>": tensor} and the groups' hyperparameters (JSON-able).

    Parameter groups must carry `names` (see optim.param_groups), so a checkpoint is read back by name.
    """
    sd = optimizer.state_dict()
    tensors, groups = {}, []
    for group, sd_group in zip(optimizer.param_groups, sd["param_groups"]):
        for name, idx in zip(group["names"], sd_group["params"]):
            for key, value in sd["state"].get(idx, {}).items():
                value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"state/{name}/{key}"] = value.detach().to("cpu").clone().contiguous()
        groups.append({k: list(v) if isinstance(v, tuple) else v for k, v in sd_group.items() if k != "params"})
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    """Restores what optimizer_tensors saved into an optimizer built over the same parameter names."""
    sd = optimizer.state_dict()
    state = {}
    for group, sd_group, saved in zip(optimizer.param_groups, sd["param_groups"], groups):
        if list(saved.get("names", [])) != list(group["names"]):
            raise ValueError("checkpoint: optimizer parameter names differ from the model's (another architecture)")
        for name, idx in zip(group["names"], sd_group["params"]):
            keys = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"state/{name}/")}
            if keys:
                state[idx] = keys
        sd_group.update({k: tuple(v) if k == "betas" else v for k, v in saved.items()})
    if len(groups) != len(sd["param_groups"]):
        raise ValueError(f"checkpoint: {len(groups)} optimizer groups saved, the optimizer has "
                         f"{len(sd['param_groups'])}")
    sd["state"] = state
    optimizer.load_state_dict(sd)


def rng_tensors() -> dict:
    """The torch CPU RNG state and each CUDA device's, as uint8 tensors."""
    out = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda_{i}"] = s
    return out


def restore_rng(tensors: dict, state: dict) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "python_rng" in state:
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
