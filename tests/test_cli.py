"""The `ssmkit` command: help lists the commands; the ops benchmark prints a table that agrees with the ops."""

import subprocess
import sys

from ssmkit.cli import main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "ops-bench", "generate", "serve", "train", "eval", "bench", "memory", "profile", "trace", "route", "advise", "compare", "gate", "tokens"):
        assert name in out


def test_console_script_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "ssmkit.cli", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "usage: ssmkit" in result.stdout


def test_ops_bench_reports_each_impl_with_errors_near_zero(capsys):
    assert main(["ops-bench", "--seqlens", "33"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ssd") or
            line.startswith("| selective_scan")]
    assert [r.split("|")[3].strip() for r in rows] == ["reference", "quadratic", "chunked", "reference", "parallel"]
    assert all(float(r.split("|")[7]) < 1e-4 for r in rows)
