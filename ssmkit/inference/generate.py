"""Autoregressive generation: prefill the prompt into a fixed-size cache, then decode one token at a time.

SSM layers carry a constant-size recurrent state and attention layers a KV cache of prompt + new tokens, both
allocated once (as mamba_ssm's allocate_inference_cache and gpt-fast's setup_caches). Batches of prompts of
different lengths are left-padded; padding leaves the SSM states unchanged and is never attended to. On a CUDA
device the decode step is replayed from a CUDA graph (graphs.py) unless cuda_graph=False; greedy decoding without
stop tokens replays a graph that also picks each token and feeds it back, so the host launches nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import torch

from .cache import allocate_cache
from .graph_registry import eager_reason, graphed_decoder, release_decoder
from .module_walk import eval_mode
from .prefill_graphs import graph_prefill_reason, graphed_prefill
from .sampling import SamplingConfig, next_token


@dataclass
class GenerationStep:
    """One decode step of a batch. tokens (batch,) int64: the new token of each row (pad_token_id for rows that
    had already stopped); logits (batch, vocab): the model's raw logits the tokens were chosen from;
    finished (batch,) bool: rows that have emitted a stop token, this step included."""

    tokens: torch.Tensor
    logits: torch.Tensor
    finished: torch.Tensor


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, state: list, *, key_padding_mask: torch.Tensor | None = None,
            chunk_size: int | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Runs the prompt through `model`, updating `state` in place; returns the last position's logits.

    Args:
        input_ids: (batch, seqlen) int64. state: from allocate_cache, empty or holding earlier tokens.
        key_padding_mask: (batch, seqlen) bool, False at left padding.
        chunk_size: feed the prompt in pieces of this many tokens (None = at once). Every layer continues from
            the state the previous piece left, so the result equals one-shot prefill up to rounding, with
            activations of chunk_size tokens instead of seqlen.
        cuda_graph: None replays the forward from CUDA graphs where it can (a CUDA model of Mamba / Mamba-2
            layers, no padding or chunk_size, a short prompt: ssmkit.inference.prefill_graphs; the same result up
            to rounding, without the host's launch time); False always runs it eagerly.
    Returns:
        logits (batch, vocab_size) at position seqlen - 1.
    """
    model._check_inputs(input_ids, state, key_padding_mask)  # one read-back of the ids for the whole prompt
    return _prefill(model, input_ids, state, key_padding_mask, chunk_size, cuda_graph)


def _prefill(model, input_ids, state, key_padding_mask, chunk_size, cuda_graph) -> torch.Tensor:
    """prefill after its input checks (generate's _plan makes the same ones: a second read-back of the ids,
    with its host synchronisation, stood before the prefill of every generate)."""
    if cuda_graph is not False and graph_prefill_reason(model, input_ids, key_padding_mask, chunk_size) is None:
        return graphed_prefill(model, input_ids.shape[0]).run(input_ids, state)
    seqlen = input_ids.shape[1]
    step = seqlen if chunk_size is None else chunk_size
    logits = None
    for start in range(0, seqlen, step):
        piece = slice(start, start + step)
        mask = None if key_padding_mask is None else key_padding_mask[:, piece]
        logits = model._forward_unchecked(input_ids[:, piece], state, mask, logits_to_keep=1)[:, -1]
    return logits


def generate_steps(model, input_ids: torch.Tensor, *, max_new_tokens: int = 20, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                   attention_mask: torch.Tensor | None = None, prefill_chunk_size: int | None = None,
                   kv_dtype: torch.dtype | None = None, max_cache_len: int | None = None,
                   cuda_graph: bool | None = None) -> Iterator[GenerationStep]:
    """The decode loop of `generate`, one GenerationStep per new token (arguments as for `generate`).

    Stops after max_new_tokens steps or once every row has finished. The model runs in eval mode while the
    iterator is alive (MoE capacity limits apply in training mode only and would couple the rows).
    """
    plan = _plan(model, input_ids, max_new_tokens, SamplingConfig(temperature, top_k, top_p), seed, eos_token_id,
                 pad_token_id, attention_mask, prefill_chunk_size, kv_dtype, max_cache_len, cuda_graph)
    return _run(model, plan) if max_new_tokens > 0 else iter(())


