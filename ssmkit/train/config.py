"""Training settings as dataclasses parsed from YAML: `TrainConfig` (optimizer, schedule, loop, output) holds a
`DataConfig` (text corpus or synthetic task) and a model spec (a preset name, or ModelConfig fields).

Unknown keys are errors that name the key and list the valid ones; values are checked against the field types.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ssmkit.models import PRESETS, ModelConfig

DATA_KINDS = ("text", "mqar", "copy", "induction")
PRECISIONS = ("auto", "fp32", "bf16")
PROGRESS = ("auto", "rich", "tqdm", "plain", "none")
RESUME = ("auto", "always", "never")
PARALLEL = ("data", "tensor", "sequence")


@dataclass
class DataConfig:
    """What the model reads. kind "text": byte-level LM on `paths` (files or folders; "{stdlib}" expands to this
    Python's standard library); "mqar", "copy", "induction": the synthetic tasks of ssmkit.train.synthetic.

    Text: folders are searched recursively for `pattern`; every `val_every`-th file (sorted order) is held out.
    document_resets: each document starts from a fresh state (packed rows with cu_seqlens, see packing.py).
    Tasks: seq_len is the task's total length; vocab_size is the task's (None: the task default);
    num_kv_pairs and power_a are MQAR's, n_tokens is the number of tokens to copy (selective copying).
    """

    kind: str = "text"
    paths: list = field(default_factory=list)
    pattern: str = "*.py"
    exclude: list = field(default_factory=lambda: ["test", "tests", "idlelib", "site-packages"])
    max_files: int | None = None
    val_every: int = 20
    document_resets: bool = True
    seq_len: int = 256
    vocab_size: int | None = None
    num_kv_pairs: int = 8
    power_a: float = 0.01
    n_tokens: int = 16
    eval_examples: int = 256

    def __post_init__(self):
        _check_choice("data.kind", self.kind, DATA_KINDS)
        _check_min("data.seq_len", self.seq_len, 2)
        _check_min("data.val_every", self.val_every, 2)
        _check_min("data.eval_examples", self.eval_examples, 1)
        if self.kind == "text" and not self.paths:
            raise ValueError("data.paths: expected at least one file or folder for kind 'text', got []")
        self.paths = [str(p) for p in self.paths]


@dataclass
class TrainConfig:
    """One training run. `model` is a preset name (see ssmkit.models.PRESETS) or a mapping of ModelConfig fields
    with an optional `preset` key whose values the other keys override; vocab_size defaults to the data's.

    The optimizer is AdamW (no weight decay on biases, norms, A_log, D, dt_bias); the learning rate warms up
    linearly for warmup_steps, then follows a cosine down to lr * min_lr_ratio at `steps`. Each optimizer step
    sees batch_size * grad_accum * world_size sequences; the loss is the mean over all labelled positions.

    parallel (under torchrun): "data" splits the batch over ranks (DDP); "tensor" splits each Mamba-2 / attention
    mixer's heads over ranks and "sequence" splits each row's positions over ranks (Mamba-2 only): in both, every
    rank reads the same batch_size * grad_accum rows per step.
    """

    model: typing.Any = "tiny-mamba2"
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="mqar"))
    out_dir: str = "runs/train"
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: str = "auto"
    progress: str = "auto"
    save_hf: bool = True
    parallel: str = "data"

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = from_mapping(DataConfig, self.data, "data")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                     "checkpoint_every", "keep_checkpoints"):
            _check_min(name, getattr(self, name), 1)
        _check_min("warmup_steps", self.warmup_steps, 0)
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected 0 <= ratio <= 1, got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas}")
        self.betas = [float(b) for b in self.betas]
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip: expected None or > 0, got {self.grad_clip}")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("progress", self.progress, PROGRESS)
        _check_choice("resume", self.resume, RESUME)
        _check_choice("parallel", self.parallel, PARALLEL)
        if not isinstance(self.model, (str, dict)):
            raise ValueError(f"model: expected a preset name or a mapping of ModelConfig fields, got "
                             f"{type(self.model).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_mapping(cls, d, "config")

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        """Reads a YAML file; raises FileNotFoundError when it is missing, ValueError for bad keys or values."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file {path}")
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a YAML mapping at the top of {path}, got {type(d).__name__}")
        return cls.from_dict(d)


def model_config(spec, vocab_size: int) -> ModelConfig:
    """The ModelConfig of TrainConfig.model; vocab_size (the data's) fills in an unset vocab_size and must not
    exceed a set one."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model.preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in spec:
        if key not in names:
            raise ValueError(f"model.{key}: unknown key; valid keys: {sorted(names | {'preset'})}")
    fields = {**(PRESETS[preset] if preset else {}), **spec}
    if "vocab_size" not in spec:
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size: the data uses {vocab_size} token ids, got vocab_size="
                         f"{fields['vocab_size']}")
    return ModelConfig(**fields)


def from_mapping(cls, d: dict, where: str):
    """cls(**d) after checking that every key is a field of cls and every value has the field's type."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown key; valid keys: {sorted(names)}")
        values[key] = _coerce(f"{where}.{key}" if where != "config" else key, value, hints[key])
    return cls(**values)


def _coerce(name: str, value, hint):
    """value checked (and numeric strings such as '3e-4' converted) against a simple type hint."""
    if hint is typing.Any or dataclasses.is_dataclass(hint):
        return value
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _union_type()) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{name}: expected a value of type {_name(hint)}, got null")
    for opt in options:
        if opt is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is bool and isinstance(value, bool):
            return value
        if opt is str and isinstance(value, str):
            return value
        if opt is list and isinstance(value, (list, tuple)):
            return list(value)
    raise ValueError(f"{name}: expected {_name(hint)}, got {value!r}")


def _union_type():
    import types

    return getattr(types, "UnionType", typing.Union)


def _name(hint) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return getattr(hint, "__name__", str(hint))


def _check_min(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
