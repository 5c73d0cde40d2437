"""Profiler: records every call of every block's mixer and feed-forward of a LanguageModel into a trace store.

One hook point: `_begin` / `_end` around each call, reached through instance-level wrappers of block.mixer's and
block.ff's forward (a pre/post hook pair instead on a module that has forward hooks already) and step (Block.step
calls it directly), MoE.route (the router's share) and ExpertParallelMoE.exchange (its all-to-alls); all removed
on exit. Per call the hot path takes two marks and appends one tuple; resolve.py turns them into rows per batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import torch

from . import kernels as kernel_detail
from . import resolve
from .clocks import CpuClock, make_clock
from .events import infer_phase
from .store import TraceStore


_NEW_CALL = 1 << 62  # above every unit order, so the next unit to begin starts a model call


class Profiler:
    """Context manager recording one run: a LayerEvent per layer call, a MoERouting per MoE call.

    Args:
        model: a LanguageModel (its `layers` are Blocks with `mixer` and optional `ff`).
        store: a TraceStore, a path to a DuckDB file (opened here, closed on exit) or None (in memory).
        run_name: stored in runs.name.
        batch_size: events per write; a write is one transaction, so an interrupted run keeps every written one.
            (On CUDA, calls the GPU has not reached yet wait for the next write, after batch_size more calls.)
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
        self._next_request, self._request, self._step, self._call_phase = 0, 0, -1, "prefill"
        self._last_order = _NEW_CALL  # order of the unit that began last; _NEW_CALL: the next one starts a model call
        self._context = (0, "prefill", 0)
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
        self._request, self._step, self._last_order, self._call_phase = rid, -1, _NEW_CALL, "prefill"
        try:
            yield rid
        finally:
            self._explicit_request = previous
            self._request = rid if previous is None else previous
            self._step, self._last_order = -1, _NEW_CALL

    # Lifecycle
    def __enter__(self) -> "Profiler":
        if self.store is None:
            self.store = TraceStore(":memory:" if self._store_arg is None else self._store_arg)
        device = self.model.embeddings.weight.device
        # Events in flight: up to a batch of calls, two marks each, more for MoE calls and leftovers.
        self.clock = make_clock(self.clock_kind, device, pool=min(4 * self.batch_size, 1 << 14))
        self.run_id = self.store.begin_run(self.run_name, clock=self.clock.name, device=str(device),
                                           model=_model_info(self.model), environment=_environment())
        self._raw: list = []  # ended calls not yet written: raw records, see resolve.py
        self._flush_at = self.batch_size
        self._mark = self.clock.mark
        self._immediate = isinstance(self.clock, CpuClock)
        self._moe_open: dict = {}  # unit -> [route marks, exchange mark pairs, opened] of the open MoE call
        self._depth: list = []  # unit -> how many of its calls are open (an inner one is part of the outer)
        self._open: list = []  # unit -> opened record, for units recorded through a pre/post hook pair
        self._labels: dict = {}  # unit -> open torch.profiler range
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
        """Per unit, its metadata once, and one way in: a wrapper of the instance's forward, or (when the module
        already has forward hooks, whose time the call has always included) a pre/post hook pair around them."""
        global_hooks = _global_forward_hooks()
        for block in self.model.layers:
            units = [("mixer", block.mixer, block.mixer_kind)]
            if getattr(block, "ff_kind", None) is not None:
                units.append(("ff", block.ff, block.ff_kind))
            for slot, module, kind in units:
                u = len(self._open)
                self._open.append(None)
                self._depth.append(0)
                order = 2 * block.layer_idx + (slot == "ff")
                meta = (block.layer_idx, kind)
                moe = module if kind == "moe" else None
                if module._forward_pre_hooks or module._forward_hooks or global_hooks:
                    self._hook(module, u, order, meta, moe)
                else:
                    self._wrap(module, "forward", self._recorded, u, order, meta, moe)
                if slot == "mixer":
                    self._wrap(module, "step", self._recorded, u, order, meta, moe)
                if moe is not None:
                    self._wrap(module, "route", self._recorded_route, u)
                    if hasattr(module, "exchange"):  # an expert-parallel layer: time its all-to-alls
                        self._wrap(module, "exchange", self._recorded_exchange, u, (block.layer_idx, "all_to_all"))

    def _wrap(self, module, name: str, make, *args) -> None:
        previous = module.__dict__.get(name)
        setattr(module, name, make(getattr(module, name), *args))
        self._wrapped.append((module, name, previous))

    def _hook(self, module, u: int, order: int, meta: tuple, moe) -> None:
        begin, end, opened, depth = self._begin, self._end, self._open, self._depth

        def pre_hook(_module, args):
            d = depth[u]
            depth[u] = d + 1
            if not d:
                opened[u] = begin(u, order, args[0], moe)

        def post_hook(_module, args, output):
            d = depth[u]
            if d:  # 0: the pre-hook did not run (an earlier pre-hook raised)
                depth[u] = d - 1
                if d == 1:
                    end(u, meta, opened[u], moe)

        self._handles.append(module.register_forward_pre_hook(pre_hook, prepend=True))
        self._handles.append(module.register_forward_hook(post_hook, always_call=True))

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
    def _recorded(self, original, u: int, order: int, meta: tuple, moe):
        """`original` (forward or step, input first) recorded as one call of unit u; a call inside an open one
        (Attention.step runs self.forward) is part of it."""
        begin, end, depth = self._begin, self._end, self._depth

        def recorded(x, *args, **kwargs):
            if depth[u]:
                return original(x, *args, **kwargs)
            call = begin(u, order, x, moe)
            depth[u] = 1
            try:
                return original(x, *args, **kwargs)
            finally:
                depth[u] = 0
                end(u, meta, call, moe)

        return recorded

    def _recorded_route(self, original, u: int):
        """MoE.route, its marks kept as the open MoE call's router time."""
        mark, moe_open = self._mark, self._moe_open

        def route(x):
            start = mark()
            try:
                return original(x)
            finally:
                extra = moe_open.get(u)
                if extra is not None:
                    extra[0] = (start, mark())

        return route

    def _recorded_exchange(self, original, u: int, meta: tuple):
        """An all-to-all inside an MoE call: its own "all_to_all" event, and part of the call's exchange_ns."""
        mark, moe_open = self._mark, self._moe_open

        def exchange(*args):
            extra = moe_open.get(u)
            start = mark()
            try:
                return original(*args)
            finally:
                end = mark()
                if extra is not None:
                    _, context, shape, _ = extra[2]
                    self._raw.append(((self._call_id, context, shape, start), end, meta))
                    self._call_id += 1
                    extra[1].append((start, end))

        return exchange

    def _begin(self, u: int, order: int, x: torch.Tensor, moe) -> tuple:
        """Opens a call of unit u on input x; returns its opened record (call_id, context, shape, start mark)."""
        if order <= self._last_order:  # the first unit of a new model call
            self._new_model_call(x)
        self._last_order = order
        call_id = self._call_id
        self._call_id = call_id + 1
        if self._torch_profiler is not None:
            self._labels[u] = kernel_detail.open_range(call_id)
        if moe is None:
            return (call_id, self._context, x.shape, self._mark())
        opened = (call_id, self._context, x.shape, self._mark())
        self._moe_open[u] = [None, [], opened]
        return opened

    def _end(self, u: int, meta: tuple, opened: tuple, moe) -> None:
        """Closes the call `opened` of unit u: one raw record, the only per-call work besides two marks."""
        end = self._mark()
        if self._torch_profiler is not None:
            kernel_detail.close_range(self._labels.pop(u))
        if moe is None:
            self._raw.append((opened, end, meta))
        else:
            route, exchanges, _ = self._moe_open.pop(u)
            self._raw.append((opened, end, meta, (
                moe.n_experts, moe.top_k, moe.last_expert_counts, getattr(moe, "last_capacity", None),
                getattr(moe, "last_overflow", None), getattr(moe, "last_dropped", None), route, exchanges)))
        if len(self._raw) >= self._flush_at or (
                opened[0] & 63 == 0 and time.monotonic() - self._last_flush > self.flush_interval_s):
            self._flush()

    def _new_model_call(self, x: torch.Tensor) -> None:
        """Starts model call `step` of the current request (a new request first, when implicit and either the
        first call, or a forward after step() calls, or a multi-token forward after decode calls)."""
        via_step = x.ndim == 2
        seqlen = 1 if x.ndim != 3 else x.shape[1]
        if self._explicit_request is None and (self._step < 0 or (not via_step and (
                self._last_via_step or (seqlen > 1 and self._call_phase == "decode")))):
            self._request, self._step = self._next_request, -1
            self._next_request += 1
        self._step += 1
        self._call_phase = self._explicit_phase or infer_phase(seqlen, via_step, self._step)
        self._last_via_step = via_step
        self._context = (self._request, self._call_phase, self._step)

    # Writing
    def _flush(self, final: bool = False) -> None:
        """Resolves the ended calls whose end marks the device has passed (all of them when final), writes them
        as one batch and gives their marks back to the clock."""
        self._last_flush = time.monotonic()
        raw, n = self._raw, len(self._raw)
        if not (final or self._immediate):
            ready, n = self.clock.ready, 0
            while n < len(raw) and ready(raw[n][1]):
                n += 1
        done, self._raw = raw[:n], raw[n:]
        self._flush_at = len(self._raw) + self.batch_size
        if not done:
            return
        events = resolve.event_rows(done, self.run_id, self.clock)
        moe_rows = resolve.moe_rows(done, events, self.run_id, self.clock, self.moe_capacity_factor)
        if not self._immediate:
            self.clock.release(resolve.marks_to_release(done))
        if self._writer is None:
            self.store.write_batch(events, moe_rows)
        else:
            self._writes.append(self._writer.submit(self.store.write_batch, events, moe_rows))


def _global_forward_hooks() -> bool:
    """Whether torch has forward hooks registered for every module (they run around forward, like a module's own)."""
    from torch.nn.modules import module as nn_module
    return bool(getattr(nn_module, "_global_forward_pre_hooks", None) or getattr(nn_module, "_global_forward_hooks",
                                                                                      None))


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
