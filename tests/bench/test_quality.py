"""Quality suite: the documented 0..1 mappings at their anchor points, chunked perplexity equals a full forward,
a uniform model scores 0, a perfect copier scores 1 on the induction task."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.bench.quality import (HELDOUT_TEXT, induction_accuracy, quality_suite, task_score, task_symbols,
                                  text_perplexity, text_score)
from ssmkit.io import ByteTokenizer
from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close


def test_scores_map_anchor_points_as_documented():
    f64 = lambda *xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    assert_close(f64(text_score(257, 257), text_score(1.0, 257), text_score(math.sqrt(257), 257),
                     text_score(1e6, 257)), f64(0.0, 1.0, 0.5, 0.0))
    assert_close(f64(task_score(1 / 16, 16), task_score(1.0, 16), task_score(0.0, 16),
                     task_score(1 / 16 + 0.5 * 15 / 16, 16)), f64(0.0, 1.0, 0.0, 0.5))


def test_chunked_perplexity_equals_one_full_forward():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny-hybrid-moe")).eval()
    ids = ByteTokenizer().encode(HELDOUT_TEXT)[:300]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1]
    expected = math.exp(F.cross_entropy(logits, torch.tensor(ids[1:])).item())
    assert_close(torch.tensor(text_perplexity(model, ids, chunk=64)), torch.tensor(expected))


def test_uniform_model_has_perplexity_vocab_size_and_scores_zero():
    model = LanguageModel(ModelConfig.from_name("tiny-llama"))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: a uniform guess over 256 tokens
    report = quality_suite(model, ByteTokenizer(), max_tokens=200, rows=2, length=8)
    assert_close(torch.tensor(report.perplexity), torch.tensor(256.0))
    assert report.text_tokens == 200 and report.text_score == 0.0
    assert report.task_accuracy == 0.0 and report.score == 0.0  # argmax of all-equal logits is id 0, never a symbol


def test_induction_accuracy_is_one_for_a_perfect_copier_and_symbols_are_the_most_frequent_tokens():
    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(1, 1)

        def forward(self, ids):
            # position t of the second copy (t >= L) predicts ids[t + 1] = ids[t + 1 - L]
            length = ids.shape[1] // 2
            nxt = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
            nxt[:, length:] = torch.cat([ids[:, 1:length], ids[:, :1]], dim=1)
            return F.one_hot(nxt, 256).float()

    symbols = task_symbols(ByteTokenizer(), HELDOUT_TEXT, 16)
    assert len(symbols) == 16 and ord(" ") == symbols[0] and ord("e") in symbols
    assert induction_accuracy(Oracle(), symbols, rows=4, length=12) == 1.0


def test_quality_suite_refuses_text_without_tokens():
    model = LanguageModel(ModelConfig.from_name("tiny-llama"))
    with pytest.raises(ValueError, match="text: expected at least 2 tokens"):
        quality_suite(model, ByteTokenizer(), text="a")
