"""A progress bar for the training loop: rich when installed, else tqdm, else one plain line every few steps.

"auto" uses a bar only on a terminal; logs and tests get plain lines (or none).
"""

from __future__ import annotations

import importlib.util
import sys
import time


def pick_progress(kind: str) -> str:
    """"auto" -> "rich" or "tqdm" on a terminal (whichever is installed), else "plain"."""
    if kind != "auto":
        if kind in ("rich", "tqdm") and importlib.util.find_spec(kind) is None:
            return "plain"
        return kind
    if not sys.stderr.isatty():
        return "plain"
    for name in ("rich", "tqdm"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "plain"


class Progress:
    """update(step, metrics) after each optimizer step; close() at the end. Steps count from `initial`."""

    def __init__(self, kind: str, total: int, initial: int = 0, every: int = 10, stream=None):
        self.kind, self.total, self.every = pick_progress(kind), total, every
        self.stream = stream or sys.stderr
        self.start, self.initial = time.perf_counter(), initial
        self._bar = None
        if self.kind == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self._bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[info]}"), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=initial, info="")
            self._bar.start()
        elif self.kind == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", file=self.stream, dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        info = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        if self.kind == "rich":
            self._bar.update(self._task, completed=step, info=info)
        elif self.kind == "tqdm":
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(info, refresh=False)
        elif self.kind == "plain" and (step % self.every == 0 or step == self.total):
            elapsed = time.perf_counter() - self.start
            print(f"step {step}/{self.total} {info} ({elapsed:.1f}s)", file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A line (an evaluation result) that does not break the bar."""
        if self.kind == "none":
            return
        if self.kind == "rich":
            self._bar.console.print(line)
        elif self.kind == "tqdm":
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            (self._bar.stop if self.kind == "rich" else self._bar.close)()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
