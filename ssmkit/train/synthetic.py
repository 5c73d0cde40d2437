"""Synthetic recall tasks with seeded generators: MQAR (Arora et al. 2023, Zoology; used in Mamba-2 section 9.1),
selective copying and induction heads (Gu & Dao 2023, section 4.1).

Every task returns (inputs, labels), both (n, seq_len) int64 and aligned: the model's output at position t is
scored against labels[t]; labels are -100 everywhere except at the answer positions, so the loss and the accuracy
count answers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class MQAR:
    """Multi-query associative recall. Keys are ids in [1, vocab_size // 2), values in [vocab_size // 2,
    vocab_size). The first 2 * num_kv_pairs positions hold k1 v1 k2 v2 ...; each key is then queried once, at
    position 2 * num_kv_pairs + 2 * gap with gap drawn without replacement from a power law p(g) ~ (g+1)^(a-1)
    (power_a = 1: uniform), and the answer (its value) is the label at the query position. Other positions hold
    uniform random ids when random_non_queries, else 0.

        inputs  k1 v1 k2 v2 | .  k2 .  .  k1 .  ...
        labels  -  -  -  -  | -  v2 -  -  v1 -  ...
    """

    seq_len: int = 64
    vocab_size: int = 8192
    num_kv_pairs: int = 8
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self):
        if self.num_kv_pairs < 1:
            raise ValueError(f"num_kv_pairs: expected >= 1, got {self.num_kv_pairs}")
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(f"seq_len: MQAR needs seq_len >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (keys, "
                             f"values and one query slot of two positions each), got {self.seq_len}")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(f"vocab_size: MQAR needs vocab_size // 2 - 1 >= num_kv_pairs = {self.num_kv_pairs} "
                             f"distinct keys, got vocab_size={self.vocab_size}")
        if self.power_a <= 0:
            raise ValueError(f"power_a: expected > 0, got {self.power_a}")

    @property
    def n_vocab(self) -> int:
        return self.vocab_size

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples -> (inputs, labels), each (n, seq_len) int64."""
        kv, half, g = self.num_kv_pairs, self.vocab_size // 2, generator
        keys = torch.rand(n, half - 1, generator=g).argsort(dim=1)[:, :kv] + 1  # distinct keys per row
        values = torch.rand(n, self.vocab_size - half, generator=g).argsort(dim=1)[:, :kv] + half
        context = 2 * kv
        space = (self.seq_len - context) // 2
        p = self.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(p.expand(n, space), kv, replacement=False, generator=g)
        inputs = torch.zeros(n, self.seq_len, dtype=torch.int64)
        inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
        query_pos = context + 2 * gaps
        inputs.scatter_(1, query_pos, keys)
        labels = torch.full_like(inputs, IGNORE)
        labels.scatter_(1, query_pos, values)
        if self.random_non_queries:
            noise = torch.randint(self.vocab_size, inputs.shape, generator=g)
            free = torch.ones_like(inputs, dtype=torch.bool)
            free[:, :context] = False
            free.scatter_(1, query_pos, False)
            inputs = torch.where(free, noise, inputs)
        return inputs, labels


@dataclass
class SelectiveCopy:
    """Selective copying: n_tokens data tokens sit at random positions among noise in the first
    seq_len - n_tokens positions; then n_tokens marker tokens follow, and at the i-th marker the label is the
    i-th data token (in order of position). Ids: 0 noise, 1 marker, 2 .. vocab_size + 1 data tokens.

        inputs  .  a  .  .  b  .  c  .  | M  M  M
        labels  -  -  -  -  -  -  -  -  | a  b  c
    """

    seq_len: int = 256
    vocab_size: int = 16
    n_tokens: int = 16

    NOISE = 0
    MARKER = 1

    def __post_init__(self):
        if self.n_tokens < 1 or self.vocab_size < 1:
            raise ValueError(f"n_tokens, vocab_size: expected >= 1, got {self.n_tokens}, {self.vocab_size}")
        if 2 * self.n_tokens > self.seq_len:
            raise ValueError(f"seq_len: selective copying needs seq_len >= 2 * n_tokens = {2 * self.n_tokens}, "
                             f"got {self.seq_len}")

    @property
    def n_vocab(self) -> int:
        return self.vocab_size + 2

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples -> (inputs, labels), each (n, seq_len) int64."""
        k, context, g = self.n_tokens, self.seq_len - self.n_tokens, generator
        positions = torch.rand(n, context, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
        tokens = torch.randint(2, self.vocab_size + 2, (n, k), generator=g)
        inputs = torch.full((n, self.seq_len), self.NOISE, dtype=torch.int64)
        inputs.scatter_(1, positions, tokens)
        inputs[:, context:] = self.MARKER
        labels = torch.full_like(inputs, IGNORE)
        labels[:, context:] = tokens
        return inputs, labels


@dataclass
class InductionHeads:
    """Induction heads: random tokens from [0, vocab_size); a trigger token (id vocab_size) appears once at a
    random position p <= seq_len - 3 and again at the last position, where the label is the token that followed
    the first trigger, inputs[p + 1].

        inputs  x  x  T  a  x  x  x  T
        labels  -  -  -  -  -  -  -  a
    """

    seq_len: int = 256
    vocab_size: int = 16

    def __post_init__(self):
        if self.seq_len < 4 or self.vocab_size < 1:
            raise ValueError(f"seq_len, vocab_size: expected >= 4 and >= 1, got {self.seq_len}, {self.vocab_size}")

    @property
    def n_vocab(self) -> int:
        return self.vocab_size + 1

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples -> (inputs, labels), each (n, seq_len) int64."""
        g, trigger = generator, self.vocab_size
        inputs = torch.randint(self.vocab_size, (n, self.seq_len), generator=g)
        p = torch.randint(self.seq_len - 2, (n, 1), generator=g)
        inputs.scatter_(1, p, trigger)
        inputs[:, -1] = trigger
        labels = torch.full_like(inputs, IGNORE)
        labels[:, -1] = inputs.gather(1, p + 1)[:, 0]
        return inputs, labels


TASKS = {"mqar": MQAR, "copy": SelectiveCopy, "induction": InductionHeads}


def make_task(kind: str, seq_len: int, vocab_size: int | None = None, **params):
    """The task of a DataConfig kind; vocab_size None keeps the task's default. params: the task's own fields
    (num_kv_pairs, power_a for mqar; n_tokens for copy)."""
    if kind not in TASKS:
        raise ValueError(f"kind: expected one of {sorted(TASKS)}, got {kind!r}")
    cls = TASKS[kind]
    names = set(cls.__dataclass_fields__)
    kwargs = {k: v for k, v in params.items() if k in names}
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    return cls(seq_len=seq_len, **kwargs)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator whose seed depends on every part (seed, step, micro-batch, ...), so a batch is a pure
    function of its coordinates and a resumed run draws the same data."""
    h = 1469598103934665603  # FNV-1a over the 64-bit parts
    for part in parts:
        for byte in int(part).to_bytes(8, "little", signed=True):
            h = ((h ^ byte) * 1099511628211) % (1 << 64)
    return torch.Generator().manual_seed(h % (1 << 63))
