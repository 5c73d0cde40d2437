"""Benchmark workloads from YAML: a fixed prompt list, synthetic lengths from distributions, or a request-log replay.

Closed loop keeps `concurrency` requests in flight; open loop sends at the requests' arrival times. The YAML schema
is in examples/workloads/README.md; errors name the file and line of the entry at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .request_log import Request, read_request_log
from .traces import AZURE_SERVICES, load_azure_trace

__all__ = ["Request", "Workload", "load_workload", "synthetic_requests", "load_azure_trace", "read_request_log"]

TOP_KEYS = {"name", "mode", "concurrency", "warmup", "repeats", "prompts", "output_tokens", "synthetic", "replay"}
SOURCES = ("prompts", "synthetic", "replay")


@dataclass
class Workload:
    """What to send and how: closed loop at `concurrency` clients, or open loop at the requests' arrival times."""

    name: str
    requests: list[Request]
    mode: str = "closed"
    concurrency: int = 1
    warmup: int = 1
    repeats: int = 1
    description: str = ""

    def __post_init__(self):
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode: expected 'closed' or 'open', got {self.mode!r}")
        if self.concurrency < (1 if self.mode == "closed" else 0):
            raise ValueError(f"concurrency: expected >= 1 in closed loop (>= 0 in open loop), got {self.concurrency}")
        if self.repeats < 1:
            raise ValueError(f"repeats: expected >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup}")
        if not self.requests:
            raise ValueError(f"workload {self.name!r}: no requests")


def synthetic_requests(n: int, prompt_tokens, output_tokens, seed: int = 0,
                       arrival_rate_per_s: float | None = None) -> list[Request]:
    """n requests with lengths drawn from DIST specs (see the module docstring), reproducible from `seed`.

    Prompt lengths are drawn first, then output lengths, then (with a rate) Poisson arrivals: exponential gaps
    of mean 1 / rate, the first request at t = 0.
    """
    rng = np.random.default_rng(seed)
    prompts = _draw(prompt_tokens, n, rng, "prompt_tokens")
    outputs = _draw(output_tokens, n, rng, "output_tokens")
    arrivals = [0.0] * n
    if arrival_rate_per_s is not None:
        gaps = rng.exponential(1.0 / arrival_rate_per_s, size=n)
        arrivals = [0.0] + np.cumsum(gaps[1:]).tolist()
    return [Request(i, output_tokens=o, prompt_tokens=p, arrival_s=a)
            for i, (p, o, a) in enumerate(zip(prompts, outputs, arrivals))]


def _draw(spec, n: int, rng: np.random.Generator, name: str) -> list[int]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"{name}: expected a length >= 1, got {spec}")
        return [spec] * n
    if not isinstance(spec, dict):
        raise ValueError(f"{name}: expected an int or a distribution mapping, got {spec!r}")
    kind = spec.get("distribution")
    allowed = {"lognormal": {"distribution", "median", "sigma", "min", "max"},
               "uniform": {"distribution", "min", "max"}}
    if kind not in allowed:
        raise ValueError(f"{name}.distribution: expected one of {sorted(allowed)}, got {kind!r}")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown} for a {kind} distribution")
    lo, hi = spec.get("min", 1), spec.get("max", 1 << 20)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"{name}: expected integers 1 <= min <= max, got min={lo!r}, max={hi!r}")
    if kind == "uniform":
        return rng.integers(lo, hi, size=n, endpoint=True).tolist()
    median, sigma = spec.get("median"), spec.get("sigma")
    if not (_positive(median) and _positive(sigma, allow_zero=True)):
        raise ValueError(f"{name}: lognormal needs median > 0 and sigma >= 0, got median={median!r}, "
                         f"sigma={sigma!r}")
    # exp(N(log median, sigma^2)) has the given median; rounding then clipping keeps min/max exact
    draws = rng.lognormal(math.log(median), sigma, size=n)
    return np.clip(np.rint(draws), lo, hi).astype(int).tolist()


def _positive(v, allow_zero: bool = False) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v >= 0 if allow_zero else v > 0))


