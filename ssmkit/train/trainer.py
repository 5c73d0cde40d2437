"""The training loop: AdamW with warmup + cosine, gradient accumulation and clipping, bf16 autocast on GPU,
periodic evaluation, atomic checkpoints that resume exactly, and data, tensor or sequence parallelism across
ranks (see parallel.py).

The loss of a step is the mean cross-entropy over every labelled position of the global batch (all micro-batches
on all ranks), so one step computes the same gradient whatever the split into micro-batches and ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ssmkit.models import LanguageModel

from .checkpoint import latest_checkpoint, load_optimizer, read_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig, model_config
from .data import Data
from .distributed import DistContext, all_reduce_sum, barrier, rank_slice, wrap_ddp
from .evaluate import evaluate
from .parallel import (gather_full_weights, gather_optimizer_state, scatter_full_weights, scatter_optimizer_state,
                       sequence_parallel_view, sharded_parameters, sum_gradients, tensor_parallel_grad_norm,
                       tensor_parallel_view)
from .optim import build_optimizer, lr_at
from .packing import model_logits
from .progress import Progress
from .sequence_parallel import sequence_slice
from .synthetic import IGNORE
from .tensor_parallel import SHARDERS

METRICS_FILE = "metrics.jsonl"
HF_DIR = "model"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or Inf; the weights were not updated with it."""


@dataclass
class TrainResult:
    """losses: (step, loss) of each optimizer step run by this call (steps count from 1); eval: the last
    evaluation; checkpoint: the newest checkpoint folder; hf_dir: the Hugging Face export (rank 0, finished runs)."""

    losses: list = field(default_factory=list)
    step: int = 0
    eval: dict | None = None
    checkpoint: Path | None = None
    hf_dir: Path | None = None