def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 20, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_token_id: int | list[int] | None = None, attention_mask: torch.Tensor | None = None,
             prefill_chunk_size: int | None = None, kv_dtype: torch.dtype | None = None, *,
             pad_token_id: int | None = None, max_cache_len: int | None = None,
             cuda_graph: bool | None = None) -> torch.Tensor:
    """Prompt plus new tokens, as transformers' generate returns them.

    Args:
        model: a LanguageModel.
        input_ids: (batch, prompt_len) int64 prompts, left-padded when attention_mask marks padding.
        max_new_tokens: tokens to add per row (>= 0).
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
        top_k, top_p: restrict sampling to the k most likely tokens / the nucleus of mass top_p in (0, 1].
        seed: sampling seed (a torch.Generator on the model's device); None uses torch's global RNG.
        eos_token_id: a stop token id or a list of them; None = model.config.eos_token_id; [] = never stop.
        attention_mask: (batch, prompt_len) 0/1 or bool, 1 at real tokens; padding must be on the left.
        prefill_chunk_size: prefill the prompt in chunks of this many tokens (same result, less memory).
        kv_dtype: storage of attention KV caches, e.g. torch.int8 (quantized); None = the model's dtype.
        pad_token_id: written after a row's stop token; None = model.config.pad_token_id, else the first eos id.
        max_cache_len: positions to allocate in attention KV caches; None = prompt_len + max_new_tokens.
        cuda_graph: decode with the static step captured in a CUDA graph (ssmkit.inference.graphs), one per
            batch size and cache length, kept for later calls (graph_registry); None = on CUDA devices, False =
            the eager step. The tokens are the eager step's. A model whose step cannot be captured decodes eagerly
            (one warning).
    Returns:
        (batch, prompt_len + n) int64, n <= max_new_tokens: input_ids followed by the new tokens; n is shorter
        when every row stopped early, and a row that stopped earlier continues with pad_token_id.
    """
    plan = _plan(model, input_ids, max_new_tokens, SamplingConfig(temperature, top_k, top_p), seed, eos_token_id,
                 pad_token_id, attention_mask, prefill_chunk_size, kv_dtype, max_cache_len, cuda_graph)
    if max_new_tokens == 0:
        return input_ids.long().clone()
    # The steps' tokens may be views of a graph decoder's token history, which the decoder's next generation
    # overwrites: they are stacked before the iterator closes and releases the decoder. zip stops on the range
    # without asking the iterator for a step past the last, so that one is still open here.
    with closing(_run(model, plan, with_logits=False)) as steps:
        new = [step.tokens for _, step in zip(range(max_new_tokens), steps)]
        return torch.cat([input_ids.long(), torch.stack(new, dim=1)], dim=1)


@dataclass
class _Plan:
    """Checked inputs of one generate call."""

    input_ids: torch.Tensor  # (batch, prompt_len), padded positions replaced by token 0
    key_padding_mask: torch.Tensor | None  # (batch, prompt_len) bool, None without padding
    max_new_tokens: int
    sampling: SamplingConfig
    generator: torch.Generator | None
    eos: torch.Tensor | None  # (n_eos,) int64
    pad_token_id: int
    prefill_chunk_size: int | None
    kv_dtype: torch.dtype | None
    cache_len: int
    exact_cache_len: bool  # max_cache_len was given: a graph's KV caches get exactly cache_len positions
    cuda_graph: bool


def _run(model, plan: _Plan, with_logits: bool = True) -> Iterator[GenerationStep]:
    """The steps of `plan` with `model` in eval mode (each module's own mode back after). with_logits=False is
    generate's: see _decode."""
    with eval_mode(model):
        yield from _decode(model, plan, with_logits)


