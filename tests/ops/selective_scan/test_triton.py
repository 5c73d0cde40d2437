"""The Triton selective scan against the float64 spec: under TRITON_INTERPRET=1 on CPU (CI), and on GPU.

triton.jit reads TRITON_INTERPRET when the kernels are imported, so the interpreter checks (`case_*` below) run in
one child process started with the variable set (`python -m tests.ops.selective_scan.test_triton NAME...`), and
each test here asserts one recorded result. `run_interpreted` and `interpreted_main` are also used by the conv1d
and norm Triton tests. GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from tests.compare import assert_close

ROOT = Path(__file__).resolve().parents[3]


def run_interpreted(module: str, names, timeout: int = 600) -> dict:
    """Runs `python -m module NAME...` once with TRITON_INTERPRET=1; maps each name to (ok, message)."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", module, *names], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["name"]] = (r["ok"], r["message"])
    for name in names:
        results.setdefault(name, (False, f"no result; exit {proc.returncode}\n{proc.stderr[-3000:]}"))
    return results


def interpreted_main(namespace: dict, names) -> None:
    """Child side: runs namespace["case_" + name]() for each name and prints one JSON line per case."""
    from tests.ops.ssd.triton_cases import patch_interpreter_scalar_index

    patch_interpreter_scalar_index()
    for name in names:
        try:
            namespace[f"case_{name}"]()
            result = dict(name=name, ok=True, message="")
        except Exception as e:  # reported to the parent test, which fails with the message
            result = dict(name=name, ok=False, message=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        print(json.dumps(result), flush=True)


def expect(results: dict, name: str) -> None:
    ok, message = results[name]
    assert ok, message