class Trainer:
    """Builds data, model and optimizer from a TrainConfig and resumes from out_dir's latest checkpoint when the
    config allows it (resume: auto | always | never). `dist` describes this process's rank (one process without)."""

    def __init__(self, config: TrainConfig, *, dist: DistContext | None = None, stream=None):
        self.config, self.dist, self.stream = config, dist or DistContext(), stream
        self.device = _device(config.device, self.dist)
        self.data = Data(config.data, config.seed)
        self.model_config = model_config(config.model, self.data.vocab_size)
        torch.manual_seed(config.seed)
        self.model = LanguageModel(self.model_config).to(self.device)
        self.mode = config.parallel if self.dist.enabled else "data"
        self._check_parallel()
        if self.mode == "tensor":
            self.net = tensor_parallel_view(self.model, self.dist)
            self._sharded = sharded_parameters(self.net)
        elif self.mode == "sequence":
            self.net = sequence_parallel_view(self.model)
        else:
            self.net = wrap_ddp(self.model, self.dist, self.device)
        # tensor parallel trains the shards, so the optimizer holds them; the other modes train the full model
        trained = self.net if self.mode == "tensor" else self.model
        self.optimizer = build_optimizer(trained, config.lr, config.weight_decay, config.betas, config.eps)
        # tensor parallel checkpoints hold the optimizer of the full model, gathered into this one on saving
        self._full_optimizer = (build_optimizer(self.model, config.lr, config.weight_decay, config.betas, config.eps)
                                if self.mode == "tensor" else self.optimizer)
        self.out_dir = Path(config.out_dir)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict | None = None
        self._eval_set = None
        if config.resume != "never":
            found = latest_checkpoint(self.out_dir)
            if found is not None:
                self.load_checkpoint(found)
            elif config.resume == "always":
                raise FileNotFoundError(f"resume: 'always' but no checkpoint in {self.out_dir / 'checkpoints'}")

    def _check_parallel(self) -> None:
        """ValueError when the config cannot run in its parallel mode (checked on one process too, so a config
        fails before it reaches torchrun)."""
        cfg, mc, mode = self.config, self.model_config, self.config.parallel
        if mode == "data":
            return
        supported = sorted(SHARDERS) if mode == "tensor" else ["mamba2"]
        for i, kind in enumerate(mc.mixers):
            if kind not in supported:
                raise ValueError(f"mixers[{i}]: parallel {mode!r} supports {supported}, got {kind!r}")
        if "moe" in mc.feed_forwards:
            raise ValueError(f"feed_forwards: parallel {mode!r} does not support 'moe' (its load-balancing loss "
                             f"is not computed over the whole batch); use parallel: data")
        if mode == "sequence" and cfg.data.kind == "text" and cfg.data.document_resets:
            raise ValueError("data.document_resets: parallel 'sequence' cannot run packed documents (cu_seqlens); "
                             "set data.document_resets: false")

    # -- one optimizer step ------------------------------------------------------------------------------------
    def autocast(self):
        """The autocast context of the forward passes: bf16 on CUDA unless precision is fp32."""
        p = self.config.precision
        if p == "bf16" or (p == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute_gradients(self, step: int) -> float:
        """Forward and backward over the grad_accum micro-batches of optimizer step `step` (0-based), leaving the
        averaged gradients in .grad. Returns the step's loss (mean over the global batch's labels)."""
        cfg, ddp = self.config, self.mode == "data"
        n = cfg.batch_size * (self.dist.world_size if ddp else 1)
        batches = [self.data.train_batch(step, m, n, cfg.grad_accum) for m in range(cfg.grad_accum)]
        n_labels = sum(int((labels != IGNORE).sum()) for _, labels, _ in batches)
        rows = rank_slice(n, self.dist) if ddp else slice(None)
        cols = (sequence_slice(cfg.data.seq_len, self.dist.rank, self.dist.world_size) if self.mode == "sequence"
                else slice(None))
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for m, (inputs, labels, segments) in enumerate(batches):
            inputs, labels = inputs[rows, cols].to(self.device), labels[rows, cols].to(self.device)
            segments = None if segments is None else segments[rows, cols].to(self.device)
            sync = m == cfg.grad_accum - 1 or not (ddp and self.dist.enabled)
            with (contextlib.nullcontext() if sync else self.net.no_sync()):
                with self.autocast():
                    logits = self._forward(inputs, segments, step)
                logits = logits if logits.dtype == torch.float64 else logits.float()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      ignore_index=IGNORE, reduction="sum")
                # DDP averages gradients over ranks, so each rank's share is scaled by world_size; tensor
                # parallel ranks all compute the whole loss; sequence parallel gradients are summed over ranks.
                loss = nll * ((self.dist.world_size if ddp else 1) / max(n_labels, 1))
                aux = self.model.aux_loss
                if aux is not None:
                    loss = loss + aux / cfg.grad_accum
                loss.backward()
            total += nll.detach().double()
        if self.mode == "sequence":
            sum_gradients(list(self.model.parameters()))
        if self.mode == "tensor":
            return float(total) / max(n_labels, 1)
        return float(all_reduce_sum(total, self.dist)) / max(n_labels, 1)

    def _forward(self, inputs, segments, step: int) -> torch.Tensor:
        """Logits; an operator that rejects NaN/Inf activations (ssd checks its inputs) means divergence."""
        try:
            return model_logits(self.net, inputs, segments)
        except ValueError as err:
            if "finite" not in str(err) and all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._stop_message(f"an activation ({err})", math.nan, step + 1)) from err

    def optimizer_step(self, step: int) -> float:
        """Clips the gradients, applies AdamW at the scheduled learning rate and clears them; returns the
        gradient norm before clipping."""
        cfg = self.config
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        trained = self.net if self.mode == "tensor" else self.model
        params = [p for p in trained.parameters() if p.grad is not None]
        clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        if self.mode == "tensor":
            norm = float(tensor_parallel_grad_norm(params, self._sharded))
            # the same coefficient as clip_grad_norm_, from the full gradient's norm
            coef = min(clip / (norm + 1e-6), 1.0)
            for p in params:
                p.grad.mul_(coef)
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._stop_message("the gradient norm", norm, step + 1))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- the loop ----------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> TrainResult:
        """Runs optimizer steps from the current step to config.steps (or to stop_at, as if interrupted there).
        Raises NonFiniteLossError, keeping the last good checkpoint, when the loss turns NaN or Inf."""
        cfg, main = self.config, self.dist.is_main
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        result = TrainResult(step=self.step, checkpoint=self.last_checkpoint)
        if main:
            self._start_log()
        ranks_of_rows = self.dist.world_size if self.mode == "data" else 1  # tensor/sequence: rows shared
        tokens_per_step = cfg.batch_size * ranks_of_rows * cfg.grad_accum * cfg.data.seq_len
        bar = Progress(cfg.progress if main else "none", cfg.steps, self.step, cfg.log_every, self.stream)
        self.model.train()
        t0, since = time.perf_counter(), self.step
        try:
            while self.step < end:
                step = self.step
                loss = self.compute_gradients(step)
                if not math.isfinite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(self._stop_message("the loss", loss, step + 1))
                norm = self.optimizer_step(step)
                self.step = step + 1
                result.losses.append((self.step, loss))
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(self.step, {"loss": loss, "lr": lr})
                if self.step % cfg.log_every == 0 and main:
                    dt = time.perf_counter() - t0
                    self._log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                               "tokens": self.step * tokens_per_step,
                               "tokens_per_s": (self.step - since) * tokens_per_step / max(dt, 1e-9)})
                    t0, since = time.perf_counter(), self.step
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    result.eval = self.evaluate()
                    bar.write(f"eval step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.eval.items()
                                                                       if isinstance(v, float)))
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    result.checkpoint = self.save_checkpoint()
        finally:
            bar.close()
        result.step = self.step
        if self.step == cfg.steps and cfg.save_hf:
            self.sync_full_model()
            if main:
                result.hf_dir = self.export_hf()
        barrier(self.dist)
        return result

    def evaluate(self) -> dict:
        """Metrics on the fixed evaluation set (validation rows, or the task's held-out examples)."""
        if self._eval_set is None:
            limit = self.config.eval_batches if self.data.kind == "text" else None
            self._eval_set = self.data.eval_batches(self.config.batch_size, limit)
        self.sync_full_model()
        self.last_eval = evaluate(self.model, self._eval_set, self.data.kind, self.device, dist=self.dist,
                                  autocast=self.autocast)
        if self.dist.is_main:
            self._log({"step": self.step, "eval": self.last_eval})
        return self.last_eval

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Writes a checkpoint of the current step on rank 0 (every rank waits for it)."""
        path = None
        self.sync_full_model()
        if self.mode == "tensor":
            gather_optimizer_state(self.net, self.model, self.optimizer, self._full_optimizer)
        if self.dist.is_main:
            state = {"model_config": _jsonable(self.model_config.to_dict()),
                     "train_config": _jsonable(self.config.to_dict()), "eval": self.last_eval,
                     "data": self.data.describe()}
            path = save_checkpoint(self.out_dir, self.step, self.model, self._full_optimizer, state,
                                   self.config.keep_checkpoints)
        barrier(self.dist)
        self.last_checkpoint = path or self.out_dir / "checkpoints" / f"step_{self.step:08d}"
        return self.last_checkpoint

    def sync_full_model(self) -> None:
        """Tensor parallel: copies every rank's shards into self.model (on every rank); a no-op otherwise."""
        if self.mode == "tensor":
            gather_full_weights(self.net, self.model)

    def load_checkpoint(self, path) -> None:
        """Restores model, optimizer, step and RNG states; ValueError when the checkpoint holds another
        architecture (the message lists the fields that differ)."""
        weights, tensors, state = read_checkpoint(path)
        theirs, ours = state.get("model_config", {}), _jsonable(self.model_config.to_dict())
        first = ["mixers", "feed_forwards", "d_model", "n_layers", "vocab_size"]
        diff = sorted((k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)),
                      key=lambda k: (first.index(k) if k in first else len(first), k))
        if diff:
            shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}" for k in diff[:6])
            shown += f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
            raise ValueError(f"resume: checkpoint {path} holds another architecture ({shown}); train into a new "
                             f"out_dir or set resume: never")
        missing = self.model.load_state_dict(weights, strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise ValueError(f"resume: checkpoint {path} does not match the model (missing "
                             f"{missing.missing_keys[:5]}, unexpected {missing.unexpected_keys[:5]})")
        load_optimizer(self._full_optimizer, tensors, state["optimizer_groups"])
        if self.mode == "tensor":
            scatter_full_weights(self.net, self.model, self.dist)
            scatter_optimizer_state(self.net, self.model, self._full_optimizer, self.optimizer, self.dist)
        restore_rng(tensors, state)
        self.step, self.last_checkpoint, self.last_eval = int(state["step"]), Path(path), state.get("eval")

    def export_hf(self) -> Path:
        """Saves the model in Hugging Face format (ssmkit.io.save_pretrained) into out_dir/model, with a byte
        tokenizer for text models."""
        from ssmkit.io import ByteTokenizer, save_pretrained

        path = self.out_dir / HF_DIR
        save_pretrained(self.model, path)
        if self.data.kind == "text":
            ByteTokenizer(specials=(), eos_token=None).save(path)
        return path

    # -- logging -----------------------------------------------------------------------------------------------
    def _start_log(self) -> None:
        """Creates out_dir, writes the config, and drops metric lines past the step being resumed from."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(_jsonable(self.config.to_dict()), indent=2))
        log = self.out_dir / METRICS_FILE
        if log.is_file():
            keep = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            log.write_text("".join(line + "\n" for line in keep))

    def _log(self, record: dict) -> None:
        with open(self.out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _stop_message(self, what: str, value: float, step: int) -> str:
        kept = ("no checkpoint had been written yet" if self.last_checkpoint is None
                else f"the last good checkpoint is {self.last_checkpoint}")
        return (f"{what} is {value} at step {step}: training stopped before the optimizer step, so the weights "
                f"were not updated with it; {kept}. Lower lr, raise warmup_steps, set grad_clip or use precision: "
                f"fp32, then run again to resume from that checkpoint.")


def _device(name: str, dist: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def _jsonable(d):
    """A dict as JSON would give it back (tuples become lists, inf stays a float)."""
    return json.loads(json.dumps(d))
