"""transformers' `generate` behind the Benchmarker interface, on the same weights, for side-by-side numbers.

The ssmkit model is written with ssmkit.io.save_pretrained and read back by transformers' from_pretrained (for
the families transformers implements: mamba, mamba2, llama, jamba, bamba). Tokens are time-stamped by a
streamer, as ssmkit's are by generate_steps; transformers is imported only here, and only when used.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

from ssmkit.io.hf_config import hf_model_type

from .runner import Benchmarker


def transformers_family(config) -> str | None:
    """The transformers model_type that computes exactly this ModelConfig, or None ("ssmkit" only)."""
    model_type = hf_model_type(config)
    return None if model_type == "ssmkit" else model_type


def load_transformers_twin(model, folder, *, device=None, dtype=None):
    """A transformers model with `model`'s weights (saved to `folder` first), in eval mode; None when no
    transformers family computes this model."""
    from transformers import AutoModelForCausalLM

    from ssmkit.io import save_pretrained

    if transformers_family(model.config) is None:
        return None
    folder = Path(folder)
    save_pretrained(model, folder)
    dtype = dtype or model.embeddings.weight.dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return hf.to(device or model.embeddings.weight.device).eval()


class _StepClock:
    """A generate() streamer: its first put() is the prompt, each later one a new token for every row."""

    def __init__(self, on_step=None):
        self.times: list[float] = []
        self.on_step = on_step
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())  # value arrives on the CPU: the token is computed
        if self.on_step is not None:
            self.on_step(len(self.times) - 1)

    def end(self):
        pass


class TransformersBenchmarker(Benchmarker):
    """Benchmarker whose generation is transformers' `generate` (greedy, exactly max_new_tokens, default cache).

    Args:
        hf_model: a transformers causal LM. config: the ssmkit ModelConfig of the same weights (memory plans).
        tokenizer, name, batching, max_batch: as for Benchmarker. There is no quality suite (same weights as the
        ssmkit model, so the same quality).
    """

    def __init__(self, hf_model, config, tokenizer, name: str, *, batching: str = "none", max_batch: int = 32):
        super().__init__(_Shim(hf_model, config), tokenizer, name, batching=batching, max_batch=max_batch,
                         quality=False)
        self.model = hf_model

    def _generate_timed(self, input_ids, max_new_tokens, on_step=None, attention_mask=None) -> list[float]:
        clock = _StepClock(on_step)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                                streamer=clock)
        return clock.times

    def greedy_tokens(self, ids: list[int], max_new_tokens: int) -> list[int]:
        x = torch.tensor([ids], dtype=torch.int64, device=self.device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                      min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)
        return out[0, len(ids):].tolist()


class _Shim:
    """What Benchmarker.__init__ reads from a model: eval(), config, embeddings.weight (device and dtype)."""

    def __init__(self, hf_model, config):
        self.config = config
        self.embeddings = hf_model.get_input_embeddings()

    def eval(self):
        return self
