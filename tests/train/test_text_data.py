"""Byte corpus: rows re-read the files byte for byte, labels stop at document boundaries, batches are pure
functions of (seed, step, micro-batch), and bad paths raise errors that name them."""

import pytest
import torch

from ssmkit.train.config import DataConfig
from ssmkit.train.data import Data
from ssmkit.train.synthetic import IGNORE
from ssmkit.train.text import ByteCorpus, TextData, manifest, resolve_files, stdlib_dir


@pytest.fixture
def docs(tmp_path):
    texts = [b"alpha beta gamma\n", b"x", b"delta epsilon zeta eta theta\n" * 3, b"", b"iota kappa\n"]
    for i, t in enumerate(texts):
        (tmp_path / f"d{i}.txt").write_bytes(t)
    return tmp_path, texts


def test_rows_reproduce_the_stream_and_stop_labels_at_document_boundaries(docs):
    folder, texts = docs
    files = resolve_files([folder], "*.txt")
    corpus = ByteCorpus.from_files(files)
    stream = b"".join(texts)
    owner = [i for i, t in enumerate(t for t in texts if t) for _ in t]  # document of each byte, by loop
    seq_len = 7
    n = corpus.n_rows(seq_len)
    inputs, labels, seg = corpus.rows(torch.arange(n), seq_len)
    for r in range(n):
        for j in range(seq_len):
            p = r * seq_len + j
            assert inputs[r, j] == stream[p]
            assert seg[r, j] == owner[p]
            want = stream[p + 1] if owner[p + 1] == owner[p] else IGNORE
            assert labels[r, j] == want


def test_missing_paths_and_empty_folders_raise_errors_naming_them(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"data.paths\[1\].*nowhere"):
        resolve_files([tmp_path, tmp_path / "nowhere"], "*")
    with pytest.raises(FileNotFoundError, match=r"no file matching '\*.py'"):
        resolve_files([tmp_path], "*.py")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Data(DataConfig(kind="text", paths=[str(tmp_path / "nowhere")]), seed=0)


def test_too_small_corpus_says_so(docs):
    folder, _ = docs
    with pytest.raises(ValueError, match="fewer than one row"):
        TextData(resolve_files([folder], "*.txt"), seq_len=4096, seed=0)


def test_batches_are_pure_functions_of_seed_step_and_micro_batch_and_cover_each_epoch(docs):
    folder, _ = docs
    files = resolve_files([folder], "*.txt")
    a, b = TextData(files, 5, seed=1), TextData(files, 5, seed=1)
    n_rows = a.train.n_rows(5)
    first = a.train_rows(torch.arange(n_rows))[0]
    again = b.train_rows(torch.arange(n_rows))[0]
    assert torch.equal(first, again)
    every_row = a.train.rows(torch.arange(n_rows), 5)[0]
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, every_row.tolist()))
    other = TextData(files, 5, seed=2).train_rows(torch.arange(n_rows))[0]
    assert not torch.equal(first, other)


def test_validation_files_are_held_out_of_training():
    d = Data(DataConfig(kind="text", paths=["{stdlib}/json"], seq_len=64, val_every=3), seed=0)
    names = [f.name for f in d.files]
    assert names == sorted(names) and len(names) >= 3
    val_files = set(d.text.val.files)
    assert val_files and not val_files & set(d.text.train.files)


def test_manifest_names_python_version_and_files_of_the_stdlib_slice():
    files = resolve_files(["{stdlib}/json"], "*.py")
    m = manifest(files)
    import sys

    assert m["python"] == sys.version.split()[0]
    assert m["n_files"] == len(files) and m["first"][0].startswith("json/")
    assert m["n_bytes"] == sum(f.stat().st_size for f in files)
    assert all(f.is_relative_to(stdlib_dir()) for f in files)
