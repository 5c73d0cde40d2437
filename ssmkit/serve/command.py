"""`ssmkit serve`: build the backends, the router and the service from plain arguments, then serve until SIGINT /
SIGTERM (graceful: running requests finish within --grace seconds). The CLI only parses and calls serve_command.
"""

from __future__ import annotations

import math
import sys

from .backends import LocalBackend, RemoteBackend
from .service import Service, check_policy_backends

DTYPES = ("float32", "float64", "bfloat16", "float16")


def parse_pairs(flag: str, values: list[str]) -> dict[str, str]:
    """["NAME=VALUE", ...] -> {NAME: VALUE}; raises ValueError naming the flag for a malformed or repeated entry."""
    out = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag}: expected NAME=VALUE, got {v!r}")
        if name in out:
            raise ValueError(f"{flag}: the name {name!r} is given twice")
        out[name] = value
    return out


def build_service(models: list[str], backends: list[str] | None = None, policy: str | None = None, *,
                  max_concurrency: int = 8, max_queue: int = 16, timeout: float = 60.0, max_context: int = 2048,
                  router_db: str = ":memory:", router_config: str | None = None, dtype: str | None = None,
                  device: str | None = None, warmup: bool = False) -> Service:
    """The Service `ssmkit serve` runs. models: NAME=CHECKPOINT_FOLDER; backends: NAME=URL or NAME=URL#MODEL
    (MODEL is sent as the request's model, default NAME); warmup: each local engine runs Engine.warm_up() first.
    Raises ValueError / FileNotFoundError for bad input."""
    import torch

    from ssmkit.route import Router, load_config, load_policy

    for name, value, lo in (("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0),
                            ("max_context", max_context, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= {lo}, got {value!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"--timeout: expected seconds > 0, got {timeout!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    local_specs, remote_specs = parse_pairs("--model", models), parse_pairs("--backend", backends)
    clash = sorted(set(local_specs) & set(remote_specs))
    if clash:
        raise ValueError(f"--model, --backend: the names {clash} are used by both")
    router = None
    if policy is not None:
        router = Router(load_policy(policy), router_db, load_config(router_config) if router_config else None)
        try:
            check_policy_backends(router, [*local_specs, *remote_specs])  # before loading any model
        except ValueError:
            router.close()
            raise
    remote = {}
    for name, spec in remote_specs.items():
        url, _, model = spec.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--backend: expected NAME=http(s)://HOST:PORT[#MODEL], got {name}={spec}")
        remote[name] = RemoteBackend(name, url, model or None, timeout_s=timeout)
    torch_dtype = getattr(torch, dtype) if dtype else None
    local = {}
    try:
        for name, path in local_specs.items():
            local[name] = LocalBackend(name, path, max_concurrency=max_concurrency, max_queue=max_queue,
                                       max_context=max_context, dtype=torch_dtype, device=device, warmup=warmup)
        return Service(local, remote, router, timeout_s=timeout)
    except BaseException:
        for b in local.values():
            b.close()
        if router is not None:
            router.close()
        raise


def serve_command(models: list[str], backends: list[str] | None = None, policy: str | None = None, *,
                  host: str = "127.0.0.1", port: int = 8000, max_concurrency: int = 8, max_queue: int = 16,
                  timeout: float = 60.0, max_context: int = 2048, grace: float = 10.0, router_db: str = ":memory:",
                  router_config: str | None = None, dtype: str | None = None, device: str | None = None,
                  log_level: str = "info", warmup: bool = False, err=None) -> int:
    """Serves until interrupted; returns the exit code (0 after a clean shutdown, 2 for bad arguments)."""
    from .server import ServeServer, bind_socket

    err = sys.stderr if err is None else err
    if not math.isfinite(grace) or grace < 0:
        err.write(f"ssmkit serve: --grace: expected seconds >= 0, got {grace!r}\n")
        return 2
    try:
        service = build_service(models, backends, policy, max_concurrency=max_concurrency, max_queue=max_queue,
                                timeout=timeout, max_context=max_context, router_db=router_db,
                                router_config=router_config, dtype=dtype, device=device, warmup=warmup)
    except (ValueError, FileNotFoundError) as e:
        err.write(f"ssmkit serve: {e}\n")
        return 2
    names = ", ".join(f"{n} ({b.kind})" for n, b in service.backends.items())
    err.write(f"ssmkit serve: {names} on http://{host}:{port} (max_concurrency {max_concurrency}, "
              f"max_queue {max_queue}, timeout {timeout:g} s, grace {grace:g} s)\n")
    for name, b in service.backends.items():
        if b.kind == "local":
            sizes = b.describe()["state_bytes"]
            err.write(f"ssmkit serve: {name}: decode state for {max_concurrency} slots x {max_context} positions: "
                      f"SSM {sizes['ssm'] / 2**20:.1f} MiB, KV {sizes['kv'] / 2**20:.1f} MiB\n")
            stats = b.engine.warmup_stats
            if stats is not None:
                err.write(f"ssmkit serve: {name}: warmed up in {stats['seconds']:.1f} s ({stats['prefills']} "
                          f"prefills, {stats['steps']} decode steps)\n")
    try:
        sock = bind_socket(host, port)
    except OSError as e:
        service.close(0.0)
        err.write(f"ssmkit serve: --host/--port: cannot listen on {host}:{port}: {e}\n")
        return 2
    server = ServeServer(service, host=host, port=port, grace_s=grace, log_level=log_level)
    try:
        server.run(sockets=[sock])
    finally:
        service.close(0.0)
    return 0
