"""Logic of `ssmkit train CONFIG.yaml` and `ssmkit eval CHECKPOINT --task ...`: plain arguments in, exit code out.

User errors (bad config keys, missing files, another architecture on resume) raise ValueError/FileNotFoundError
for the CLI to print; a NaN loss returns exit code 3 after printing why. Under torchrun every process runs
`train` and the processes share the work as the config's `parallel` says (data, tensor or sequence).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from ssmkit.models import LanguageModel, ModelConfig

from .checkpoint import STATE_FILE, latest_checkpoint, read_checkpoint
from .config import DataConfig, TrainConfig, from_mapping
from .data import Data
from .distributed import close_distributed, init_distributed
from .evaluate import evaluate
from .trainer import NonFiniteLossError, Trainer

EVAL_TASKS = {"ppl": "text", "mqar": "mqar", "copy": "copy", "induction": "induction"}
EXIT_NONFINITE = 3


def load_config(config_path, overrides=()) -> TrainConfig:
    """TrainConfig of a YAML file with `key=value` overrides (dotted keys reach into data and model:
    "data.seq_len=128", "model.d_model=64"; values are parsed as YAML)."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config: expected a YAML mapping at the top of {path}, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"overrides: expected KEY=VALUE, got {item!r}")
        node, parts = raw, key.split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str) and part == "model":
                node[part] = {"preset": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"overrides: {key!r} goes inside {part!r}, which is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return TrainConfig.from_dict(raw)


def train(config_path, overrides=(), *, stream=None) -> int:
    """Trains as the config says (resuming from its out_dir when allowed); prints where the results are."""
    config = load_config(config_path, overrides)
    dist = init_distributed()
    out = stream or sys.stdout
    try:
        trainer = Trainer(config, dist=dist)
        if dist.is_main and trainer.step:
            print(f"resuming from {trainer.last_checkpoint} (step {trainer.step})", file=out)
        result = trainer.train()
    except NonFiniteLossError as err:
        if dist.is_main:
            print(f"ssmkit train: stopped: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    finally:
        close_distributed(dist)
    if dist.is_main:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in (result.eval or {}).items() if isinstance(v, float))
        print(f"trained {result.step} steps; eval: {metrics}", file=out)
        print(f"checkpoint: {result.checkpoint}", file=out)
        if result.hf_dir is not None:
            print(f"model (Hugging Face format): {result.hf_dir}", file=out)
    return 0


def load_for_eval(checkpoint) -> tuple[LanguageModel, dict]:
    """(model, train config dict or {}) from a run folder (its latest checkpoint), a checkpoint folder, or a
    Hugging Face folder (config.json + safetensors)."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no such file or folder: {path}")
    run_latest = latest_checkpoint(path)
    if run_latest is not None:
        path = run_latest
    if (path / STATE_FILE).is_file():
        weights, _, state = read_checkpoint(path)
        model = LanguageModel(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(weights)
        return model.eval(), state.get("train_config", {})
    if (path / "config.json").is_file():
        from ssmkit.io import load_pretrained

        return load_pretrained(path, dtype=torch.float32), {}
    raise FileNotFoundError(f"checkpoint: {path} holds neither a training checkpoint ({STATE_FILE}), nor a run "
                            f"folder with checkpoints/latest, nor a Hugging Face config.json")


def eval_data_config(task: str, train_config: dict, *, data=None, seq_len=None, examples=None,
                     model_vocab: int | None = None) -> DataConfig:
    """The DataConfig of an evaluation: the training run's when it trained on the same kind, else defaults
    (MQAR then uses the model's vocabulary, up to its default 8192), with the given fields replaced."""
    if task not in EVAL_TASKS:
        raise ValueError(f"task: expected one of {sorted(EVAL_TASKS)}, got {task!r}")
    kind = EVAL_TASKS[task]
    trained = dict(train_config.get("data") or {})
    fields = trained if trained.get("kind") == kind else {"kind": kind}
    if kind == "mqar" and fields.get("vocab_size") is None and model_vocab is not None:
        fields["vocab_size"] = min(model_vocab, 8192)
    if data:
        fields["paths"] = list(data)
    if seq_len is not None:
        fields["seq_len"] = seq_len
    if examples is not None:
        fields["eval_examples"] = examples
    if kind == "text" and not fields.get("paths"):
        raise ValueError("data: --task ppl needs text files or folders (--data PATH ...); the checkpoint names none")
    return from_mapping(DataConfig, fields, "data")


def evaluate_checkpoint(checkpoint, task: str, *, data=None, seq_len=None, examples=None, seed=None,
                        batch_size: int = 16, max_batches=None, device: str = "auto", as_json: bool = False,
                        stream=None) -> int:
    """Evaluates a checkpoint on ppl (validation split of the text files: loss, perplexity, bits per byte) or
    on a task (accuracy on the answer positions of its held-out examples). Prints the metrics."""
    out = stream or sys.stdout
    model, train_config = load_for_eval(checkpoint)
    if task == "ppl" and (Path(checkpoint) / "tokenizer.json").is_file():
        raise ValueError(f"task: ppl reads text as bytes (ids 0..255); {checkpoint} has a tokenizer.json, so its "
                         f"ids are not bytes")
    config = eval_data_config(task, train_config, data=data, seq_len=seq_len, examples=examples,
                              model_vocab=model.config.vocab_size)
    seed = train_config.get("seed", 0) if seed is None else seed
    dataset = Data(config, seed)
    if dataset.vocab_size > model.config.vocab_size:
        raise ValueError(f"task: {task} uses {dataset.vocab_size} token ids, the model has vocab_size "
                         f"{model.config.vocab_size}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model = model.to(dev)
    limit = max_batches if task == "ppl" else None
    batches = dataset.eval_batches(batch_size, limit)
    if max_batches is not None:
        batches = batches[:max_batches]
    metrics = evaluate(model, batches, dataset.kind, dev)
    record = {"task": task, "checkpoint": str(checkpoint), **metrics, "data": dataset.describe()}
    if as_json:
        print(json.dumps(record), file=out)
    else:
        for key, value in metrics.items():
            print(f"{key:>18}  {value:.6g}" if isinstance(value, float) else f"{key:>18}  {value}", file=out)
    return 0


def main(argv=None) -> int:
    """`python -m ssmkit.train.commands train|eval ...` (the same arguments as `ssmkit train` / `ssmkit eval`),
    usable with torchrun: torchrun --nproc_per_node 2 -m ssmkit.train.commands train CONFIG.yaml."""
    import argparse

    parser = argparse.ArgumentParser(prog="ssmkit.train.commands")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    e = sub.add_parser("eval")
    e.add_argument("checkpoint")
    e.add_argument("--task", required=True, choices=sorted(EVAL_TASKS))
    e.add_argument("--data", nargs="+")
    e.add_argument("--seq-len", type=int)
    e.add_argument("--examples", type=int)
    e.add_argument("--seed", type=int)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-batches", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return train(args.config, args.overrides)
        return evaluate_checkpoint(args.checkpoint, args.task, data=args.data, seq_len=args.seq_len,
                                   examples=args.examples, seed=args.seed, batch_size=args.batch_size,
                                   max_batches=args.max_batches, device=args.device, as_json=args.json)
    except (ValueError, FileNotFoundError) as err:
        print(f"ssmkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