@torch.no_grad()
def _decode(model, plan: _Plan, with_logits: bool = True) -> Iterator[GenerationStep]:
    """Prefill, then one GenerationStep per new token. Greedy decoding without stop tokens through a graph decoder
    takes the decoder's in-graph greedy loop (_greedy_in_graph; with_logits as there)."""
    batch, prompt_len = plan.input_ids.shape
    device = plan.input_ids.device
    decoder = None
    if plan.cuda_graph:
        # None when the model cannot be captured, or when this graph serves another live generation.
        decoder = graphed_decoder(model, batch, plan.cache_len, kv_dtype=plan.kv_dtype,
                                  exact=plan.exact_cache_len)
    try:
        if decoder is None:
            state = allocate_cache(model, batch, plan.cache_len, kv_dtype=plan.kv_dtype)
        else:
            decoder.reset()
            state = decoder.state
        logits = _prefill(model, plan.input_ids, state, plan.key_padding_mask, plan.prefill_chunk_size,
                          None if plan.cuda_graph else False)  # _plan checked the ids
        if decoder is not None:
            decoder.start(prompt_len)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        if decoder is not None and plan.sampling.greedy and plan.eos is None:
            yield from _greedy_in_graph(decoder, logits, plan.max_new_tokens, finished, with_logits)
            return
        for t in range(plan.max_new_tokens):
            tokens = next_token(logits, plan.sampling, plan.generator)
            if plan.eos is not None:
                tokens = torch.where(finished, plan.pad_token_id, tokens)
                finished = finished | torch.isin(tokens, plan.eos)
            yield GenerationStep(tokens=tokens, logits=logits, finished=finished)
            if t == plan.max_new_tokens - 1 or (plan.eos is not None and bool(finished.all())):
                return
            if decoder is None:
                logits = model.step(tokens, state)
            else:
                logits = decoder.step(tokens).clone()  # the graph's output buffer is overwritten next step
    finally:
        if decoder is not None:
            release_decoder(model, decoder)


def _greedy_in_graph(decoder, logits: torch.Tensor, n: int, finished: torch.Tensor,
                     with_logits: bool) -> Iterator[GenerationStep]:
    """n greedy steps from the prefill's logits (batch, vocab), the later n - 1 by GraphedDecoder.step_greedy: the
    argmax of each step's logits is the next step's input and goes to the decoder's token history, with no kernel
    outside the replay. The steps get a copy of each step's tokens and logits, as from the per-step path (the
    decoder's next replay rewrites its logits, its next generation the history), unless with_logits is False
    (generate's): then the tokens are the history's columns, valid while the caller holds the decoder, and the
    logits None after the first step."""
    tokens = torch.argmax(logits, dim=-1)  # the greedy choice of next_token and of the graph's feedback
    decoder.begin_greedy(tokens, n - 1)
    yield GenerationStep(tokens=tokens, logits=logits, finished=finished)
    for _ in range(n - 1):
        tokens, logits = decoder.step_greedy()
        if with_logits:
            tokens, logits = tokens.clone(), logits.clone()
        else:
            logits = None
        yield GenerationStep(tokens=tokens, logits=logits, finished=finished)


