"""What a result was measured on: device, library versions, date and the exact command."""

from __future__ import annotations

import datetime
import platform
import sys

import torch


def describe_environment() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "device": device,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
    }


def markdown_header(title: str, env: dict | None = None) -> str:
    env = env or describe_environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return (f"# {title}\n\n- device: {env['device']}\n- versions: {versions}\n- date: {env['date']}\n"
            f"- command: `{env['command']}`\n")
