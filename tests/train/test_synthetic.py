"""Synthetic tasks: formats checked against answers re-derived from the inputs by plain loops; seeds reproduce
batches; accuracy counts answer positions only."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.train.evaluate import score_batch, summarize
from ssmkit.train.synthetic import IGNORE, MQAR, InductionHeads, SelectiveCopy, make_task, seeded_generator


def mqar_table_by_loop(row, kv):
    """{key: value} read pair by pair from the context."""
    return {row[i]: row[i + 1] for i in range(0, 2 * kv, 2)}


@settings(max_examples=8, deadline=None)
@given(kv=st.integers(1, 6), extra=st.integers(0, 9), seed=st.integers(0, 1000), noise=st.booleans())
def test_mqar_labels_are_the_values_of_the_queried_keys(kv, extra, seed, noise):
    task = MQAR(seq_len=4 * kv + extra, vocab_size=4 * kv + 8, num_kv_pairs=kv, random_non_queries=noise)
    inputs, labels = task.sample(5, seeded_generator(seed))
    assert inputs.shape == labels.shape == (5, task.seq_len)
    assert int(inputs.min()) >= 0 and int(inputs.max()) < task.vocab_size
    half = task.vocab_size // 2
    for row, lab in zip(inputs.tolist(), labels.tolist()):
        keys = row[0:2 * kv:2]
        assert len(set(keys)) == kv and all(1 <= k < half for k in keys)
        assert all(half <= v < task.vocab_size for v in row[1:2 * kv:2])
        table = mqar_table_by_loop(row, kv)
        answered = [t for t, y in enumerate(lab) if y != IGNORE]
        assert len(answered) == kv  # every key is queried exactly once
        assert sorted(row[t] for t in answered) == sorted(keys)
        for t in answered:
            assert t >= 2 * kv and (t - 2 * kv) % 2 == 0
            assert lab[t] == table[row[t]]
        if not noise:
            assert all(row[t] == 0 for t in range(2 * kv, task.seq_len) if t not in answered)


def test_mqar_power_law_puts_more_queries_near_the_context():
    task = MQAR(seq_len=256, vocab_size=512, num_kv_pairs=4, power_a=0.01)
    _, labels = task.sample(200, seeded_generator(0))
    pos = torch.nonzero(labels != IGNORE)[:, 1] - 8
    assert (pos < 64).float().mean() > (pos >= 184).float().mean()


def test_selective_copy_labels_are_the_data_tokens_in_order():
    task = SelectiveCopy(seq_len=40, vocab_size=6, n_tokens=5)
    inputs, labels = task.sample(7, seeded_generator(3))
    assert task.n_vocab == 8
    for row, lab in zip(inputs.tolist(), labels.tolist()):
        context = row[:35]
        data = [t for t in context if t != SelectiveCopy.NOISE]
        assert len(data) == 5 and all(2 <= t < 8 for t in data)
        assert row[35:] == [SelectiveCopy.MARKER] * 5
        assert lab[:35] == [IGNORE] * 35 and lab[35:] == data


def test_induction_label_is_the_token_after_the_first_trigger():
    task = InductionHeads(seq_len=30, vocab_size=5)
    inputs, labels = task.sample(9, seeded_generator(1))
    trigger = 5
    for row, lab in zip(inputs.tolist(), labels.tolist()):
        where = [t for t, x in enumerate(row) if x == trigger]
        assert len(where) == 2 and where[1] == 29 and where[0] <= 27
        assert lab[:-1] == [IGNORE] * 29 and lab[-1] == row[where[0] + 1]


@pytest.mark.parametrize("kind", ["mqar", "copy", "induction"])
def test_same_seed_gives_same_batch_and_other_seed_another(kind):
    task = make_task(kind, 64, None if kind != "mqar" else 128)
    a = task.sample(4, seeded_generator(5, 2, 0))
    b = task.sample(4, seeded_generator(5, 2, 0))
    c = task.sample(4, seeded_generator(5, 2, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_tasks_reject_impossible_sizes():
    with pytest.raises(ValueError, match="seq_len"):
        MQAR(seq_len=10, vocab_size=64, num_kv_pairs=4)
    with pytest.raises(ValueError, match="vocab_size"):
        MQAR(seq_len=64, vocab_size=8, num_kv_pairs=4)
    with pytest.raises(ValueError, match="seq_len"):
        SelectiveCopy(seq_len=10, n_tokens=8)


class FixedLogits(torch.nn.Module):
    """Predicts `answer` (batch, seqlen) with certainty."""

    def __init__(self, answer, vocab):
        super().__init__()
        self.answer, self.vocab = answer, vocab

    def forward(self, input_ids):
        return torch.nn.functional.one_hot(self.answer, self.vocab).float() * 20.0


def test_accuracy_counts_only_answer_positions():
    task = SelectiveCopy(seq_len=24, vocab_size=4, n_tokens=4)
    inputs, labels = task.sample(6, seeded_generator(0))
    answers_only = torch.where(labels != IGNORE, labels, (inputs + 1) % task.n_vocab)  # wrong elsewhere
    m = summarize(score_batch(FixedLogits(answers_only, task.n_vocab), inputs, labels), "copy")
    assert m["accuracy"] == 1.0 and m["sequence_accuracy"] == 1.0 and m["labels"] == 24
    wrong = torch.where(labels != IGNORE, (labels + 1) % task.n_vocab, inputs)
    wrong[0, -1] = labels[0, -1]  # one answer right: 1 of 24
    m = summarize(score_batch(FixedLogits(wrong, task.n_vocab), inputs, labels), "copy")
    assert m["accuracy"] == pytest.approx(1 / 24) and m["sequence_accuracy"] == 0.0
