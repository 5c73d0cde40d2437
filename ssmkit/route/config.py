"""Configuration of the learning router: feedback, reward, buckets, breakers and the fallback order.

Loaded from a YAML file (see examples/router/feedback.yaml for every key with its default) and validated with errors
that name the file and the key. Every section and key is optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ssmkit.route.features import DEFAULT_LENGTH_BANDS
from ssmkit.route.policy_file import PolicyError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class FeedbackConfig:
    """method: "thompson" (sample each arm's Beta posterior, take the best) or "epsilon_greedy" (best posterior mean).
    min_samples: outcomes a backend needs in a bucket before it may override the rule there.
    exploration: the floor; with this probability a uniformly random candidate is sent instead (so each of K
    candidates gets at least exploration/K of a bucket's traffic). prior_alpha/prior_beta: Beta prior per arm.
    seed: seeds decision k's draws as Random(f"{seed}:{k}"); stored in the database on creation and kept from then on.
    enabled: False = rules and breakers only (decisions and outcomes are still logged).
    """

    method: str = "thompson"
    min_samples: int = 20
    exploration: float = 0.05
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    seed: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class RewardConfig:
    """reward = (quality_weight * quality + latency_weight * latency_score) / (quality_weight + latency_weight),
    0 for an error. latency_score = 1 within the budget (or with no budget), falling linearly to 0 at
    `over_budget_zero_at` times the budget. An outcome is complete once every part with a weight > 0 is known.
    """

    quality_weight: float = 0.7
    latency_weight: float = 0.3
    over_budget_zero_at: float = 2.0


@dataclass(frozen=True)
class BreakerConfig:
    """Over the last `window_s` seconds, once at least `min_requests` results are in: p99 latency > p99_ms or error
    rate > error_rate opens the breaker. After cooldown_s it goes half-open; `probes` successes in a row close it,
    one failure (an error or a latency > p99_ms) opens it again.
    """

    window_s: float = 60.0
    min_requests: int = 20
    p99_ms: float = 10_000.0
    error_rate: float = 0.5
    cooldown_s: float = 30.0
    probes: int = 3


@dataclass(frozen=True)
class RouterConfig:
    """backends: the arms the feedback policy chooses between (default: the backends the rule policy names).
    length_bands: inclusive upper bounds of the length bands of buckets. fallback: the reroute order when a breaker
    is open (default: `backends`); a request goes to the next backend after its own in this list, wrapping around.
    """

    backends: tuple[str, ...] = ()
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    length_bands: tuple[int, ...] = DEFAULT_LENGTH_BANDS
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    breaker_per_backend: dict = field(default_factory=dict)
    fallback: tuple[str, ...] = ()

    def breaker_for(self, backend: str) -> BreakerConfig:
        return self.breaker_per_backend.get(backend, self.breaker)


# key -> (kind, lower bound, upper bound); bounds are inclusive
_LIMITS = {
    "method": ("choice", ("thompson", "epsilon_greedy"), None), "min_samples": ("int", 0, None),
    "exploration": ("num", 0.0, 1.0), "prior_alpha": ("num", 1e-9, None), "prior_beta": ("num", 1e-9, None),
    "seed": ("int", None, None), "enabled": ("bool", None, None),
    "quality_weight": ("num", 0.0, None), "latency_weight": ("num", 0.0, None),
    "over_budget_zero_at": ("num", 1.0 + 1e-9, None),
    "window_s": ("num", 1e-9, None), "min_requests": ("int", 1, None), "p99_ms": ("num", 1e-9, None),
    "error_rate": ("num", 0.0, 1.0), "cooldown_s": ("num", 0.0, None), "probes": ("int", 1, None),
}


def _value(where: str, key: str, v):
    kind, lo, hi = _LIMITS[key]
    if kind == "choice":
        if v not in lo:
            raise PolicyError(f"{where}: expected one of {', '.join(lo)}, got {v!r}")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise PolicyError(f"{where}: expected true or false, got {v!r}")
        return v
    ok_type = isinstance(v, int) if kind == "int" else isinstance(v, (int, float)) and v == v
    if isinstance(v, bool) or not ok_type or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise PolicyError(f"{where}: expected {'an int' if kind == 'int' else 'a number'}{rng}, got {v!r}")
    return int(v) if kind == "int" else float(v)


def _section(where: str, raw, cls, base=None):
    base = base or cls()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping, got {raw!r}")
    names = [f.name for f in fields(cls)]
    values = {n: getattr(base, n) for n in names}
    for key, v in raw.items():
        if key not in names:
            raise PolicyError(f"{where}: unknown key {key!r}, expected one of {', '.join(names)}")
        values[key] = _value(f"{where}.{key}", key, v)
    return cls(**values)


def _names(where: str, raw) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw) or len(set(raw)) != len(raw):
        raise PolicyError(f"{where}: expected a list of distinct backend names, got {raw!r}")
    return tuple(raw)


def parse_config(data, source: str = "<config>") -> RouterConfig:
    """A decoded YAML document -> RouterConfig; raises PolicyError naming `source` and the key."""
    if data is None:
        data = {"version": CONFIG_VERSION}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    known = ("version", "backends", "feedback", "reward", "buckets", "breakers", "fallback")
    for key in data:
        if key not in known:
            raise PolicyError(f"{source}: unknown key {key!r}, expected one of {', '.join(known)}")
    if data.get("version") != CONFIG_VERSION:
        raise PolicyError(f"{source}: version: expected {CONFIG_VERSION}, got {data.get('version')!r}")
    reward = _section(f"{source}: reward", data.get("reward"), RewardConfig)
    if reward.quality_weight + reward.latency_weight <= 0:
        raise PolicyError(f"{source}: reward: quality_weight + latency_weight must be > 0")
    bands = DEFAULT_LENGTH_BANDS
    buckets = data.get("buckets") or {}
    if not isinstance(buckets, dict) or any(k != "length_bands" for k in buckets):
        raise PolicyError(f"{source}: buckets: expected a mapping with the one key length_bands, got {buckets!r}")
    if "length_bands" in buckets:
        bands = buckets["length_bands"]
        if (not isinstance(bands, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0
                                                   for b in bands) or list(bands) != sorted(set(bands))):
            raise PolicyError(f"{source}: buckets.length_bands: expected strictly ascending ints >= 0, got {bands!r}")
    raw_breakers = dict(data.get("breakers") or {})
    per_raw = raw_breakers.pop("per_backend", None) or {}
    breaker = _section(f"{source}: breakers", raw_breakers, BreakerConfig)
    if not isinstance(per_raw, dict):
        raise PolicyError(f"{source}: breakers.per_backend: expected a mapping of backend -> settings")
    per = {name: _section(f"{source}: breakers.per_backend.{name}", v, BreakerConfig, breaker)
           for name, v in per_raw.items()}
    return RouterConfig(
        backends=_names(f"{source}: backends", data["backends"]) if "backends" in data else (),
        feedback=_section(f"{source}: feedback", data.get("feedback"), FeedbackConfig),
        reward=reward, length_bands=tuple(bands), breaker=breaker, breaker_per_backend=per,
        fallback=_names(f"{source}: fallback", data["fallback"]) if "fallback" in data else (),
    )


def load_config(path) -> RouterConfig:
    """Reads and validates a router config YAML file (FileNotFoundError or PolicyError naming the file)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, str(path))
