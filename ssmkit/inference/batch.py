"""Batched generation of prompts of different lengths: left padding plus an attention mask, then one decode loop.

Padding sits on the left so every row's last prompt token is the batch's last position; the mask keeps padding out
of the SSM states and out of attention, so each row's tokens equal those of generating that prompt alone. RoPE
angles of a padded row are shifted by its pad count, which leaves every attention score unchanged (scores depend
on position differences only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .generate import generate_steps


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 0, device=None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists (or 1-D tensors) -> input_ids (batch, longest) int64 and attention_mask (batch, longest)
    int64, with pad_token_id and 0 in front of the shorter prompts."""
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt, got none")
    rows = [torch.as_tensor(p, dtype=torch.int64).flatten() for p in prompts]
    empty = [i for i, r in enumerate(rows) if r.numel() == 0]
    if empty:
        raise ValueError(f"prompts: expected non-empty prompts, prompts {empty} are empty")
    longest = max(r.numel() for r in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.int64)
    for i, r in enumerate(rows):
        input_ids[i, longest - r.numel():] = r
        attention_mask[i, longest - r.numel():] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_batch(model, prompts: Sequence[Sequence[int]], **kwargs) -> list[list[int]]:
    """Generates from every prompt in one batch; returns each row's new tokens, ending at its stop token.

    Args:
        model: a LanguageModel. prompts: token-id lists of any lengths (>= 1).
        kwargs: as for ssmkit.inference.generate.generate (max_new_tokens, temperature, top_k, top_p, seed,
            eos_token_id, pad_token_id, prefill_chunk_size, kv_dtype, max_cache_len).
    Returns:
        one list per prompt: the new tokens up to and including the first stop token (or max_new_tokens of them).
    """
    if "attention_mask" in kwargs or "input_ids" in kwargs:
        raise ValueError("generate_batch builds input_ids and attention_mask itself; pass token-id lists")
    input_ids, attention_mask = left_pad(prompts, device=model.embeddings.weight.device)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in generate_steps(model, input_ids, attention_mask=attention_mask, **kwargs):
        tokens, finished = step.tokens.tolist(), step.finished.tolist()
        for i in range(len(prompts)):
            if not done[i]:
                new[i].append(tokens[i])
                done[i] = finished[i]
    return new
