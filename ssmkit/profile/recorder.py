"""Profiler: records every call of every block's mixer and feed-forward of a LanguageModel into a trace store.

One hook point: `_begin` / `_end` around each call, reached through forward pre/post hooks on block.mixer and
block.ff, and through instance-level wrappers of mixer.step (Block.step calls it directly, not through __call__),
MoE.route (the router's share of an MoE call) and ExpertParallelMoE.exchange (its all-to-alls). Everything is
removed on exit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import torch

from ssmkit.layers.moe import capacity_from_factor

from . import kernels as kernel_detail
from .clocks import CpuClock, make_clock
from .events import imbalance, infer_phase
from .store import TraceStore


class Profiler:
    """Context manager recording one run: a LayerEvent per layer call, a MoERouting per MoE call.

    Args:
        model: a LanguageModel (its `layers` are Blocks with `mixer` and optional `ff`).
        store: a TraceStore, a path to a DuckDB file (opened here, closed on exit) or None (in memory).
        run_name: stored in runs.name.
        batch_size: events per write; a write is one transaction, so an interrupted run keeps every written one.
        flush_interval_s: also write when this much time passed since the last write (slow models).
        clock: "auto" (CUDA events on a CUDA model, else the CPU clock), "cpu" or "cuda".
        moe_capacity_factor: the capacity factor of MoERouting's capacity columns for a layer without one of its
            own (a layer with a factor reports its own last_capacity / last_overflow / last_dropped); None: none.
        background: write batches from a worker thread, so the commit is off the decode path.
        kernels: also run torch.profiler and attribute each aten op / GPU kernel to the layer call that ran it
            (the kernels table, written at exit; much slower: for looking inside a layer, not for timing).
    After exit, `run_id` names the run and `store` holds it.
    """

    def __init__(self, model, store: TraceStore | str | Path | None = None, *, run_name: str | None = None,
                 batch_size: int = 4096, flush_interval_s: float = 2.0, clock: str = "auto",
                 moe_capacity_factor: float = 1.25, background: bool = True, kernels: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.model = model
        self._owns_store = not isinstance(store, TraceStore)
        self._store_arg = store
        self.store: TraceStore | None = store if isinstance(store, TraceStore) else None
        self.run_name = run_name
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.clock_kind = clock
        self.moe_capacity_factor = moe_capacity_factor
        self.background = background
        self.kernels = kernels
        self.run_id: int | None = None
        self._explicit_phase: str | None = None
        self._explicit_request: int | None = None
        self._next_request, self._request, self._step, self._last_order, self._call_phase = 0, 0, -1, -1, "prefill"
        self._last_via_step = False
        self._handles: list = []
        self._wrapped: list = []

    # Caller-set context
    @contextlib.contextmanager
    def phase(self, name: str):
        """Marks the model calls inside as "prefill" or "decode" (otherwise inferred from the sequence length)."""
        if name not in ("prefill", "decode"):
            raise ValueError(f"phase: expected 'prefill' or 'decode', got {name!r}")
        previous, self._explicit_phase = self._explicit_phase, name
        try:
            yield
        finally:
            self._explicit_phase = previous

    @contextlib.contextmanager
    def request(self, request_id: int | None = None):
        """The model calls inside belong to one request (the next free id when None); its steps count from 0.

        Without this context, a model call starts a new request when it is the first one or a prefill that
        follows a decode step."""
        rid = self._next_request if request_id is None else int(request_id)
        self._next_request = max(self._next_request, rid + 1)
        previous, self._explicit_request = self._explicit_request, rid
        self._request, self._step, self._last_order, self._call_phase = rid, -1, -1, "prefill"
        try:
            yield rid
        finally:
            self._explicit_request = previous
            self._request = rid if previous is None else previous
            self._step, self._last_order = -1, -1

    # Lifecycle
    def __enter__(self) -> "Profiler":
        if self.store is None:
            self.store = TraceStore(":memory:" if self._store_arg is None else self._store_arg)
        device = self.model.embeddings.weight.device
        self.clock = make_clock(self.clock_kind, device)
        self.run_id = self.store.begin_run(self.run_name, clock=self.clock.name, device=str(device),
                                           model=_model_info(self.model), environment=_environment())
        self._pending: list = []  # ended calls not yet resolved (CUDA): (row fields, start mark, end mark, moe)
        self._events: list = []  # resolved rows of events and moe_routing, not yet written
        self._moe_rows: list = []
        self._mark = self.clock.mark
        self._immediate = isinstance(self.clock, CpuClock)
        self._origin = self.clock.origin
        # unit key -> [call_id, request_id, phase, step, batch, seqlen, start mark, route marks, exchange marks,
        #              torch.profiler range]
        self._open: dict = {}
        self._call_id = 0
        self._last_flush = time.monotonic()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ssmkit-profile") if self.background else None
        self._writes: list[Future] = []
        self._torch_profiler = kernel_detail.start(device) if self.kernels else None
        self._install()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._uninstall()
        status, error = ("ok", None) if exc_type is None else ("error", f"{exc_type.__name__}: {exc}")
        wall_ns = None
        try:
            end = self.clock.mark()
            self.clock.synchronize()
            wall_ns = self.clock.since_origin(end)
            self._flush(final=True)
            if self._torch_profiler is not None:
                self.store.write_batch([], kernels=kernel_detail.kernel_rows(self._torch_profiler, self.run_id))
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            failed = [f.exception() for f in self._writes if f.exception() is not None]
            if failed and status == "ok":
                status, error = "error", f"{type(failed[0]).__name__}: {failed[0]}"
            self.store.end_run(self.run_id, status=status, wall_ns=wall_ns, error=error)
            if self._owns_store and self._store_arg is not None:
                self.store.close()
        if failed and exc_type is None:
            raise failed[0]
        return False

    def _install(self) -> None:
        for block in self.model.layers:
            units = [("mixer", block.mixer, block.mixer_kind)]
            if getattr(block, "ff_kind", None) is not None:
                units.append(("ff", block.ff, block.ff_kind))
            for slot, module, kind in units:
                key = (block.layer_idx, slot)
                order = 2 * block.layer_idx + (slot == "ff")
                self._handles.append(module.register_forward_pre_hook(
                    functools.partial(self._pre_hook, key, order, kind), prepend=True))
                self._handles.append(module.register_forward_hook(
                    functools.partial(self._post_hook, key, module, kind), always_call=True))
                if slot == "mixer":
                    self._wrap(module, "step", self._wrapped_step, key, order, kind)
                if kind == "moe":
                    self._wrap(module, "route", self._wrapped_route, key)
                    if hasattr(module, "exchange"):  # an expert-parallel layer: time its all-to-alls
                        self._wrap(module, "exchange", self._wrapped_exchange, key)

    def _wrap(self, module, name: str, wrapper, *args) -> None:
        previous = module.__dict__.get(name)
        original = getattr(module, name)
        setattr(module, name, functools.partial(wrapper, original, module, *args))
        self._wrapped.append((module, name, previous))

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, name, previous in reversed(self._wrapped):
            if previous is None:
                delattr(module, name)
            else:
                setattr(module, name, previous)
        self._handles, self._wrapped = [], []

    # The hook point
    def _pre_hook(self, key, order, kind, module, args):
        self._begin(key, order, args[0])

    def _post_hook(self, key, module, kind, _module, args, output):
        self._end(key, module, kind)

    def _wrapped_step(self, original, module, key, order, kind, x, *args, **kwargs):
        self._begin(key, order, x)
        try:
            return original(x, *args, **kwargs)
        finally:
            self._end(key, module, kind)

    def _wrapped_route(self, original, module, key, x):
        start = self._mark()
        try:
            return original(x)
        finally:
            opened = self._open.get(key)
            if opened is not None:
                opened[7] = (start, self._mark())

    def _wrapped_exchange(self, original, module, key, *args):
        """An all-to-all inside an MoE call: its own "all_to_all" event, and part of the call's exchange_ns."""
        opened = self._open.get(key)
        start = self._mark()
        try:
            return original(*args)
        finally:
            end = self._mark()
            if opened is not None:
                call_id, request_id, phase, step, batch, seqlen = opened[:6]
                row = (self.run_id, self._call_id, request_id, phase, step, key[0], "all_to_all", batch, seqlen)
                self._call_id += 1
                opened[8].append((start, end))
                if self._immediate:
                    self._events.append(row + (start - self._origin, end - start))
                else:
                    self._pending.append((row, start, end, None))

    def _begin(self, key, order: int, x: torch.Tensor) -> None:
        batch, seqlen = (x.shape[0], x.shape[1]) if x.ndim == 3 else (x.shape[0], 1)
        if order <= self._last_order or self._last_order < 0:  # the first unit of a new model call
            self._new_model_call(seqlen, via_step=x.ndim == 2)
        self._last_order = order
        label = None if self._torch_profiler is None else kernel_detail.open_range(self._call_id)
        self._open[key] = [self._call_id, self._request, self._call_phase, self._step, batch, seqlen,
                           self._mark(), None, [], label]
        self._call_id += 1

    def _end(self, key, module, kind: str) -> None:
        end = self._mark()
        opened = self._open.pop(key, None)
        if opened is None:
            return
        call_id, request_id, phase, step, batch, seqlen, start, route, exchanges, label = opened
        if label is not None:
            kernel_detail.close_range(label)
        row = (self.run_id, call_id, request_id, phase, step, key[0], kind, batch, seqlen)
        moe = None
        if kind == "moe":
            moe = (module.last_expert_counts, batch * seqlen, module.n_experts, module.top_k,
                   getattr(module, "last_capacity", None), getattr(module, "last_overflow", None),
                   getattr(module, "last_dropped", None), route, exchanges)
        if self._immediate:  # CPU: resolve now, so a flush has nothing left to compute
            self._events.append(row + (start - self._origin, end - start))
            if moe is not None:
                self._moe_rows.append(self._moe_row(row, end - start, moe))
        else:
            self._pending.append((row, start, end, moe))
        if len(self._events) + len(self._pending) >= self.batch_size or (
                call_id % 64 == 0 and time.monotonic() - self._last_flush > self.flush_interval_s):
            self._flush()

    def _new_model_call(self, seqlen: int, via_step: bool) -> None:
        """Starts model call `step` of the current request (a new request first, when implicit and either the
        first call, or a forward after step() calls, or a multi-token forward after decode calls)."""
        if self._explicit_request is None and (self._step < 0 or (not via_step and (
                self._last_via_step or (seqlen > 1 and self._call_phase == "decode")))):
            self._request, self._step = self._next_request, -1
            self._next_request += 1
        self._step += 1
        self._call_phase = self._explicit_phase or infer_phase(seqlen, via_step, self._step)
        self._last_via_step = via_step

    # Writing
    def _flush(self, final: bool = False) -> None:
        """Resolves the ended calls whose end marks the device has passed (all of them when final) and writes
        every resolved call as one batch."""
        self._last_flush = time.monotonic()
        n = len(self._pending)
        if not final:
            n = 0
            while n < len(self._pending) and self.clock.ready(self._pending[n][2]):
                n += 1
        ready, self._pending = self._pending[:n], self._pending[n:]
        for row, start, end, moe in ready:
            duration = self.clock.elapsed_ns(start, end)
            self._events.append(row + (self.clock.since_origin(start), duration))
            if moe is not None:
                self._moe_rows.append(self._moe_row(row, duration, moe))
        if not self._events:
            return
        events, moe_rows, self._events, self._moe_rows = self._events, self._moe_rows, [], []
        if self._writer is None:
            self.store.write_batch(events, moe_rows)
        else:
            self._writes.append(self._writer.submit(self.store.write_batch, events, moe_rows))

    def _moe_row(self, row: tuple, duration: int, moe: tuple) -> tuple:
        counts_tensor, n_tokens, n_experts, top_k, layer_capacity, layer_overflow, layer_dropped, route, \
            exchanges = moe
        counts = [0] * n_experts if counts_tensor is None else [int(c) for c in counts_tensor.tolist()]
        caps = overflow = None
        dropped = 0
        if layer_capacity is not None:
            caps, overflow = layer_capacity.tolist(), layer_overflow.tolist()
            dropped = 0 if layer_dropped is None else int(layer_dropped.sum())
        elif self.moe_capacity_factor is not None:
            caps = [capacity_from_factor(self.moe_capacity_factor, n_tokens, top_k, n_experts)] * n_experts
            overflow = [max(0, c - cap) for c, cap in zip(counts, caps)]
        capacity = caps[0] if caps and len(set(caps)) == 1 else None
        router_ns = None if route is None else self.clock.elapsed_ns(*route)
        exchange_ns = sum(self.clock.elapsed_ns(*pair) for pair in exchanges) if exchanges else None
        expert_ns = None if router_ns is None else duration - router_ns - (exchange_ns or 0)
        return (row[0], row[1], row[5], n_tokens, counts, imbalance(counts), capacity, sum(overflow or []), dropped,
                caps, overflow, router_ns, expert_ns, exchange_ns)


def _model_info(model) -> dict:
    config = getattr(model, "config", None)
    info = {"class": type(model).__name__, "n_params": sum(p.numel() for p in model.parameters()),
            "dtype": str(model.embeddings.weight.dtype)}
    if config is not None and hasattr(config, "to_dict"):
        info["config"] = json.loads(json.dumps(config.to_dict(), default=str))
    return info


def _environment() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "duckdb": duckdb.__version__,
            "host": platform.node(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
