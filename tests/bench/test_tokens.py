"""Tokenizer comparison on English, Korean and Chinese text: counts equal each tokenizer's own encoding, ratio and
cost impact follow from the counts, the first tokens are shown, and the output explains what the difference shifts.
Tokenizers are trained here with the `tokenizers` library; nothing is downloaded."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ssmkit.bench.commands import tokens_compare_command
from ssmkit.bench.tokens import compare_tokenizers, explain, load_tokenizer_spec, read_texts, token_pieces
from tests.compare import assert_close

TEXTS = {
    "en.txt": "State space models keep a fixed-size state, so memory stays flat as the context grows.",
    "ko.txt": "상태 공간 모델은 고정 크기의 상태를 유지하므로 문맥이 길어져도 메모리가 일정하다.",
    "zh.txt": "状态空间模型保持固定大小的状态，因此上下文变长时内存保持不变。",
}
CORPUS = list(TEXTS.values()) * 3 + ["the model reads tokens", "모델은 토큰을 읽는다", "模型读取词元"]


def train_bpe(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return path


def train_wordpiece(path):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"],
                                                              show_progress=False))
    tok.save(str(path))
    return path


@pytest.fixture
def files(tmp_path):
    paths = []
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        paths.append(str(tmp_path / name))
    return paths


def test_byte_tokenizer_counts_utf8_bytes_and_bpe_counts_match_the_library(tmp_path):
    bpe_path = train_bpe(tmp_path / "bpe.json")
    rows = compare_tokenizers(load_tokenizer_spec("byte"), load_tokenizer_spec(str(bpe_path)), TEXTS)
    library = Tokenizer.from_file(str(bpe_path))
    for row, (name, text) in zip(rows, TEXTS.items()):
        assert row.name == name and row.characters == len(text)
        assert row.tokens_a == len(text.encode("utf-8"))
        assert row.tokens_b == len(library.encode(text, add_special_tokens=False).ids)
    # Hangul and common CJK characters are 3 UTF-8 bytes each: byte-level counts are ~3x the characters
    ko = rows[1]
    assert ko.tokens_a == 3 * sum(ch != " " and ch != "." for ch in TEXTS["ko.txt"]) + \
        TEXTS["ko.txt"].count(" ") + 1
    total = rows[-1]
    assert total.name == "total" and total.tokens_a == sum(r.tokens_a for r in rows[:-1])


def test_ratio_and_cost_impact_follow_from_the_counts(tmp_path):
    rows = compare_tokenizers(load_tokenizer_spec("byte"), load_tokenizer_spec(str(train_bpe(tmp_path / "b.json"))),
                              TEXTS)
    got = torch.tensor([[r.ratio, r.cost_impact_pct] for r in rows], dtype=torch.float64)
    want = torch.tensor([[r.tokens_b / r.tokens_a, (r.tokens_b / r.tokens_a - 1) * 100] for r in rows],
                        dtype=torch.float64)
    assert_close(got, want)
    assert all(r.tokens_b < r.tokens_a for r in rows)  # BPE trained on these texts merges bytes


def test_first_tokens_show_bytes_and_source_text_pieces(tmp_path):
    bpe = load_tokenizer_spec(str(train_bpe(tmp_path / "b.json")))
    byte = load_tokenizer_spec("byte")
    text = TEXTS["ko.txt"]
    assert [i for i, _ in token_pieces(byte, text)] == list(text.encode("utf-8")[:20])
    assert token_pieces(byte, "a\u00e9")[1][1] == "<0xC3>"
    pieces = token_pieces(bpe, text)
    ids = bpe.encode(text)[:20]
    assert [i for i, _ in pieces] == ids
    # the pieces without the split-character marks spell the decoded first 20 tokens
    assert "".join(p.lstrip("~") for _, p in pieces) == bpe.decode(ids).rstrip("\ufffd")
    assert text.startswith(bpe.decode(ids).rstrip("\ufffd"))


def test_any_object_with_encode_and_decode_works():
    class Words:
        vocab = ["ab", "cde"]

        def encode(self, text):
            return [self.vocab.index(w) for w in text.split()]

        def decode(self, ids):
            return " ".join(self.vocab[i] for i in ids)

    rows = compare_tokenizers(Words(), load_tokenizer_spec("byte"), {"t": "ab cde"})
    assert (rows[0].tokens_a, rows[0].tokens_b, rows[0].first_a) == (2, 6, [(0, "ab"), (1, " cde")])


def test_tokens_compare_command_prints_counts_first_tokens_and_the_explanation(tmp_path, files, capsys):
    (tmp_path / "wp").mkdir()
    wordpiece = train_wordpiece(tmp_path / "wp" / "tokenizer.json")
    assert tokens_compare_command("byte", str(wordpiece.parent), files) == 0
    out = capsys.readouterr().out
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")] for line in out.splitlines()
                                          if line.startswith("| "))}
    for path, text in zip(files, TEXTS.values()):  # characters, and byte-level tokens = UTF-8 bytes
        assert rows[path][2:4] == [str(len(text)), str(len(text.encode("utf-8")))]
    assert out.count("first 20 tokens of") == 3
    for phrase in ("cost:", "length limits:", "prompt layout:", "characters with A"):
        assert phrase in out


def test_bad_tokenizer_and_text_inputs_are_refused_with_their_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer_spec(str(tmp_path / "nowhere"))
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text"):
        read_texts([tmp_path / "latin1.txt"])
    with pytest.raises(ValueError, match="files: expected at least one"):
        tokens_compare_command("byte", "byte", [])


def test_identical_tokenizers_are_reported_as_changing_nothing():
    rows = compare_tokenizers(load_tokenizer_spec("byte"), load_tokenizer_spec("byte"), {"ko": TEXTS["ko.txt"]})
    assert rows[0].ratio == 1.0 and rows[0].cost_impact_pct == 0.0
    assert "same number of tokens" in explain(rows[-1])[0]
