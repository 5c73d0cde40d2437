"""The decode step of a LanguageModel captured in a CUDA graph (GraphedDecoder), for one batch, cache length and
dtype; graph_registry.py keeps these decoders per model.

Each token then costs one graph replay instead of a few hundred kernel launches from Python, which is what bounds
small models at small batch. The captured step is `model.step(tokens, state, position)`, the static-shape step
(attention over all cache positions under a device-side mask, the position a device tensor advanced in place),
as gpt-fast's compiled decode and mamba_ssm's `InferenceParams` graph cache do. For greedy decoding a second graph
also takes the argmax of the logits and feeds it back as the next step's input, so a token costs one replay and
nothing else: the LM head leaves each row's argmax as a packed key (ssmkit.ops.argmax_keys; in its own launch's
epilogue on a one-row CUDA step) and one launch turns the keys into the next tokens.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from ssmkit.ops.argmax_keys import EMPTY_KEY, feed_back_keys, fold_argmax_keys
from ssmkit.ops.attention.kv_cache import KVCache
from ssmkit.ops.dispatch import warn_once

from .cache import allocate_cache, cache_nbytes
from .module_walk import eval_mode

WARMUP_STEPS = 3  # eager steps on a side stream before capture: Triton compiles and cuBLAS picks its kernels


class GraphedDecoder:
    """A preallocated decode state and the static decode step of `model` over it, captured when `capture`.

    Args:
        model: a LanguageModel (kept by a weak reference; the caller keeps it alive).
        batch: rows. max_len: positions each attention layer's KV cache holds (unused without attention layers).
        kv_dtype: storage of the KV caches, as for allocate_cache.
        capture: capture a CUDA graph (default: when the model is on a CUDA device). False runs the same static
            step eagerly, which is how CPU tests check it. When capture fails (a layer that reads a value back to
            the host, such as MoE routing with .tolist() or S4's value checks), the decoder warns once and
            decodes with the eager dynamic step `model.step(tokens, state)` instead: `captured` is then False and
            `fallback_reason` says why.
    Use: `reset()`, prefill `state` with the model's forward, `start(prompt_len)`, then `step(tokens)` per token.
    Greedy decoding can instead call `begin_greedy(first_tokens, steps)` once and `step_greedy()` per token: the
    argmax of each step's logits becomes the next step's input and is recorded in a token history on the device
    (`greedy_history()`), inside a second captured graph, so the host launches nothing else per token.
    """

    def __init__(self, model, batch: int, max_len: int, *, kv_dtype: torch.dtype | None = None,
                 capture: bool | None = None):
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
        self.device = model.embeddings.weight.device
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise ValueError(f"capture: CUDA graphs need a model on a CUDA device, got {self.device}")
        self._model = weakref.ref(model)
        self.batch, self.kv_dtype, self.capture = batch, kv_dtype, capture
        self.has_attention = "attention" in model.config.mixers
        self.tokens = torch.zeros(batch, dtype=torch.int64, device=self.device)  # the graph's input
        self.position = torch.zeros(1, dtype=torch.int64, device=self.device)  # cache index of the next token
        self.length = 0  # host mirror of position, set by start() and step(), never read from the device
        self.fallback_reason: str | None = None
        # Greedy runs: history (batch, columns) holds the first tokens and each step's argmax; history_index (1,)
        # is the column the next one goes to, advanced on the device; history_len its host mirror.
        self.history: torch.Tensor | None = None
        self.history_index = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.history_len = 0
        # each row's largest argmax key of a greedy step's logits: EMPTY_KEY before every greedy step (begin_greedy
        # sets it, the feedback sets it back)
        self.keys = torch.full((batch,), EMPTY_KEY, dtype=torch.int64, device=self.device)
        self._greedy_limit = 0  # columns this run may fill: begin_greedy's steps + 1
        self._greedy_run = False  # tokens holds the last argmax of a greedy run (begin_greedy, not step since)
        self._greedy_graph, self._greedy_logits = None, None
        self._build(max_len)
        self.reset()

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this GraphedDecoder no longer exists")
        return model

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @property
    def capacity(self) -> int | None:
        """Positions the KV caches hold (None without attention layers: no limit)."""
        return self.max_len if self.has_attention else None

    def reset(self) -> None:
        """Empties the state in place (SSM states zeroed, KV caches emptied) for a new prefill; position 0. The
        SSM tensors are zeroed by one multi-tensor launch: a zero_() each was 96 launches of host time for Mamba-2
        1.3B on the way to the first token, while the GPU waited."""
        zero = []
        for layer_state in self.state:
            _reset_layer_state(layer_state, zero)
        if zero:  # a Transformer's layers hold KV caches only
            torch._foreach_zero_(zero)
        self._greedy_run = False
        self.start(0)

    def start(self, length: int) -> None:
        """Declares that `state` holds `length` positions (after a prefill of that many tokens)."""
        if self.capacity is not None and length > self.capacity:
            raise ValueError(f"length: the KV caches hold {self.capacity} positions, got {length}")
        self.length = length
        self.position.fill_(length)
        for kv in self._kvs:
            kv.length = length

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch,) int64 -> logits (batch, vocab_size) of the next position; advances the state.

        With a captured graph the logits are its static output buffer, overwritten by the next step (clone
        them to keep them). A step past the KV caches' capacity first grows them (twice the size, contents
        copied, graph captured again), so it never writes past the end. Ends a greedy run (begin_greedy).
        """
        self._make_room()
        self._greedy_run = False
        if self.fallback_reason is not None:
            logits = self.model.step(tokens, self.state)  # the dynamic step advances kv.length itself
        else:
            self.tokens.copy_(tokens)
            if self._graph is not None:
                self._graph.replay()
                logits = self._logits
            else:
                logits = self._static_step()
        self._advance()
        return logits

    @torch.no_grad()
    def begin_greedy(self, tokens: torch.Tensor, steps: int) -> None:
        """Starts a greedy run after start(): tokens (batch,) int64 are the next step's input (the tokens chosen
        from the prefill's logits), and up to `steps` step_greedy() calls follow.

        The token history is (re)allocated when it has fewer than steps + 1 columns (rounded up to a power of
        two, at least 64, so later runs of similar length reuse it), which captures the greedy graph again.
        """
        if (not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tuple(tokens.shape) != (self.batch,)
                or tokens.device != self.device):
            got = (f"{tokens.dtype} of shape {tuple(tokens.shape)} on {tokens.device}"
                   if isinstance(tokens, torch.Tensor) else type(tokens).__name__)
            raise ValueError(f"tokens: expected an int64 tensor of shape ({self.batch},) on {self.device}, got {got}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
        if self.history is None or self.history.shape[1] < steps + 1:
            columns = max(64, 1 << steps.bit_length())  # a power of two >= steps + 1
            self.history = torch.zeros(self.batch, columns, dtype=torch.int64, device=self.device)
            self._greedy_graph, self._greedy_logits = None, None
            if self._graph is not None:
                self._capture_greedy()
        self.tokens.copy_(tokens)
        self.history[:, 0].copy_(tokens)
        self.history_index.fill_(1)
        self.keys.fill_(EMPTY_KEY)
        self.history_len, self._greedy_limit, self._greedy_run = 1, steps + 1, True

    @torch.no_grad()
    def step_greedy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of a greedy run: feeds the input tokens, takes the argmax of the logits (the first maximal
        index, as torch.argmax) as the next input and records it in the history; advances the state.

        Returns (tokens, logits): tokens (batch,) int64, a view of the history's column for this step; logits
        (batch, vocab_size), with a captured graph its static output buffer, overwritten by the next step. Grows
        the KV caches as step() does (the history and its index are kept). Raises RuntimeError without a greedy
        run (begin_greedy, no step() or reset() since) or past the run's `steps`, before anything is written.
        """
        if not self._greedy_run:
            raise RuntimeError("step_greedy: no greedy run; call begin_greedy(tokens, steps) after start() "
                               "(step() and reset() end a run)")
        if self.history_len >= self._greedy_limit:
            raise RuntimeError(f"step_greedy: the greedy run was begun for {self._greedy_limit - 1} steps, all "
                               f"taken; call begin_greedy(tokens, steps) with more steps")
        self._make_room()
        if self.fallback_reason is not None:
            logits = self.model.step(self.tokens, self.state, argmax_keys=self.keys)
            feed_back_keys(self.keys, self.tokens, self.history, self.history_index)
        elif self._greedy_graph is not None:
            self._greedy_graph.replay()
            logits = self._greedy_logits
        elif self._graph is not None:  # the greedy capture failed: the step's graph, then the argmax eagerly
            self._graph.replay()
            logits = self._logits
            _feed_back_logits(logits, self.keys, self.tokens, self.history, self.history_index)
        else:  # capture=False: the greedy graph's ops, eagerly
            logits = self._greedy_step()
        self._advance()
        self.history_len += 1
        return self.history[:, self.history_len - 1], logits

    def greedy_history(self) -> torch.Tensor:
        """(batch, 1 + steps taken) int64: the tokens begin_greedy fed, then each step_greedy's argmax. A view of
        the decoder's buffer, overwritten by the next begin_greedy (clone it to keep it)."""
        if self.history is None:
            raise RuntimeError("greedy_history: no greedy run yet; call begin_greedy(tokens, steps) first")
        return self.history[:, :self.history_len]

    @torch.no_grad()
    def grow(self, max_len: int) -> None:
        """Reallocates the KV caches for max_len positions, keeping what the state holds, and captures again."""
        if max_len <= self.max_len:
            return
        old, length = self.state, self.length
        self._build(max_len)  # new state (dirtied by the capture's warm-up steps), new graph
        for new_state, old_state in zip(self.state, old):
            _copy_layer_state(new_state, old_state, length)
        self.start(length)

    def _build(self, max_len: int) -> None:
        self.max_len = max_len
        model = self.model
        self.state = allocate_cache(model, self.batch, max_len if self.has_attention else 1,
                                    kv_dtype=self.kv_dtype)
        self._kvs = [s.kv for s in self.state if isinstance(getattr(s, "kv", None), KVCache)]
        self.nbytes = sum(cache_nbytes(self.state).values())
        self._graph, self._logits = None, None
        self._greedy_graph, self._greedy_logits = None, None
        if self.capture and self.fallback_reason is None:
            self._capture()
            if self.history is not None and self._graph is not None:  # a grow during (or after) greedy runs
                self._capture_greedy()

    def _make_room(self) -> None:
        """Grows the KV caches when the next step's position is past them."""
        if self.capacity is not None and self.length >= self.capacity:
            self.grow(2 * self.capacity)

    def _advance(self) -> None:
        """The host's mirrors after a step: length, and kv.length (the static step) or position (the dynamic
        step, which advanced kv.length itself)."""
        self.length += 1
        if self.fallback_reason is not None:
            self.position.fill_(self.length)
        else:
            for kv in self._kvs:
                kv.length = self.length

    def _static_step(self, argmax_keys: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model.step(self.tokens, self.state, self.position, argmax_keys=argmax_keys)
        self.position.add_(1)
        return logits

    def _greedy_step(self) -> torch.Tensor:
        """The static step with its argmax keys, then the keys fed back (what the greedy graph captures)."""
        logits = self._static_step(argmax_keys=self.keys)
        feed_back_keys(self.keys, self.tokens, self.history, self.history_index)
        return logits

    @torch.no_grad()
    def _capture(self) -> None:
        """Warm-up on a side stream, then capture one static step (its state updates and position += 1)."""
        def warm_up():
            for i in range(WARMUP_STEPS):
                self.position.zero_()  # stay inside the cache whatever its size
                if i == WARMUP_STEPS - 1:  # the earlier steps compiled and tuned Triton kernels, which syncs
                    _step_without_host_sync(self._static_step)
                elif i == 1:  # the LM head with the argmax epilogue too: _capture_greedy runs no step
                    self._static_step(argmax_keys=torch.full_like(self.keys, EMPTY_KEY))
                else:
                    self._static_step()
            self.position.zero_()

        try:
            self._graph, self._logits = self._record(warm_up, self._static_step)
        except Exception as e:  # a host read inside the step: capture is impossible for this model
            self.fallback_reason = error_summary(e)
            warn_once(f"CUDA graph capture of {type(self.model).__name__} decode failed ({self.fallback_reason}); "
                      f"decoding eagerly instead")

    @torch.no_grad()
    def _capture_greedy(self) -> None:
        """Captures the greedy step into the step graph's memory pool, as the two never replay at once. The step
        graph's logits stay alive, so this capture never takes their memory; it may take the memory of the step
        graph's intermediates, so a step() replay can overwrite the greedy logits, as any next step does.

        Nothing runs on the state, which may hold a prefilled prompt: the step graph's warm-up already compiled
        and tuned every kernel of the step at these shapes (the LM head with its argmax epilogue too), and a
        capture only records. The feedback's own launch warms up on scratch buffers. A failed capture (out of
        memory) warns once; step_greedy then replays the step's graph and takes the argmax eagerly.
        """
        def warm_up():
            scratch = (self.keys.clone(), self.tokens.clone(), self.history[:, :1].clone(),
                       torch.zeros_like(self.history_index))
            _feed_back_logits(self._logits, *scratch)  # compiles the feedback's kernel
            _step_without_host_sync(lambda: _feed_back_logits(self._logits, *scratch))

        try:
            self._greedy_graph, self._greedy_logits = self._record(warm_up, self._greedy_step, self._graph.pool())
        except Exception as e:
            warn_once(f"CUDA graph capture of {type(self.model).__name__}'s greedy step failed ({error_summary(e)}); "
                      f"the argmax runs after each replay instead")

    def _record(self, warm_up, step, pool=None) -> tuple:
        """record_graph(warm_up, step) with the model in eval mode."""
        with eval_mode(self.model):
            return record_graph(self.device, warm_up, step, pool)


def record_graph(device, warm_up, step, pool=None) -> tuple:
    """Runs warm_up() on a side stream, then captures step() into a new CUDA graph (in the memory pool `pool` when
    given). Returns (graph, step's output); a failure's CUDA error is cleared before it is raised again. The decode
    graphs and the prefill graphs (prefill_graphs.py) are all made here."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            warm_up()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a server's) neither break nor get blocked by the capture.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = step()
        return graph, out
    except Exception:
        _clear_cuda_error(device)
        raise


def error_summary(e: Exception) -> str:
    """A failed capture's reason in one line: the exception's type and its message's first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _feed_back_logits(logits: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, history: torch.Tensor,
                      index: torch.Tensor) -> None:
    """Greedy feedback from logits (batch, vocab) computed without keys: folded into keys (batch,) (EMPTY_KEY),
    then fed back as feed_back_keys does (tokens, history's column index[0], index + 1, keys emptied)."""
    fold_argmax_keys(keys, logits)
    feed_back_keys(keys, tokens, history, index)


def _step_without_host_sync(fn) -> None:
    """Runs fn with torch's sync debug mode set to "error", so a step that reads a value back to the host (which
    a capture cannot hold) raises here, before a capture is even tried."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode(before)


def _clear_cuda_error(device) -> None:
    """A failed capture leaves its error as the runtime's last error; a synchronize reports (and clears) it here
    rather than in the next unrelated kernel launch check."""
    try:
        torch.cuda.synchronize(device)
    except Exception:
        pass


def _reset_layer_state(state, zero: list) -> None:
    """Empties a layer's KV cache and padding fields; its other tensors (SSM and conv states) go to `zero` for
    the caller to zero in one launch."""
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, KVCache):
            value.reset()
        elif f.name == "key_mask":
            value.fill_(True)
        elif f.name == "padded":
            setattr(state, f.name, False)
        elif isinstance(value, torch.Tensor):
            zero.append(value)


def _copy_layer_state(new, old, length: int) -> None:
    """Copies a layer's state into a bigger one: SSM tensors whole, the first `length` KV positions."""
    for f in dataclasses.fields(old):
        src, dst = getattr(old, f.name), getattr(new, f.name)
        if isinstance(src, KVCache):
            for name in ("k", "v", "k_scale", "v_scale"):
                if getattr(src, name) is not None:
                    getattr(dst, name)[:, :length].copy_(getattr(src, name)[:, :length])
        elif f.name == "key_mask":
            dst.fill_(True)
            dst[:, :length].copy_(src[:, :length])
        elif isinstance(src, torch.Tensor):
            dst.copy_(src)
        else:
            setattr(new, f.name, src)


def graph_cache_len(needed: int) -> int:
    """The KV capacity of the graph that serves `needed` positions: rounded up to a multiple of 256, or of 1/8 of
    its power of two when larger, so prompts of nearby lengths share a graph and at most ~12 % is unused."""
    step = max(256, 2 ** max(needed.bit_length() - 4, 0))
    return -(-needed // step) * step
