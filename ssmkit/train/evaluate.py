"""Evaluation: cross-entropy, perplexity and bits per byte on text; accuracy on the answer positions of a task.

Only labelled positions count (labels != -100): for a task those are its answers, for text every next byte that
lies in the same document. For a byte-level model one token is one byte, so bits per byte = loss / ln 2.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .distributed import DistContext, all_reduce_sum
from .packing import model_logits
from .synthetic import IGNORE

SUMS = ("nll", "labels", "correct", "rows", "rows_correct")


@torch.no_grad()
def score_batch(model, inputs, labels, segment_ids=None) -> torch.Tensor:
    """Sums over one batch as a float64 tensor in the order of SUMS: total negative log-likelihood (nats), the
    number of labelled positions, how many of them the argmax predicts, rows with a label, rows all correct."""
    logits = model_logits(model, inputs, segment_ids).float()
    scored = labels != IGNORE
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                          reduction="sum")
    hit = (logits.argmax(-1) == labels) & scored
    has = scored.any(1)
    rows_correct = (hit.sum(1) == scored.sum(1)) & has
    return torch.stack([nll.double(), scored.sum().double(), hit.sum().double(), has.sum().double(),
                        rows_correct.sum().double()])


def summarize(sums: torch.Tensor, kind: str) -> dict:
    """Metrics from the SUMS of score_batch: loss (mean nats per label) and accuracy always; ppl and bpb for text,
    sequence_accuracy (every answer of a row right) for tasks."""
    s = dict(zip(SUMS, sums.tolist()))
    n = max(s["labels"], 1.0)
    out = {"loss": s["nll"] / n, "accuracy": s["correct"] / n, "labels": int(s["labels"])}
    if kind == "text":
        out["ppl"] = math.exp(min(out["loss"], 700.0))
        out["bpb"] = out["loss"] / math.log(2)
    else:
        out["sequence_accuracy"] = s["rows_correct"] / max(s["rows"], 1.0)
    return out


def evaluate(model, batches: list, kind: str, device, *, dist: DistContext | None = None,
             autocast=contextlib.nullcontext) -> dict:
    """Metrics of `model` over `batches` of (inputs, labels, segment_ids). With several ranks each scores every
    world_size-th batch and the sums are added up, so every rank returns the same metrics. autocast: a callable
    returning the context to run the forward in."""
    dist = dist or DistContext()
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    with autocast():
        for inputs, labels, segments in batches[dist.rank::dist.world_size]:
            sums += score_batch(model, inputs.to(device), labels.to(device),
                                None if segments is None else segments.to(device))
    sums = all_reduce_sum(sums, dist)
    model.train(was_training)
    return summarize(sums.cpu(), kind)
