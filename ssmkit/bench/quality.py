"""The quality suite behind `quality_score`: perplexity on held-out text and accuracy on an induction-copy task.

score = (text_score + task_score) / 2 in [0, 1]. text_score = 1 - ln(ppl) / ln(V): 0 for a model no better than a
uniform guess over its V-token vocabulary, 1 for certainty on every token. task_score = (acc - 1/K) / (1 - 1/K):
0 at the chance level of the task's K symbols, 1 when every copied token is right. Both are clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssmkit.inference.cache import allocate_cache

# Held-out English prose written for ssmkit (not in any training corpus the project builds); about 2 KB.
HELDOUT_TEXT = (
    "A recurrent model reads a sentence the way a person reads a letter: one word after another, keeping a short "
    "summary of what came before. The summary has a fixed size, so the cost of reading the next word does not "
    "depend on how long the letter already is. An attention model keeps every earlier word instead, and looks back "
    "at all of them for each new one. That makes it precise about details far in the past, and it makes its memory "
    "grow with every word it reads.\n\n"
    "Engineers who serve these models care about three numbers. The first is how long a user waits before the "
    "first word of an answer appears. The second is how many words per second arrive after that. The third is how "
    "much memory one conversation holds while it is open, because that decides how many conversations fit on one "
    "machine at the same time. A model that is fast for one user can still be slow for a hundred users if each of "
    "them holds a large cache.\n\n"
    "State space models were designed to close this gap. Their state is small and constant, their training can "
    "run in parallel over the whole sequence, and their decoding step is a few matrix products. Hybrids mix a few "
    "attention layers into a stack of state space layers, hoping to keep the recall of attention at a fraction of "
    "its memory. Whether that hope holds for a given product is a question of measurement, not of belief: the same "
    "prompts, the same hardware, the same traffic, and a careful record of what happened.\n\n"
    "A good benchmark therefore warms the machine up before it starts the clock, repeats each measurement, and "
    "reports the median together with the slow tail. It writes down the device, the library versions and the "
    "exact command, so that someone else can run it again next month and find out whether anything changed. When "
    "a run fails because memory ran out, that failure is a result as well, and it belongs in the table.\n"
)


@dataclass
class QualityReport:
    """The suite's measurements and their 0..1 scores (see the module docstring for the mapping)."""

    perplexity: float
    text_tokens: int
    vocab_size: int
    text_score: float
    task_accuracy: float
    task_symbols: int
    task_score: float
    score: float


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def text_score(perplexity: float, vocab_size: int) -> float:
    """1 - ln(perplexity) / ln(vocab_size), clipped to [0, 1]: the share of a uniform guess's surprise removed."""
    return _clip01(1.0 - math.log(perplexity) / math.log(vocab_size))


def task_score(accuracy: float, symbols: int) -> float:
    """(accuracy - 1/symbols) / (1 - 1/symbols), clipped to [0, 1]: accuracy above chance, scaled to 1."""
    chance = 1.0 / symbols
    return _clip01((accuracy - chance) / (1.0 - chance))


@torch.no_grad()
def text_perplexity(model, token_ids: list[int], chunk: int = 512) -> float:
    """exp(mean next-token NLL) of `token_ids` (>= 2 tokens), read in chunks of `chunk` through a decode cache
    so memory stays bounded."""
    if len(token_ids) < 2:
        raise ValueError(f"token_ids: expected at least 2 tokens, got {len(token_ids)}")
    device = model.embeddings.weight.device
    ids = torch.tensor([token_ids], dtype=torch.int64, device=device)
    state = allocate_cache(model, 1, ids.shape[1])
    nll, count = 0.0, 0
    for start in range(0, ids.shape[1] - 1, chunk):
        piece = ids[:, start:start + chunk]
        logits = model(piece, state)[0].float()
        targets = ids[0, start + 1:start + 1 + piece.shape[1]]
        logits = logits[:targets.shape[0]]
        nll += F.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.shape[0]
    return math.exp(nll / count)


@torch.no_grad()
def induction_accuracy(model, symbols: list[int], *, rows: int = 8, length: int = 32, seed: int = 0) -> float:
    """Each row is a random sequence s of `length` symbols followed by s again; the score is the share of
    positions in the second copy where the greedy prediction is the next symbol of s (length - 1 per row)."""
    gen = torch.Generator().manual_seed(seed)
    sym = torch.tensor(symbols, dtype=torch.int64)
    seq = sym[torch.randint(len(symbols), (rows, length), generator=gen)]
    ids = torch.cat([seq, seq], dim=1).to(model.embeddings.weight.device)
    preds = model(ids).argmax(-1)[:, length:2 * length - 1].cpu()  # positions length .. 2 length - 2
    return float((preds == seq[:, 1:]).double().mean())


def task_symbols(tokenizer, text: str, k: int = 16) -> list[int]:
    """The k most frequent token ids of `text` (ties broken by id): symbols the model has a reason to know."""
    counts = Counter(tokenizer.encode(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [tid for tid, _ in ranked[:k]]


def quality_suite(model, tokenizer, text: str | None = None, *, max_tokens: int = 1024, symbols: int = 16,
                  rows: int = 8, length: int = 32, seed: int = 0) -> QualityReport:
    """Runs both tests on `model` (a LanguageModel) with `tokenizer`; text defaults to HELDOUT_TEXT.

    max_tokens: the text's first tokens that are scored; symbols, rows, length, seed: the induction task.
    """
    text = HELDOUT_TEXT if text is None else text
    ids = tokenizer.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"text: expected at least 2 tokens of held-out text, got {len(ids)}")
    vocab = model.config.vocab_size
    if max(ids) >= vocab:
        raise ValueError(f"tokenizer: produced token id {max(ids)} >= the model's vocab_size {vocab}")
    ppl = text_perplexity(model, ids)
    sym = task_symbols(tokenizer, text, symbols)
    if len(sym) < 2:
        raise ValueError(f"text: expected at least 2 distinct tokens for the induction task, got {len(sym)}")
    acc = induction_accuracy(model, sym, rows=rows, length=length, seed=seed)
    ts, ks = text_score(ppl, vocab), task_score(acc, len(sym))
    return QualityReport(perplexity=ppl, text_tokens=len(ids), vocab_size=vocab, text_score=ts, task_accuracy=acc,
                         task_symbols=len(sym), task_score=ks, score=(ts + ks) / 2)