def load_workload(path) -> Workload:
    """Reads a workload YAML. Raises ValueError naming the file and line of a malformed or invalid entry."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: malformed YAML: {getattr(err, 'problem', None) or err}") from None
    lines = _key_lines(root) if root is not None else {}

    def fail(keys: tuple, msg: str):
        while keys and keys not in lines:
            keys = keys[:-1]
        raise ValueError(f"{path}:{lines.get(keys, 1)}: {msg}") from None

    if not isinstance(data, dict):
        fail((), f"expected a mapping with one of {list(SOURCES)}, got {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            fail((key,), f"unknown key {key!r}; expected keys from {sorted(TOP_KEYS)}")
    sources = [k for k in SOURCES if k in data]
    if len(sources) != 1:
        fail(tuple(sources[1:2]), f"expected exactly one of {list(SOURCES)}, got {sources or 'none'}")
    source = sources[0]
    if "output_tokens" in data and source != "prompts":
        fail(("output_tokens",), f"output_tokens: a default for `prompts` only; set lengths inside `{source}`")
    try:
        requests, default_mode, description = _requests_from(source, data, path.parent)
    except ValueError as err:
        fail(_error_keys(source, str(err), lines), str(err))
    mode = data.get("mode", default_mode)
    fields = {}
    for key, default in (("concurrency", 1 if mode == "closed" else 0), ("warmup", 1), ("repeats", 1)):
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            fail((key,), f"{key}: expected an integer, got {v!r}")
        fields[key] = v
    try:
        return Workload(name=str(data.get("name", path.stem)), requests=requests,
                        mode=mode, description=description, **fields)
    except ValueError as err:
        fail((str(err).split(":")[0],), str(err))


def _requests_from(source: str, data: dict, base: Path) -> tuple[list[Request], str, str]:
    spec = data[source]
    if source == "prompts":
        return _prompt_requests(spec, data.get("output_tokens", 64)), "closed", f"{len(spec)} fixed prompts"
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected a mapping, got {type(spec).__name__}")
    if source == "synthetic":
        unknown = sorted(set(spec) - {"requests", "seed", "prompt_tokens", "output_tokens", "arrival_rate_per_s"})
        if unknown:
            raise ValueError(f"synthetic: unknown keys {unknown}")
        n, rate, seed = spec.get("requests"), spec.get("arrival_rate_per_s"), spec.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"synthetic.seed: expected an integer >= 0, got {seed!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"synthetic.requests: expected a count >= 1, got {n!r}")
        if rate is not None and not _positive(rate):
            raise ValueError(f"synthetic.arrival_rate_per_s: expected a rate > 0, got {rate!r}")
        reqs = synthetic_requests(n, spec.get("prompt_tokens", 512), spec.get("output_tokens", 128),
                                  seed=seed, arrival_rate_per_s=rate)
        return reqs, "open" if rate else "closed", f"{n} synthetic requests, seed {seed}"
    unknown = sorted(set(spec) - {"path", "trace", "time_scale", "length_scale", "limit"})
    if unknown or ("path" in spec) == ("trace" in spec):
        raise ValueError(f"replay: expected `path` or `trace` and optional time_scale, length_scale, limit; "
                         f"got keys {sorted(spec)}")
    scales = dict(time_scale=spec.get("time_scale", 1.0), length_scale=spec.get("length_scale", 1.0))
    limit = spec.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"replay.limit: expected a number of requests >= 1, got {limit!r}")
    if "trace" in spec:
        service = str(spec["trace"]).removeprefix("azure-")
        if service not in AZURE_SERVICES:
            raise ValueError(f"replay.trace: expected one of {['azure-' + s for s in AZURE_SERVICES]}, "
                             f"got {spec['trace']!r}")
        reqs = load_azure_trace(service, limit, **scales)
        origin = f"Azure LLM inference trace 2023 ({service}; CC BY 4.0, Patel et al., Splitwise, ISCA 2024)"
    else:
        if not isinstance(spec["path"], str):
            raise ValueError(f"replay.path: expected a file path, got {spec['path']!r}")
        log = base / spec["path"]
        try:
            reqs = read_request_log(log, limit=limit, **scales)
        except OSError as err:
            raise ValueError(f"replay.path: cannot read {log}: {err.strerror or err}") from None
        origin = str(log)
    return reqs, "open", (f"replay of {len(reqs)} requests from {origin}, time x{scales['time_scale']}, "
                          f"lengths x{scales['length_scale']}")


def _prompt_requests(prompts, default_output: int) -> list[Request]:
    if not isinstance(prompts, list) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list, got {prompts!r}")
    reqs = []
    for i, p in enumerate(prompts):
        text, out = p, default_output
        if isinstance(p, dict):
            text, out = p.get("text"), p.get("output_tokens", default_output)
        if not isinstance(text, str) or not text:
            raise ValueError(f"prompts.{i}: expected non-empty text (a string or {{text, output_tokens}}), got {p!r}")
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise ValueError(f"prompts.{i}.output_tokens: expected an integer >= 1, got {out!r}")
        reqs.append(Request(i, output_tokens=out, prompt=text))
    return reqs


def _error_keys(source: str, msg: str, lines: dict[tuple, int]) -> tuple:
    """The key path an error message starts with, looked up under `source` first ('seed: ...' ->
    ('synthetic', 'seed')), then at the top level."""
    head = msg.split(":")[0].split(" ")[0]
    parts = tuple(int(p) if p.isdigit() else p for p in head.split("."))
    if (source,) + parts[:1] in lines or parts[0] not in TOP_KEYS:
        return (source,) + parts
    return parts


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    """Maps each key path (('synthetic', 'seed'), ('prompts', 2)) to its 1-based line in the YAML text."""
    out = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out.update(_key_lines(v, prefix + (k.value,)))
            out[prefix + (k.value,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_key_lines(v, prefix + (i,)))
    return out
