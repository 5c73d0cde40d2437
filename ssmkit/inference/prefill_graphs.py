"""Prefill of models whose layers all carry a constant-size state (Mamba, Mamba-2), replayed from CUDA graphs.

An eager prefill of a short prompt is bound by the host, not the GPU: on an H100 a 1K-token prefill of Mamba-2 130M
launched 488 kernels holding 3.1 ms of GPU work in 41 ms of wall time (benchmarks/decode_profile.py --prefill).
Here the prompt runs as pieces whose lengths are powers of two (the largest that fit, then the binary digits of
the rest: 1000 tokens = 512 + 256 + 128 + 64 + 32 + 8), each piece one replay of the forward captured for that
length, continuing from the state the previous piece left (chunked prefill: the same result up to rounding).
The first graphed prefill of a model captures every piece length (1, 2, 4, ... MAX_PIECE_TOKENS), each after an
eager warm-up that compiles and tunes its kernels, so that no later prompt pays a capture (in a replayed workload,
captures on demand put 100-400 ms into the TTFT p95); this costs about two eager forwards per length, once. The
graphs own a state of their own; the caller's state is copied in before and out after. Each graph keeps the memory
pool of its forward's activations while the model lives (about twice those of one MAX_PIECE_TOKENS forward over all
lengths); ssmkit.inference.clear_graphs(model) frees them.

Batch 1 only: that is where prefill is host-bound, and static batching meets many batch sizes, each of which
would need its own set of graphs.

Attention layers (whose KV writes and masks depend on the position) and MoE routing (which reads counts back to
the host) are not captured: prefill stays eager for them, for padded batches and for long prompts (above
MAX_GRAPH_TOKENS tokens in all, where the GPU work dominates and one eager pass is the faster).
"""

from __future__ import annotations

import threading
import weakref

import torch

from ssmkit.ops.dispatch import warn_once

from .cache import allocate_cache, cache_tensors
from .graph_registry import eager_reason
from .graphs import _step_without_host_sync, error_summary, record_graph
from .module_walk import tensor_signature

GRAPH_MIXERS = ("mamba", "mamba2")
GRAPH_FEED_FORWARDS = (None, "mlp")
MAX_PIECE_TOKENS = 4096  # batch x piece length of the largest captured piece (its activations live in its pool)
MAX_GRAPH_TOKENS = 16384  # batch x prompt length up to which prefill replays graphs
MAX_BATCHES = 1  # (model, batch) graph sets kept per model; the least recently used goes


def graph_prefill_reason(model, input_ids: torch.Tensor, key_padding_mask, chunk_size) -> str | None:
    """None when `prefill` can replay graphs for this call, else why it runs eagerly."""
    config = model.config
    if any(m not in GRAPH_MIXERS for m in config.mixers) or any(f not in GRAPH_FEED_FORWARDS
                                                                 for f in config.feed_forwards):
        return "a layer other than Mamba / Mamba-2 with an MLP or no feed-forward"
    if key_padding_mask is not None or chunk_size is not None:
        return "a padded batch or an explicit chunk size"
    if input_ids.shape[0] != 1:
        return "a batch of more than one row"
    if input_ids.numel() > MAX_GRAPH_TOKENS:
        return f"more than {MAX_GRAPH_TOKENS} prompt tokens"
    if model.training:
        return "training mode"
    if input_ids.device.type != "cuda":
        return "not on a CUDA device"
    return eager_reason(model)


