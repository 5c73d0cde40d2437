"""Helpers the GPU kernel benchmarks share: the measured copy ceiling, a CUDA graph's replay time, a relative error,
table cells."""

from __future__ import annotations

import torch


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy (the ceiling bandwidth is judged by)."""
    from triton.testing import do_bench

    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def replay_ms(graph, replays: int, warmup: int = 1) -> float:
    """GPU time (ms) of one replay of a CUDA graph: `warmup` untimed replays, then the mean over `replays`
    back-to-back replays between two CUDA events."""
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def kernel_times(prof, calls: int = 1, width: int = 90) -> dict:
    """{kernel name (first `width` characters): [launches per call, GPU us per call]} from a finished
    torch.profiler run that made `calls` calls of the code being profiled."""
    out: dict = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            entry = out.setdefault(ev.name[:width], [0.0, 0.0])
            entry[0] += 1 / calls
            entry[1] += ev.device_time / calls
    return out


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def fmt(t) -> str:
    """A table cell: floats to 3 decimals, None as '-'."""
    return f"{t:.3f}" if isinstance(t, float) else ("-" if t is None else str(t))


class RunLog:
    """The printed and kept log of a kernel benchmark: `log(line)` prints it and keeps it for the results file."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


def start_kernel_run(validate, cfg) -> tuple[RunLog, dict, float]:
    """The opening every GPU kernel benchmark shares: a device/versions line, validate(cfg, log) -> (ok, errors)
    (timing goes on after a failed validation, flagged in the log), then the measured copy ceiling.
    Returns (log, errors, copy bytes per second)."""
    import platform

    import triton

    log = RunLog()
    log(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
        f"python {platform.python_version()}")
    ok, errs = validate(cfg, log)
    if not ok:
        log("VALIDATION FAILED: timing anyway, numbers below are not to be trusted")
    copy_bw = copy_bandwidth()
    log(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")
    return log, errs, copy_bw
