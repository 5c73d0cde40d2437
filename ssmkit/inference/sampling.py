"""Next-token choice from logits: greedy, temperature, top-k and top-p (nucleus, Holtzman et al. 2020) sampling.

The filters run in transformers' order (temperature, then top-k, then top-p on the softmax of what is left) and
keep the same ties, so a seeded sampler and transformers' warpers agree on the support of every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick a token. temperature == 0 is greedy (argmax; top_k and top_p are then unused).

    top_k: keep the k largest logits (with ties at the k-th value), None = all. top_p in (0, 1]: keep the
    smallest set of most likely tokens whose probability reaches top_p (at least one token), 1 = all.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or t == float("inf"):
            raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k: expected None or an int >= 1, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (batch, vocab) -> the same with every logit below the k-th largest of its row set to -inf.

    Logits equal to the k-th largest are all kept (transformers' TopKLogitsWarper keeps ties too).
    """
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """logits (batch, vocab) -> the same with -inf outside each row's nucleus.

    The nucleus is the shortest prefix of tokens sorted by decreasing probability whose total reaches p: a token
    is kept when the probability of the tokens ranked above it is still below p, so the most likely token is
    always kept. (transformers drops the tokens whose ascending cumulative sum is <= 1 - p: the same set up to
    rounding of the sums.)
    """
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), -1)
    mass_above = torch.cumsum(probs, dim=-1) - probs  # (batch, vocab): mass of the tokens ranked before each one
    drop_sorted = mass_above >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filtered_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """logits (batch, vocab) -> float32/float64 logits / temperature with top-k and top-p applied (-inf = dropped).

    The sampling distribution is softmax of the result. Needs config.temperature > 0.
    """
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = logits.to(compute) / config.temperature
    if config.top_k is not None:
        out = top_k_filter(out, config.top_k)
    if config.top_p is not None:
        out = top_p_filter(out, config.top_p)
    return out


def sample_categorical_without_sync(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs (batch, vocab) -> (batch,) int64, by an exponential race.

    argmax_i p_i / E_i with E_i ~ Exp(1) i.i.d. is distributed as Categorical(p): E_i / p_i ~ Exp(rate p_i) and the
    smallest of independent exponentials is i with probability p_i / sum(p). Unlike torch.multinomial it never
    reads back to the host, so a decode loop on a GPU (or inside a CUDA graph) does not stall; p_i = 0 is never drawn.
    """
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.argmax(probs / race, dim=-1)


def next_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (batch, vocab) of the last position -> chosen token ids (batch,) int64.

    Greedy takes the first maximal index (as torch.argmax and transformers do); otherwise one draw from
    softmax(filtered_logits(logits, config)) using `generator` (the global RNG when None).
    """
    if config.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filtered_logits(logits, config), dim=-1)
    return sample_categorical_without_sync(probs, generator)
