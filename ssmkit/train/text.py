"""Byte-level language modelling on local text: files and folders become documents, documents one byte stream,
the stream rows of seq_len tokens that remember where each document starts (segment ids -> cu_seqlens).

Nothing is downloaded. "{stdlib}" in a path is this Python's standard library source tree, present on every machine.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .synthetic import IGNORE


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_files(paths: list, pattern: str = "*.py", exclude: list = (), max_files: int | None = None) -> list:
    """Sorted, de-duplicated files: each path is a file, or a folder searched recursively for `pattern`; files
    with a folder name from `exclude` under a searched folder are skipped. Raises FileNotFoundError naming the
    path that does not exist or holds no matching file."""
    files = []
    for i, raw in enumerate(paths):
        path = Path(str(raw).replace("{stdlib}", str(stdlib_dir()))).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(f for f in path.rglob(pattern)
                           if f.is_file() and not set(f.relative_to(path).parts[:-1]) & set(exclude))
            if not found:
                raise FileNotFoundError(f"data.paths[{i}]: no file matching {pattern!r} under {path}")
            files.extend(found)
        else:
            raise FileNotFoundError(f"data.paths[{i}]: no such file or folder: {path}")
    files = sorted(set(files))
    return files[:max_files] if max_files else files


@dataclass
class ByteCorpus:
    """Documents concatenated: tokens (N,) uint8 and doc_starts (ndocs,) int64, the offset of each document."""

    tokens: torch.Tensor
    doc_starts: torch.Tensor
    files: list

    @classmethod
    def from_files(cls, files: list) -> "ByteCorpus":
        docs = [f.read_bytes() for f in files]
        docs = [d for d in docs if d]
        lengths = torch.tensor([len(d) for d in docs], dtype=torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths
        stream = bytearray(b"".join(docs))
        tokens = torch.frombuffer(stream, dtype=torch.uint8) if stream else torch.zeros(0, dtype=torch.uint8)
        return cls(tokens=tokens, doc_starts=starts, files=list(files))

    @property
    def n_bytes(self) -> int:
        return self.tokens.numel()

    def n_rows(self, seq_len: int) -> int:
        """Full rows of seq_len inputs (each needs one more byte for its last label)."""
        return max(0, (self.n_bytes - 1) // seq_len)

    def rows(self, index: torch.Tensor, seq_len: int):
        """Rows `index` (n,) -> inputs (n, seq_len) int64, labels (n, seq_len) int64 (-100 where the next byte
        starts another document), segment_ids (n, seq_len) int64 (the document of each position)."""
        offsets = index[:, None] * seq_len + torch.arange(seq_len + 1)  # (n, seq_len + 1)
        window = self.tokens[offsets].to(torch.int64)
        doc = torch.searchsorted(self.doc_starts, offsets, right=True) - 1
        inputs, labels = window[:, :-1], window[:, 1:].clone()
        labels[doc[:, 1:] != doc[:, :-1]] = IGNORE
        return inputs, labels, doc[:, :-1]


def split_files(files: list, val_every: int) -> tuple[list, list]:
    """(train, val): every val_every-th file (from the middle of each group) is held out; with fewer than
    val_every files the last one is held out, and a single file serves both (split by bytes in TextData)."""
    if len(files) < 2:
        return list(files), []
    val = [f for i, f in enumerate(files) if i % val_every == val_every // 2]
    if not val:
        val = [files[-1]]
    train = [f for f in files if f not in set(val)]
    return train, val


def manifest(files: list) -> dict:
    """What a result was computed on: Python version, file count, bytes, and a digest of names and contents."""
    h = hashlib.sha256()
    total = 0
    base = stdlib_dir()
    names = []
    for f in files:
        data = f.read_bytes()
        total += len(data)
        name = str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
        names.append(name)
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"python": sys.version.split()[0], "stdlib": str(base), "n_files": len(files), "n_bytes": total,
            "sha256": h.hexdigest()[:16], "first": names[:3], "last": names[-3:]}


class TextData:
    """Train and validation rows of a byte corpus. Row order is a fresh permutation each epoch (seeded), and the
    rows of (step, micro-batch) are a pure function of them, so a resumed run reads exactly the same batches."""

    vocab_size = 256

    def __init__(self, files: list, seq_len: int, seed: int, val_every: int = 20):
        train_files, val_files = split_files(files, val_every)
        self.train = ByteCorpus.from_files(train_files)
        self.val = ByteCorpus.from_files(val_files) if val_files else None
        if self.val is None:  # one file: the last tenth of its bytes is the validation set
            cut = int(self.train.n_bytes * 0.9)
            whole = self.train
            self.train = ByteCorpus(whole.tokens[:cut], whole.doc_starts[whole.doc_starts < cut], whole.files)
            self.val = ByteCorpus(whole.tokens[cut:], torch.zeros(1, dtype=torch.int64), whole.files)
        for name, corpus in (("train", self.train), ("validation", self.val)):
            if corpus.n_rows(seq_len) < 1:
                raise ValueError(f"data.paths: the {name} split has {corpus.n_bytes} bytes, fewer than one row "
                                 f"of data.seq_len + 1 = {seq_len + 1}; add files or lower data.seq_len")
        self.seq_len, self.seed = seq_len, seed
        self.files = files
        self._perms: dict[int, torch.Tensor] = {}

    def train_rows(self, sample_index: torch.Tensor):
        """Global sample indices (n,) -> (inputs, labels, segment_ids) of the rows they map to."""
        n_rows = self.train.n_rows(self.seq_len)
        epoch, pos = sample_index // n_rows, sample_index % n_rows
        rows = torch.empty_like(sample_index)
        for e in epoch.unique().tolist():
            sel = epoch == e
            rows[sel] = self._perm(e, n_rows)[pos[sel]]
        return self.train.rows(rows, self.seq_len)

    def val_rows(self, limit: int | None = None):
        """The first `limit` validation rows in order (all with None)."""
        n = self.val.n_rows(self.seq_len)
        n = n if limit is None else min(n, limit)
        return self.val.rows(torch.arange(n), self.seq_len)

    def _perm(self, epoch: int, n_rows: int) -> torch.Tensor:
        if epoch not in self._perms:
            from .synthetic import seeded_generator

            self._perms = {epoch: torch.randperm(n_rows, generator=seeded_generator(self.seed, epoch, 7))}
        return self._perms[epoch]