def pieces(seqlen: int, max_piece: int) -> list[int]:
    """Piece lengths, powers of two, largest first, summing to seqlen: max_piece while it fits, then the binary
    digits of the rest."""
    out = [max_piece] * (seqlen // max_piece)
    rest = seqlen % max_piece
    bit = max_piece // 2
    while rest:
        if rest >= bit:
            out.append(bit)
            rest -= bit
        bit //= 2
    return out


class GraphedPrefill:
    """The forward of `model` over a state of its own, captured once per piece length (powers of two up to
    max_piece) for `batch` rows.

    capture=False runs the same pieces eagerly (how CPU tests check the piece arithmetic). When a capture fails
    (a host read in the forward), `fallback_reason` says why and `run` goes on eagerly.
    """

    def __init__(self, model, batch: int, *, capture: bool | None = None):
        device = model.embeddings.weight.device
        self.capture = device.type == "cuda" if capture is None else capture
        self._model = weakref.ref(model)
        self.batch = batch
        self.max_piece = max(1, 1 << ((MAX_PIECE_TOKENS // batch).bit_length() - 1))
        self.state = allocate_cache(model, batch, 1)
        self._state_tensors = list(cache_tensors(self.state).values())
        self._graphs: dict[int, tuple] = {}  # piece length -> (graph, ids buffer, logits buffer)
        self.fallback_reason: str | None = None
        self.signature = tensor_signature(model)
        self.lock = threading.Lock()

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this GraphedPrefill was garbage-collected")
        return model

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, state: list) -> torch.Tensor:
        """Prefills `state` (from allocate_cache, for these rows) with input_ids (batch, seqlen); returns the last
        position's logits (batch, vocab). The ids are checked by the caller."""
        targets = cache_tensors(state)
        for (name, t), own in zip(targets.items(), self._state_tensors):
            if t.shape != own.shape or t.dtype != own.dtype:
                raise ValueError(f"state: {name} is {t.dtype} {tuple(t.shape)}, expected {own.dtype} "
                                 f"{tuple(own.shape)} (allocate_cache for {self.batch} rows)")
        if len(targets) != len(self._state_tensors):
            raise ValueError(f"state: expected {len(self._state_tensors)} tensors (allocate_cache), "
                             f"got {len(targets)}")
        targets = list(targets.values())
        with self.lock:
            if self.capture and not self._graphs and self.fallback_reason is None:
                self._capture_all()  # before the caller's state goes in: warm-ups and captures write the state
            if not self.capture or self.fallback_reason is not None:
                return self._run_eager(input_ids, state)
            torch._foreach_copy_(self._state_tensors, targets)
            start, logits = 0, None
            for n in pieces(input_ids.shape[1], self.max_piece):
                graph, ids, logits = self._graphs[n]
                ids.copy_(input_ids[:, start:start + n])
                graph.replay()
                start += n
            torch._foreach_copy_(targets, self._state_tensors)
            return logits.clone()

    def _run_eager(self, input_ids, state):
        start, logits = 0, None
        for n in pieces(input_ids.shape[1], self.max_piece):
            logits = self.model._forward_unchecked(input_ids[:, start:start + n], state, logits_to_keep=1)[:, -1]
            start += n
        return logits

    def _capture_all(self) -> None:
        """Captures every piece length 1, 2, 4, ... max_piece; at the first failure, `fallback_reason` is set and
        run goes eager from then on."""
        n = 1
        while n <= self.max_piece and self.fallback_reason is None:
            self._capture(n)
            n *= 2

    def _capture(self, n: int) -> None:
        model = self.model
        device = model.embeddings.weight.device
        ids = torch.zeros(self.batch, n, dtype=torch.int64, device=device)

        def forward():
            return model._forward_unchecked(ids, self.state, logits_to_keep=1)

        def warm_up():
            forward()  # compiles and tunes (may sync)
            _step_without_host_sync(forward)

        try:
            graph, out = record_graph(device, warm_up, lambda: forward()[:, -1])
        except Exception as e:  # a host read inside the forward: capture is impossible for this model
            self.fallback_reason = error_summary(e)
            warn_once(f"CUDA graph capture of {type(model).__name__} prefill failed ({self.fallback_reason}); "
                      f"prefilling eagerly instead")
            return
        self._graphs[n] = (graph, ids, out)


_LOCK = threading.Lock()
_BY_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {batch: GraphedPrefill}


def graphed_prefill(model, batch: int) -> GraphedPrefill:
    """The GraphedPrefill of (model, batch), made on first use and kept while the model lives (MAX_BATCHES per
    model, least recently used dropped); remade when the model's parameters were replaced (a .to(), a new dtype)."""
    with _LOCK:
        cache = _BY_MODEL.setdefault(model, {})
        entry = cache.pop(batch, None)
        if entry is None or entry.signature != tensor_signature(model):
            entry = GraphedPrefill(model, batch)
        cache[batch] = entry  # most recently used last
        while len(cache) > MAX_BATCHES:
            cache.pop(next(iter(cache)))
        return entry


def drop_prefill_graphs(model=None) -> None:
    """Drops the prefill graphs kept for `model` (or every model), freeing their pools and states."""
    with _LOCK:
        if model is None:
            _BY_MODEL.clear()
        else:
            _BY_MODEL.pop(model, None)