def _plan(model, input_ids, max_new_tokens, sampling, seed, eos_token_id, pad_token_id, attention_mask,
          prefill_chunk_size, kv_dtype, max_cache_len, cuda_graph) -> _Plan:
    """Checks every argument of generate and raises ValueError naming the first bad one."""
    vocab = model.config.vocab_size
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int32, torch.int64):
        got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected an int64 tensor (batch, prompt_len), got {got}")
    if input_ids.ndim != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids: expected shape (batch, prompt_len) with batch >= 1 and a non-empty prompt, "
                         f"got shape {tuple(input_ids.shape)}")
    device = model.embeddings.weight.device
    if input_ids.device != device:
        raise ValueError(f"input_ids: expected a tensor on the model's device {device}, got {input_ids.device}")
    mask = _key_padding_mask(attention_mask, input_ids)
    real = input_ids if mask is None else input_ids[mask]
    lo, hi = torch.stack((real.min(), real.max())).tolist()  # one read-back, not two
    if lo < 0 or hi >= vocab:
        raise ValueError(f"input_ids: expected token ids in [0, {vocab}) (vocab_size), got ids in [{lo}, {hi}]")
    _check_int("max_new_tokens", max_new_tokens, 0)
    if prefill_chunk_size is not None:
        _check_int("prefill_chunk_size", prefill_chunk_size, 1)
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
    pad = eos[0] if pad is None and eos else pad
    for name, ids in (("eos_token_id", eos), ("pad_token_id", [] if pad is None else [pad])):
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab for i in ids):
            raise ValueError(f"{name}: expected token ids in [0, {vocab}) (vocab_size), got {ids}")
    prompt_len = input_ids.shape[1]
    # The last new token is returned, never fed back, so the cache holds prompt_len + max_new_tokens - 1 positions.
    needed = prompt_len + max(max_new_tokens - 1, 0)
    cache_len = prompt_len + max_new_tokens if max_cache_len is None else max_cache_len
    if max_cache_len is not None:
        _check_int("max_cache_len", max_cache_len, 1)
        if "attention" in model.config.mixers and needed > max_cache_len:
            raise ValueError(f"max_cache_len: the attention KV caches hold {max_cache_len} positions, but "
                             f"prompt_len + max_new_tokens - 1 = {prompt_len} + {max_new_tokens} - 1 = {needed}")
    generator = None
    if seed is not None:
        _check_int("seed", seed, 0)
        generator = torch.Generator(device=device).manual_seed(seed)
    ids = input_ids.long() if mask is None else input_ids.long().masked_fill(~mask, 0)
    return _Plan(input_ids=ids, key_padding_mask=mask, max_new_tokens=max_new_tokens, sampling=sampling,
                 generator=generator, eos=torch.tensor(eos, device=device) if eos else None,
                 pad_token_id=0 if pad is None else pad, prefill_chunk_size=prefill_chunk_size,
                 kv_dtype=kv_dtype, cache_len=cache_len, exact_cache_len=max_cache_len is not None,
                 cuda_graph=_use_cuda_graph(cuda_graph, device, model))


def _use_cuda_graph(cuda_graph, device: torch.device, model) -> bool:
    """cuda_graph None/True/False -> whether to decode `model` through a captured graph on `device`."""
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph: expected None, True or False, got {cuda_graph!r}")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph: expected None or False for a model on {device} (CUDA graphs need a CUDA "
                         f"device), got True")
    held = eager_reason(model)
    if cuda_graph and held is not None:
        raise ValueError(f"cuda_graph: expected None or False while {held}, got True")
    return device.type == "cuda" and held is None if cuda_graph is None else cuda_graph


def _key_padding_mask(attention_mask, input_ids: torch.Tensor) -> torch.Tensor | None:
    """attention_mask (batch, prompt_len) of 0/1 -> bool mask, None when nothing is padded."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(f"attention_mask: expected a tensor of shape {tuple(input_ids.shape)} (input_ids), "
                         f"got {got}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask: expected device {input_ids.device} (input_ids), got {attention_mask.device}")
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected 0/1 (or bool) entries, 1 at real tokens")
    mask = attention_mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask: rows {empty} have no real token (an empty prompt)")
    right = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1).nonzero().flatten().tolist()
    if right:
        raise ValueError(f"attention_mask: expected left padding (all 0s before the 1s of a row), rows {right} have "
                         f"a 0 after a 1; pad prompts on the left")
    return None if bool(mask.all()) else mask


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
