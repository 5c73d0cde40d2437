"""Stop tokens and lengths: generation ends at an eos id (one or a list), finished rows continue with the pad id
while the others go on unchanged, the output stops early once every row has finished, max_new_tokens is exact."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import generate, generate_steps
from tests.inference.models import random_ids, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("jamba-like")


def test_max_new_tokens_is_exact_without_stop_tokens_and_zero_returns_the_prompt(model):
    prompt = random_ids(model.config.vocab_size, 2, 4)
    for n in (0, 1, 5):
        out = generate(model, prompt, max_new_tokens=n)
        assert out.shape == (2, 4 + n) and torch.equal(out[:, :4], prompt)


def test_a_single_row_stops_right_after_its_first_stop_token(model):
    prompt = random_ids(model.config.vocab_size, 1, 6)
    free = generate(model, prompt, max_new_tokens=10, eos_token_id=[])
    new = free[0, 6:].tolist()
    eos = new[3]
    stop = new.index(eos)
    out = generate(model, prompt, max_new_tokens=10, eos_token_id=eos)
    assert out[0].tolist() == free[0, : 6 + stop + 1].tolist()
    # A list of stop ids stops at whichever comes first.
    early = new[stop - 1]
    assert early not in new[: stop - 1]  # precondition: the second id of the list comes first
    out2 = generate(model, prompt, max_new_tokens=10, eos_token_id=[eos, early])
    assert out2[0].tolist() == free[0, : 6 + stop].tolist()


def test_rows_that_stopped_are_padded_and_the_others_continue_unchanged(model):
    prompt = random_ids(model.config.vocab_size, 3, 5, seed=4)
    free = generate(model, prompt, max_new_tokens=8, eos_token_id=[])[:, 5:]
    eos = free[0, 1].item()  # row 0 stops at its second token
    pad = next(t for t in range(model.config.vocab_size) if t != eos)
    out = generate(model, prompt, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad)[:, 5:]
    for row in range(3):
        ref = free[row].tolist()
        stop = ref.index(eos) if eos in ref else None
        if stop is None:
            assert out[row].tolist() == ref[: out.shape[1]]
        else:
            assert out[row, : stop + 1].tolist() == ref[: stop + 1]
            assert (out[row, stop + 1:] == pad).all()
    assert eos not in free[1].tolist() and out.shape[1] == 8  # precondition: one row runs to max_new_tokens


def test_output_ends_once_every_row_has_stopped(model):
    prompt = random_ids(model.config.vocab_size, 3, 5, seed=4)
    free = generate(model, prompt, max_new_tokens=8, eos_token_id=[])[:, 5:]
    eos = [free[0, 1].item(), free[1, 3].item()]
    stops = [min(free[r].tolist().index(e) for e in eos if e in free[r].tolist()) for r in range(3)]
    out = generate(model, prompt, max_new_tokens=8, eos_token_id=eos)
    assert out.shape[1] == 5 + max(stops) + 1 < 5 + 8


def test_pad_defaults_to_the_first_stop_token_and_eos_defaults_to_the_config(model):
    prompt = random_ids(model.config.vocab_size, 3, 5, seed=4)
    free = generate(model, prompt, max_new_tokens=6, eos_token_id=[])[:, 5:]
    eos = free[1, 1].item()
    assert eos not in free[0].tolist() and eos not in free[1, :1].tolist()  # precondition: only row 1 stops at 1
    unused = next(t for t in range(model.config.vocab_size) if t not in free.flatten().tolist())
    out = generate(model, prompt, max_new_tokens=6, eos_token_id=[eos, unused])[:, 5:]
    assert out[1].tolist() == free[1, :2].tolist() + [eos] * 4
    assert torch.equal(out[0], free[0])
    model.config.eos_token_id = eos
    try:
        assert torch.equal(generate(model, prompt, max_new_tokens=6)[:, 5:], out)
    finally:
        model.config.eos_token_id = None


def test_steps_report_finished_rows(model):
    prompt = random_ids(model.config.vocab_size, 2, 5, seed=4)
    free = generate(model, prompt, max_new_tokens=6, eos_token_id=[])[:, 5:]
    eos = free[0, 2].item()
    steps = list(generate_steps(model, prompt, max_new_tokens=6, eos_token_id=eos))
    stop0 = free[0].tolist().index(eos)
    assert [bool(s.finished[0]) for s in steps] == [t >= stop0 for t in range(len(steps))]
