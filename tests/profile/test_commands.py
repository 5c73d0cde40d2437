import csv
import io
import json

import pytest

from ssmkit.io import save_pretrained
from ssmkit.profile import TraceStore
from ssmkit.profile.commands import (profile_command, trace_query_command, trace_report_command,
                                     trace_summary_command)

from .models import UNITS, tiny_hybrid

SQL = "SELECT layer_type, count(*) AS calls FROM events GROUP BY ALL ORDER BY layer_type"


@pytest.fixture(scope="module")
def profiled_db(tmp_path_factory):
    """A store with one profiled run of a saved tiny hybrid checkpoint: 2 requests x (prefill + 5 steps)."""
    tmp = tmp_path_factory.mktemp("trace")
    save_pretrained(tiny_hybrid(), tmp / "ckpt")
    db = str(tmp / "trace.duckdb")
    out = io.StringIO()
    assert profile_command(str(tmp / "ckpt"), "hello", 6, db, requests=2, batch=3, tokenizer="byte", out=out) == 0
    return db, out.getvalue()


def test_profile_command_records_every_layer_call_and_prints_the_summary(profiled_db):
    db, printed = profiled_db
    assert "run 1 written to" in printed and "worst layers" in printed and "decode   moe" in printed
    with TraceStore(db, read_only=True) as store:
        assert store.query("SELECT count(*) FROM events")[1][0][0] == 2 * 6 * len(UNITS)
        assert store.query("SELECT DISTINCT request_id, batch FROM events ORDER BY ALL")[1] == [(0, 3), (1, 3)]
        assert store.query("SELECT seqlen FROM events WHERE phase = 'prefill' LIMIT 1")[1] == [(5,)]


def test_query_prints_a_table_csv_and_json_of_the_same_rows(profiled_db, capsys):
    db, _ = profiled_db
    expected = [("attention", 12), ("mamba2", 36), ("mlp", 24), ("moe", 24)]
    assert trace_query_command(db, SQL, "table") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["layer_type", "calls"] and table[-1] == "(4 rows)"
    assert [tuple(line.split()) for line in table[2:-1]] == [(t, str(n)) for t, n in expected]
    assert trace_query_command(db, SQL, "csv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["layer_type", "calls"]] + [[t, str(n)] for t, n in expected]
    assert trace_query_command(db, SQL, "json") == 0
    assert json.loads(capsys.readouterr().out) == [{"layer_type": t, "calls": n} for t, n in expected]


@pytest.mark.parametrize("sql, message", [
    ("SELEC 1", "syntax error at or near \"SELEC\""),
    ("SELECT nope FROM events", "nope"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("DELETE FROM events", "read-only"),
])
def test_query_sql_errors_print_the_message_and_exit_2_without_a_traceback(profiled_db, capsys, sql, message):
    db, _ = profiled_db
    assert trace_query_command(db, sql) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ssmkit trace query: SQL error: ") and message in captured.err
    assert "Traceback" not in captured.err
    with TraceStore(db, read_only=True) as store:  # the store is untouched
        assert store.query("SELECT count(*) FROM events")[1][0][0] == 2 * 6 * len(UNITS)


def test_missing_store_bad_format_and_unknown_run_are_user_errors(profiled_db, tmp_path):
    db, _ = profiled_db
    with pytest.raises(FileNotFoundError, match="db: no trace store at"):
        trace_query_command(str(tmp_path / "missing.duckdb"), SQL)
    with pytest.raises(ValueError, match="format: expected one of"):
        trace_query_command(db, SQL, "xml")
    with pytest.raises(ValueError, match=r"run: expected one of the runs \[1\], got 9"):
        trace_summary_command(db, 9)
    with pytest.raises(FileNotFoundError, match="expected a checkpoint folder with config.json"):
        profile_command(str(tmp_path), "hi", 2, str(tmp_path / "x.duckdb"))


def test_a_file_that_is_not_a_trace_store_is_refused_with_its_schema(tmp_path):
    import duckdb

    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE t (x INTEGER)").close()
    with pytest.raises(ValueError, match="expected an ssmkit trace store of schema version 2, got no ssmkit schema"):
        TraceStore(path, read_only=True)


def test_summary_and_report_commands_run_on_the_newest_run(profiled_db, tmp_path, capsys):
    db, _ = profiled_db
    assert trace_summary_command(db) == 0
    assert capsys.readouterr().out.startswith("run 1: wall time")
    path = tmp_path / "report.html"
    assert trace_report_command(db, str(path)) == 0
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_profile_workload_records_each_request_by_id_with_prefill_and_decode_tagged(tmp_path):
    # Two replayed requests: a text prompt of 8 bytes with 3 new tokens, a synthetic 9-token prompt with 4.
    (tmp_path / "log.jsonl").write_text('{"arrival_s": 0, "prompt": "hi there", "output_tokens": 3}\n'
                                        '{"arrival_s": 1, "prompt_tokens": 9, "output_tokens": 4}\n')
    (tmp_path / "w.yaml").write_text("replay: {path: log.jsonl}\n")
    db = str(tmp_path / "trace.duckdb")
    out = io.StringIO()
    assert profile_command("preset:tiny-hybrid-moe", None, db=db, workload=str(tmp_path / "w.yaml"),
                           tokenizer="byte", out=out) == 0
    assert "of the last of 2 requests" in out.getvalue()
    with TraceStore(db, read_only=True) as store:
        rows = store.query("SELECT request_id, phase, step, min(seqlen), max(seqlen), count(*) FROM events "
                           "GROUP BY ALL ORDER BY ALL")[1]
    # One prefill call (step 0, the whole prompt) then output_tokens - 1 decode calls (the last token is not fed back).
    n = len(UNITS)
    assert rows == [(0, "decode", 1, 1, 1, n), (0, "decode", 2, 1, 1, n), (0, "prefill", 0, 8, 8, n),
                    (1, "decode", 1, 1, 1, n), (1, "decode", 2, 1, 1, n), (1, "decode", 3, 1, 1, n),
                    (1, "prefill", 0, 9, 9, n)]


def test_profile_needs_exactly_one_of_prompt_and_workload(tmp_path):
    with pytest.raises(ValueError, match="prompt, workload: expected exactly one of them"):
        profile_command("preset:tiny-hybrid-moe", None, db=str(tmp_path / "x.duckdb"))
    with pytest.raises(ValueError, match="prompt, workload: expected exactly one of them"):
        profile_command("preset:tiny-hybrid-moe", "hi", db=str(tmp_path / "x.duckdb"), workload="w.yaml")


def test_workload_prompts_are_the_token_ids_the_benchmarker_sends():
    from ssmkit.bench.runner import Benchmarker
    from ssmkit.bench.workload import Request, Workload
    from ssmkit.io import ByteTokenizer
    from ssmkit.profile.commands import workload_jobs

    tok = ByteTokenizer(specials=(), eos_token=None)
    requests = [Request(0, 2, prompt="a text prompt"), Request(1, 3, prompt_tokens=40),
                Request(7, 1, prompt_tokens=2000)]  # longer than the held-out text: it wraps around
    bench = Benchmarker(tiny_hybrid(), tok, "tiny", quality=False)
    jobs = workload_jobs(Workload("w", requests), tok)
    assert [(rid, n) for rid, _, n in jobs] == [(0, 2), (1, 3), (7, 1)]
    assert [ids for _, ids, _ in jobs] == [bench.prompt_ids(r) for r in requests]
    assert len(jobs[2][1]) == 2000
