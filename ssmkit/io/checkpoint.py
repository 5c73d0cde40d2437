"""Load and save checkpoints in Hugging Face layout: config.json + model.safetensors, or shards with an index.

Weights are read with safetensors only (never pickle). A model whose pattern no transformers family computes
exactly is saved with model_type "ssmkit" (ModelConfig's fields, ssmkit's tensor names) in the same layout.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ssmkit.models import LanguageModel

from .hf_config import config_from_hf, config_to_hf, hf_model_type
from .hf_weights import hf_to_ssmkit, ssmkit_to_hf

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def load_pretrained(path, dtype: torch.dtype | None = None, device=None) -> LanguageModel:
    """Builds a LanguageModel from a checkpoint folder.

    dtype: of the parameters (default: the dtype the checkpoint stores its embeddings in); device: default CPU.
    Raises FileNotFoundError without config.json or safetensors weights, ValueError for an unknown model_type,
    an inconsistent config, or a missing, unexpected or wrongly shaped tensor (the message names it).
    """
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"path: expected a checkpoint folder with {CONFIG_NAME}, none in {path}")
    model_type, config = config_from_hf(json.loads(config_file.read_text()))
    tensors = read_safetensors(path)
    with torch.device("meta"):
        model = LanguageModel(config)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state = hf_to_ssmkit(model_type, config, tensors, expected)
    if dtype is None:
        dtype = state["embeddings.weight"].dtype
    model = model.to_empty(device=torch.device("cpu") if device is None else device).to(dtype)
    model.tie_weights()
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_pretrained(model: LanguageModel, path, *, max_shard_size: int | None = None) -> str:
    """Writes config.json and the weights (one file, or shards of at most max_shard_size bytes plus an index).

    The format is the transformers family that computes exactly this model (mamba, mamba2, llama, jamba,
    bamba), else "ssmkit". Returns the model_type written.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    model_type = hf_model_type(config)
    _warn_router_bias(model, model_type)
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in ssmkit_to_hf(model_type, config, model.state_dict()).items()}
    hf = config_to_hf(config, model_type)
    hf["dtype"] = str(model.embeddings.weight.dtype).removeprefix("torch.")
    # json writes an infinite dt limit as the bare token Infinity, which Python's json (and transformers) reads.
    (path / CONFIG_NAME).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    _write_weights(tensors, path, max_shard_size)
    return model_type


def read_safetensors(path: Path) -> dict:
    """All tensors of model.safetensors, or of the shards a model.safetensors.index.json lists."""
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (path / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {pickled}: ssmkit reads safetensors only, never pickle)" if pickled else ""
        raise FileNotFoundError(f"path: expected {WEIGHTS_NAME} or {INDEX_NAME} in {path}{hint}")
    tensors = {}
    for name in files:
        shard = path / name
        if not shard.is_file():
            raise FileNotFoundError(f"{INDEX_NAME}: lists shard {name!r}, not found in {path}")
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def _write_weights(tensors: dict, path: Path, max_shard_size: int | None) -> None:
    for old in [path / WEIGHTS_NAME, path / INDEX_NAME, *path.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_size is None or total <= max_shard_size:
        save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _warn_router_bias(model: LanguageModel, model_type: str) -> None:
    if model_type == "ssmkit":
        return
    for moe in model.moe_layers():
        if bool(moe.router_bias.abs().max() > 0):
            warnings.warn(f"router_bias is not part of the {model_type} format and is not saved", stacklevel=3)
            return

