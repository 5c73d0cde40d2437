"""`ssmkit serve`'s logic (serve_command): bad arguments are exit code 2 with a message naming the flag; a real
foreground server in a child process serves a routed completion and exits 0 on SIGINT after a graceful shutdown."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ssmkit.serve.command import serve_command

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kwargs, flag", [
    ({"models": ["no-equals-sign"]}, "--model"),
    ({"models": ["a=/no/such/folder"]}, "path"),
    ({"models": [], "backends": ["far=ftp://x"]}, "--backend"),
    ({"models": [], "backends": []}, "model, backend"),
    ({"models": ["a=x", "a=y"]}, "--model"),
    ({"models": ["a=x"], "max_concurrency": 0}, "--max-concurrency"),
    ({"models": ["a=x"], "timeout": -1}, "--timeout"),
])
def test_bad_arguments_exit_2_naming_the_flag(kwargs, flag):
    err = io.StringIO()
    assert serve_command(**kwargs, err=err) == 2
    assert err.getvalue().startswith("ssmkit serve: ") and flag in err.getvalue()


def test_policy_naming_an_unserved_backend_is_exit_2(checkpoints, policy_file):
    err = io.StringIO()
    assert serve_command([f"llama={checkpoints['llama']}"], policy=str(policy_file), err=err) == 2
    assert "mamba2" in err.getvalue() and "policy" in err.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_foreground_server_warms_up_serves_and_exits_0_on_sigint(checkpoints, policy_file):
    port = _free_port()
    code = ("import sys; from ssmkit.serve.command import serve_command; "
            f"sys.exit(serve_command(['llama={checkpoints['llama']}', 'mamba2={checkpoints['mamba2']}'], "
            f"policy={str(policy_file)!r}, port={port}, max_context=256, grace=5.0, log_level='warning', "
            f"warmup=True))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["routing"]["backend"] == "llama"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert "llama (local), mamba2 (local)" in log
        # --warmup: batch sizes 1, 2, 4, 8 (max_concurrency) x prompts of 16..128 tokens (max_context 256 // 2)
        for name in ("llama", "mamba2"):
            assert f"{name}: warmed up in " in log and "(16 prefills, 4 decode steps)" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
