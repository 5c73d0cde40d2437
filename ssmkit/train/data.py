"""One interface over the training data of a DataConfig: a byte corpus (TextData) or a synthetic task.

A batch is (inputs, labels, segment_ids): inputs and labels (n, seq_len) int64 aligned position by position
(labels -100 where nothing is scored), segment_ids (n, seq_len) for packed documents or None. Training batches
are pure functions of (seed, step, micro-batch), so resuming and data parallelism read exactly the same rows.
"""

from __future__ import annotations

import torch

from .config import DataConfig
from .synthetic import make_task, seeded_generator
from .text import TextData, resolve_files

EVAL_STREAM = 1_000_003  # the evaluation set of a task is drawn from its own seed stream


class Data:
    """vocab_size (ids the model must accept), kind, train_batch(...), eval_batches(...), describe()."""

    def __init__(self, config: DataConfig, seed: int):
        self.config, self.kind, self.seed = config, config.kind, seed
        if self.kind == "text":
            self.files = resolve_files(config.paths, config.pattern, config.exclude, config.max_files)
            self.text = TextData(self.files, config.seq_len, seed, config.val_every)
            self.task = None
            self.vocab_size = TextData.vocab_size
        else:
            params = {"num_kv_pairs": config.num_kv_pairs, "power_a": config.power_a, "n_tokens": config.n_tokens}
            self.task = make_task(self.kind, config.seq_len, config.vocab_size, **params)
            self.vocab_size = self.task.n_vocab
            self.files = []

    def train_batch(self, step: int, micro: int, n: int, grad_accum: int = 1):
        """The global micro-batch `micro` (of grad_accum) of optimizer step `step`: n rows (all ranks together).
        Text rows are numbered (step * grad_accum + micro) * n onwards through the epoch permutations."""
        if self.task is not None:
            inputs, labels = self.task.sample(n, seeded_generator(self.seed, step, micro))
            return inputs, labels, None
        first = (step * grad_accum + micro) * n
        inputs, labels, segments = self.text.train_rows(torch.arange(first, first + n))
        return inputs, labels, segments if self.config.document_resets else None

    def eval_batches(self, batch_size: int, limit: int | None):
        """The fixed evaluation set, split into batches of batch_size rows; at most `limit` batches."""
        if self.task is not None:
            n = self.config.eval_examples
            inputs, labels = self.task.sample(n, seeded_generator(self.seed, EVAL_STREAM))
            segments = None
        else:
            rows = None if limit is None else limit * batch_size
            inputs, labels, segments = self.text.val_rows(rows)
            segments = segments if self.config.document_resets else None
        batches = []
        for lo in range(0, inputs.shape[0], batch_size):
            sl = slice(lo, lo + batch_size)
            batches.append((inputs[sl], labels[sl], None if segments is None else segments[sl]))
        return batches if limit is None else batches[:limit]

    def describe(self) -> dict:
        """What the data is, for logs and results: the task's fields, or the corpus manifest."""
        if self.task is not None:
            return {"task": self.kind, **self.task.__dict__, "n_vocab": self.vocab_size}
        if getattr(self, "_manifest", None) is None:  # reads every file once (a digest of names and contents)
            from .text import manifest

            self._manifest = manifest(self.files)
        return {"task": "text", "seq_len": self.config.seq_len, "train_bytes": self.text.train.n_bytes,
                "val_bytes": self.text.val.n_bytes, **self._manifest}
