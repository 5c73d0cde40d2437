"""The byte tokenizer and tokenizer.json loading share one interface and agree with their references."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.io import ByteTokenizer, load_tokenizer


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_round_trips_any_text_as_utf8(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials_follow_the_bytes():
    tok = ByteTokenizer(specials=("<bos>", "<eos>"), eos_token="<eos>", bos_token="<bos>")
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (258, 256, 257)
    ids = [256, *tok.encode("hé"), 257]
    assert tok.decode(ids) == "hé"
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>hé<eos>"
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 258\), got 300"):
        tok.decode([300])


def test_saved_byte_tokenizer_loads_back(tmp_path):
    ByteTokenizer(specials=("<eos>", "<pad>")).save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, ByteTokenizer)
    assert (tok.vocab_size, tok.eos_token_id) == (258, 256)


def _word_level_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "state": 5, "space": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))


def test_tokenizer_json_matches_transformers_fast_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    _word_level_tokenizer(tmp_path)
    ours = load_tokenizer(tmp_path)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "hello state space world unknown"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
    ids = [1, 3, 5, 2]
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert (ours.vocab_size, ours.eos_token_id, ours.bos_token_id) == (7, 2, 1)


def test_folder_without_tokenizer_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
