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
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import torch

from ssmkit.inference.graph_registry import eager_only

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
        self._context = 0  # index of the current model call's (request_id, phase, step)
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
        # Ended calls not yet written, kept as plain numbers (see resolve.py): no Python object per call.
        self._calls = array("q")  # resolve.CALL_FIELDS per call
        self._immediate = isinstance(self.clock, CpuClock)
        self._marks = array("q") if self._immediate else []  # start and end mark per call
        self._moe: list = []  # per ended MoE call: its index among all calls and its routing tensors and marks
        self._contexts: list = []  # (request_id, phase, step) per model call; calls hold its index
        self._flushed = 0  # calls written (or handed to the writer) so far
        self._flush_marks = 2 * self.batch_size
        self._mark = self.clock.mark
        # Per unit (a hooked module, or the all-to-alls of an expert-parallel layer):
        self._unit_layer, self._unit_type, self._exchange_unit = [], [], []
        self._depth: list = []  # how many of its calls are open (an inner one is part of the outer)
        self._hooked: list = []  # (call record, start mark) of the open call, for a pre/post hook pair
        self._open: list = []  # call record of the open MoE call
        self._route: list = []  # router marks of the open MoE call
        self._exchanges: list = []  # exchange mark pairs of the open MoE call (expert-parallel layers)
        self._labels: dict = {}  # unit -> open torch.profiler range
        self._call_id = 0
        self._last_flush = time.monotonic()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ssmkit-profile") if self.background else None
        self._writes: list[Future] = []
        self._torch_profiler = kernel_detail.start(device) if self.kernels else None
        # A CUDA-graph replay calls no module (nothing would be recorded) and a capture would put marks in the graph.
        self._eager = eager_only(self.model, "a Profiler records this model's layer calls")
        self._eager.__enter__()
        try:
            self._install()
        except BaseException:
            self._uninstall()
            self._eager.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._uninstall()
        self._eager.__exit__(None, None, None)
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
            if hasattr(block, "fuse_in_proj"):  # the mixer's recorded step must include its input projection
                self._wrap(block, "fuse_in_proj", lambda _: False)
            units = [("mixer", block.mixer, block.mixer_kind)]
            if getattr(block, "ff_kind", None) is not None:
                units.append(("ff", block.ff, block.ff_kind))
            for slot, module, kind in units:
                u = self._add_unit(block.layer_idx, kind)
                order = 2 * block.layer_idx + (slot == "ff")
                moe = module if kind == "moe" else None
                if module._forward_pre_hooks or module._forward_hooks or global_hooks:
                    self._hook(module, u, order, moe)
                else:
                    self._wrap(module, "forward", self._recorded, u, order, moe)
                if slot == "mixer":
                    self._wrap(module, "step", self._recorded, u, order, moe)
                if moe is not None:
                    self._wrap(module, "route", self._recorded_route, u)
                    if hasattr(module, "exchange"):  # an expert-parallel layer: time its all-to-alls
                        self._exchanges[u] = []
                        self._wrap(module, "exchange", self._recorded_exchange, u,
                                   self._add_unit(block.layer_idx, "all_to_all"))
        self._units = (np.array(self._unit_layer, dtype=np.int64), np.array(self._unit_type, dtype=object),
                       np.array(self._exchange_unit, dtype=bool))

    def _add_unit(self, layer_idx: int, kind: str) -> int:
        for column, value in ((self._unit_layer, layer_idx), (self._unit_type, kind),
                              (self._exchange_unit, kind == "all_to_all"), (self._depth, 0), (self._hooked, None),
                              (self._open, None), (self._route, None), (self._exchanges, None)):
            column.append(value)
        return len(self._depth) - 1

    def _wrap(self, module, name: str, make, *args) -> None:
        previous = module.__dict__.get(name)
        setattr(module, name, make(getattr(module, name), *args))
        self._wrapped.append((module, name, previous))

    def _hook(self, module, u: int, order: int, moe) -> None:
        begin, end, mark, hooked, depth = self._begin, self._end, self._mark, self._hooked, self._depth

        def pre_hook(_module, args):
            d = depth[u]
            depth[u] = d + 1
            if not d:
                call = begin(u, order, args[0], moe)
                hooked[u] = (call, mark())

        def post_hook(_module, args, output):
            d = depth[u]
            if d:  # 0: the pre-hook did not run (an earlier pre-hook raised)
                depth[u] = d - 1
                if d == 1:
                    end(*hooked[u], moe)

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
    def _recorded(self, original, u: int, order: int, moe):
        """`original` (forward or step, input first) recorded as one call of unit u; a call inside an open one
        (Attention.step runs self.forward) is part of it."""
        begin, end, mark, depth = self._begin, self._end, self._mark, self._depth

        def recorded(x, *args, **kwargs):
            if depth[u]:
                return original(x, *args, **kwargs)
            call = begin(u, order, x, moe)
            depth[u] = 1
            start = mark()
            try:
                return original(x, *args, **kwargs)
            finally:
                depth[u] = 0
                end(call, start, moe)

        return recorded

    def _recorded_route(self, original, u: int):
        """MoE.route, its marks kept as the open MoE call's router time."""
        mark, depth, routes = self._mark, self._depth, self._route

        def route(x):
            start = mark()
            try:
                return original(x)
            finally:
                if depth[u]:
                    routes[u] = (start, mark())

        return route

    def _recorded_exchange(self, original, u: int, exchange_unit: int):
        """An all-to-all inside an MoE call: its own "all_to_all" event, and part of the call's exchange_ns."""
        mark, depth, calls, marks = self._mark, self._depth, self._calls, self._marks

        def exchange(*args):
            start = mark()
            try:
                return original(*args)
            finally:
                end = mark()
                if depth[u]:
                    _, _, context, batch, seqlen = self._open[u]
                    calls.extend((self._call_id, exchange_unit, context, batch, seqlen))
                    self._call_id += 1
                    marks.append(start)
                    marks.append(end)
                    self._exchanges[u].append((start, end))

        return exchange

    def _begin(self, u: int, order: int, x: torch.Tensor, moe) -> tuple:
        """Opens a call of unit u on input x; returns its record (resolve.CALL_FIELDS)."""
        if order <= self._last_order:  # the first unit of a new model call
            self._new_model_call(x)
        self._last_order = order
        call_id = self._call_id
        self._call_id = call_id + 1
        if self._torch_profiler is not None:
            self._labels[u] = kernel_detail.open_range(call_id)
        shape = x.shape
        call = (call_id, u, self._context, shape[0], shape[1] if len(shape) == 3 else 1)
        if moe is not None:
            self._open[u], self._route[u] = call, None
            if self._exchanges[u] is not None:
                self._exchanges[u] = []
        return call

    def _end(self, call: tuple, start, moe) -> None:
        """Closes `call`, begun at mark `start`: 5 integers and 2 marks appended (and an MoE call's tensors)."""
        end = self._mark()
        if self._torch_profiler is not None:
            kernel_detail.close_range(self._labels.pop(call[1]))
        marks = self._marks
        if moe is not None:
            u = call[1]
            self._moe.append((self._flushed + (len(marks) >> 1), moe.n_experts, moe.top_k, moe.last_expert_counts,
                              getattr(moe, "last_capacity", None), getattr(moe, "last_overflow", None),
                              getattr(moe, "last_dropped", None), self._route[u], self._exchanges[u]))
        self._calls.extend(call)
        marks.append(start)
        marks.append(end)
        if len(marks) >= self._flush_marks or (
                call[0] & 63 == 0 and time.monotonic() - self._last_flush > self.flush_interval_s):
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
        self._contexts.append((self._request, self._call_phase, self._step))
        self._context = len(self._contexts) - 1

    # Writing
    def _flush(self, final: bool = False) -> None:
        """Resolves the ended calls whose end marks the device has passed (all of them when final), writes them
        as one batch and gives their marks back to the clock."""
        self._last_flush = time.monotonic()
        marks = self._marks
        n = len(marks) >> 1
        if not (final or self._immediate):
            ready, k = self.clock.ready, 0
            while k < n and ready(marks[2 * k + 1]):
                k += 1
            n = k
        self._flush_marks = len(marks) - 2 * n + 2 * self.batch_size
        if n == 0:
            return
        first, width = self._flushed, len(resolve.CALL_FIELDS)
        calls, done = self._calls[:width * n], marks[:2 * n]
        k = 0
        while k < len(self._moe) and self._moe[k][0] < first + n:
            k += 1
        moe = self._moe[:k]
        del self._calls[:width * n], marks[:2 * n], self._moe[:k]
        self._flushed += n
        events = resolve.event_columns(calls, done, self.run_id, self.clock, self._units, self._contexts)
        moe_rows = resolve.moe_rows(moe, first, events, self.run_id, self.clock, self.moe_capacity_factor)
        if not self._immediate:
            exchange_call = self._units[2][np.frombuffer(calls, dtype=np.int64)[1::width]]
            self.clock.release(resolve.marks_to_release(done, exchange_call, moe))
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
