"""`generate_command` (the logic of `ssmkit generate CHECKPOINT --prompt ...`): loads a saved checkpoint and its
tokenizer, prints the prompt and the completion that ssmkit.inference.generate produces, reports to stderr."""

from __future__ import annotations

import io

import pytest
import torch

from ssmkit.inference import generate
from ssmkit.inference.command import generate_command
from ssmkit.io import ByteTokenizer, save_pretrained
from ssmkit.models import LanguageModel, ModelConfig

PROMPT = "state space é"  # a two-byte character: decoding must not split it


def checkpoint(path, vocab_size=257, eos=256, seed=0):
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.from_name("tiny-hybrid-moe", vocab_size=vocab_size, eos_token_id=eos))
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # peaked logits, so greedy output varies with the prompt
    save_pretrained(model, path)
    return model.eval()


def run(path, prompt=PROMPT, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = generate_command(str(path), prompt, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def expected_text(model, prompt, tok, **kwargs):
    ids = torch.tensor([tok.encode(prompt)])
    new = generate(model, ids, **kwargs)[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return prompt + tok.decode(new) + "\n"


def test_command_prints_the_prompt_and_the_same_completion_as_generate(tmp_path):
    model = checkpoint(tmp_path)
    tok = ByteTokenizer()
    tok.save(tmp_path)
    code, out, err = run(tmp_path, max_new_tokens=12)
    assert code == 0
    assert out == expected_text(model, PROMPT, tok, max_new_tokens=12, eos_token_id=256)
    assert "prompt tokens" in err and "new tokens" in err
    code, out, _ = run(tmp_path, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=4)
    assert out == expected_text(model, PROMPT, tok, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9,
                                seed=4, eos_token_id=256)
    _, chunked, _ = run(tmp_path, max_new_tokens=12, prefill_chunk_size=3, kv_dtype="float32", dtype="float64")
    assert chunked.startswith(PROMPT)


def test_byte_tokenizer_option_for_a_256_token_checkpoint_without_a_tokenizer(tmp_path):
    model = checkpoint(tmp_path, vocab_size=256, eos=None)
    code, out, _ = run(tmp_path, tokenizer="byte", max_new_tokens=5)
    assert code == 0
    assert out == expected_text(model, PROMPT, ByteTokenizer(specials=(), eos_token=None), max_new_tokens=5)


def test_command_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        run(tmp_path / "missing", tokenizer="byte")
    checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        run(tmp_path)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        run(tmp_path, tokenizer="byte", dtype="float8")
    with pytest.raises(ValueError, match="prompt: expected a non-empty prompt"):
        run(tmp_path, "", tokenizer="byte")
    with pytest.raises(ValueError, match="top_p"):
        run(tmp_path, tokenizer="byte", temperature=1.0, top_p=2.0)


def test_streaming_holds_back_a_split_utf8_character_until_it_is_complete():
    from ssmkit.inference.command import _write_new_text

    tok, out, shown, writes = ByteTokenizer(), io.StringIO(), "", []
    ids = list("aé".encode())  # 0x61, then 0xC3 0xA9
    for n in range(1, len(ids) + 1):
        before = out.getvalue()
        shown = _write_new_text(out, tok.decode(ids[:n]), shown)
        writes.append(out.getvalue()[len(before):])
    assert writes == ["a", "", "é"]
    assert out.getvalue() == "aé"
