"""Out-of-memory remedies, measured: plain prefill, chunked prefill, int8 and int4 KV caches, and an SSM model.

For one long prompt each remedy reports peak memory, cache bytes and its output; against plain prefill on the same
weights it reports perplexity delta and greedy-token agreement. int4 is group-wise symmetric quantization with one
float16 scale per `group_size` values along headdim, two values packed per byte (as in KIVI-style KV caches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssmkit.inference.cache import allocate_cache, cache_nbytes
from ssmkit.inference.generate import prefill
from ssmkit.layers.attention import AttentionState
from ssmkit.ops.attention.kv_cache import KVCache

from .memory_plan import INT4_GROUP_SIZE
from .tensor_memory import PeakTensorMemory

INT4_MAX = 7  # symmetric: q in [-7, 7], stored as q + 8 in a nibble


def quantize_int4(t: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise symmetric int4 along the last dim.

    Args:
        t: floating (..., n), n even and divisible by group_size (e.g. keys (batch, seqlen, heads, headdim)).
    Returns:
        packed: uint8 (..., n // 2), element 2j in the low nibble and 2j + 1 in the high nibble, each q + 8.
        scale: float16 (..., n // group_size), absmax of the group / 7 rounded to float16; q = round(t / scale).
        dequantize_int4(packed, scale) is within scale / 2 of t (exact for all-zero groups).
    """
    n = t.shape[-1]
    if n % 2 or n % group_size:
        raise ValueError(f"t: int4 needs a last dim divisible by 2 and by group_size={group_size}, got {n}")
    compute = torch.float64 if t.dtype == torch.float64 else torch.float32
    groups = t.to(compute).reshape(*t.shape[:-1], n // group_size, group_size)
    scale = (groups.abs().amax(dim=-1) / INT4_MAX).to(torch.float16)
    # q uses the float16 scale that is stored, so the bound holds after the scale's own rounding; an all-zero
    # group (or one below float16's range) keeps scale 0 and divides by 1, giving q = 0.
    s = scale.to(compute)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(groups / safe[..., None]).clamp_(-INT4_MAX, INT4_MAX).to(torch.int16) + 8
    q = q.reshape(*t.shape[:-1], n // 2, 2)
    packed = (q[..., 0] | (q[..., 1] << 4)).to(torch.uint8)
    return packed, scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """packed uint8 (..., n // 2) and scale (..., n // group_size) from quantize_int4 -> (..., n) in dtype."""
    p = packed.to(torch.int16)
    q = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(*packed.shape[:-1], -1) - 8  # (..., n)
    groups = scale.shape[-1]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    out = q.reshape(*q.shape[:-1], groups, -1).to(compute) * scale.to(compute)[..., None]
    return out.reshape(q.shape).to(dtype)


@dataclass
class Int4KVCache(KVCache):
    """A KVCache whose k and v hold packed int4 (batch, max_len, nkv_heads, headdim // 2) uint8 and whose k_scale,
    v_scale hold (batch, max_len, nkv_heads, headdim // group_size) float16 scales. `append` returns dequantized
    keys and values in dtype, like the int8 cache."""

    group_size: int = INT4_GROUP_SIZE

    def __post_init__(self):
        for name in ("batch", "max_len", "nkv_heads", "headdim", "group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.headdim % 2 or self.headdim % self.group_size:
            raise ValueError(f"group_size: int4 needs headdim divisible by 2 and by group_size, got headdim="
                             f"{self.headdim}, group_size={self.group_size}")
        self.kv_dtype = torch.uint8
        rows = (self.batch, self.max_len, self.nkv_heads)
        self.k = torch.zeros(*rows, self.headdim // 2, dtype=torch.uint8, device=self.device)
        self.v = torch.zeros_like(self.k)
        self.k_scale = torch.zeros(*rows, self.headdim // self.group_size, dtype=torch.float16, device=self.device)
        self.v_scale = torch.zeros_like(self.k_scale)
        if self.per_row:
            self.lengths = torch.zeros(self.batch, dtype=torch.int64, device=self.k.device)

    @property
    def quantized(self) -> bool:
        return True

    def _write(self, index, k_new, v_new) -> None:
        self.k[index], self.k_scale[index] = quantize_int4(k_new, self.group_size)
        self.v[index], self.v_scale[index] = quantize_int4(v_new, self.group_size)

    def _read(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = dequantize_int4(self.k[:, :length], self.k_scale[:, :length], self.dtype)
        v = dequantize_int4(self.v[:, :length], self.v_scale[:, :length], self.dtype)
        return k, v


class NewTensorPeak(PeakTensorMemory):
    """PeakTensorMemory that does not count the storages of `existing` tensors (a model's weights): a view of a
    weight made inside the region (F.linear transposes it) would otherwise count the weight as a new tensor."""

    def __init__(self, existing=()):
        super().__init__()
        self._seen.update(t.untyped_storage().data_ptr() for t in existing)


def model_tensors(model) -> list[torch.Tensor]:
    """Parameters and buffers of `model` (each storage once)."""
    return list({t.untyped_storage().data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}
                .values())


def allocate_remedy_cache(model, batch: int, max_len: int, kv: str = "same",
                          group_size: int = INT4_GROUP_SIZE) -> list:
    """The decode cache of `model` with attention KV stored as kv: 'same' (model dtype), 'int8' or 'int4'.

    int4 groups hold min(group_size, headdim) values. The int4 cache is built directly (no float cache is
    allocated first, so a peak-memory reading is honest)."""
    if kv not in ("same", "int8", "int4"):
        raise ValueError(f"kv: expected 'same', 'int8' or 'int4', got {kv!r}")
    if kv != "int4":
        return allocate_cache(model, batch, max_len, kv_dtype=torch.int8 if kv == "int8" else None)
    ref = model.embeddings.weight
    state = []
    for layer in model.layers:
        if layer.mixer_kind != "attention":
            state.append(layer.allocate_state(batch, max_len, ref.dtype, ref.device))
            continue
        m = layer.mixer
        cache = Int4KVCache(batch, max_len, m.n_kv_heads, m.head_dim, dtype=ref.dtype, device=ref.device,
                            group_size=min(group_size, m.head_dim))
        state.append(AttentionState(kv=cache, key_mask=torch.ones(batch, max_len, dtype=torch.bool,
                                                                  device=ref.device)))
    return state


@dataclass
class Remedy:
    """One way to run the prompt: which model, prefill chunk (None: at once) and KV storage."""

    name: str
    model_key: str
    prefill_chunk: int | None = None
    kv: str = "same"
    description: str = ""


@dataclass
class RemedyResult:
    """Measured on one prompt. peak_bytes: the largest total of live tensors created while prefilling and
    decoding (weights excluded; CPU: PeakTensorMemory, CUDA: allocator peak above the start); cache_bytes: the
    decode cache (kv_cache_bytes of it are KV). saved_*: against the baseline remedy. ppl: perplexity of the
    last eval_tokens of the prompt given the rest, read through this remedy's cache; ppl_delta and
    greedy_agreement (the share of those positions whose argmax equals the baseline's) only for the baseline's
    model, None for another model. output: the greedy continuation, decoded."""

    name: str
    model: str
    description: str
    prompt_tokens: int
    peak_bytes: int
    cache_bytes: int
    kv_cache_bytes: int
    saved_bytes: int
    saved_pct: float
    ppl: float
    ppl_delta: float | None
    greedy_agreement: float | None
    output: str
    seconds: float


DEFAULT_REMEDIES = (
    Remedy("plain prefill", "attention", description="whole prompt at once, KV in the model dtype"),
    Remedy("chunked prefill", "attention", prefill_chunk=256, description="prompt in chunks of 256 tokens"),
    Remedy("KV int8", "attention", kv="int8", description="per-(token, head) absmax int8, float32 scales"),
    Remedy("KV int4", "attention", kv="int4",
           description=f"group-wise int4, float16 scale per {INT4_GROUP_SIZE} values"),
    Remedy("SSM model", "ssm", description="same prompt on a Mamba-2 model: fixed-size state, no KV cache"),
    Remedy("hybrid model", "hybrid", description="same prompt on a Mamba-2/attention hybrid"),
)


@torch.no_grad()
def _generate(model, ids: torch.Tensor, new_tokens: int, remedy: Remedy) -> tuple[list[int], dict]:
    """Greedy continuation with the remedy's cache; returns (tokens, cache_nbytes of the cache)."""
    state = allocate_remedy_cache(model, ids.shape[0], ids.shape[1] + new_tokens, remedy.kv)
    logits = prefill(model, ids, state, chunk_size=remedy.prefill_chunk)
    out = []
    for t in range(new_tokens):
        tok = logits.argmax(-1)
        out.append(int(tok[0]))
        if t < new_tokens - 1:
            logits = model.step(tok, state)
    return out, cache_nbytes(state)


@torch.no_grad()
def _eval_logits(model, ids: torch.Tensor, eval_tokens: int, remedy: Remedy) -> torch.Tensor:
    """Logits (eval_tokens, vocab) predicting the last eval_tokens of ids[0] from everything before them: the
    context goes through the remedy's prefill and cache, the evaluated tokens are then read in one more chunk."""
    n = ids.shape[1]
    state = allocate_remedy_cache(model, 1, n, remedy.kv)
    first = prefill(model, ids[:, :n - eval_tokens], state, chunk_size=remedy.prefill_chunk)  # predicts token n-E
    rest = model(ids[:, n - eval_tokens:-1], state)[0] if eval_tokens > 1 else first[:0]
    return torch.cat([first, rest], dim=0).float()


def _peak(fn, device: torch.device, model):
    """(result of fn(), peak bytes of tensors created during it, weights excluded) on CPU or CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - base
    with NewTensorPeak(model_tensors(model)) as mem:
        out = fn()
    return out, mem.peak_bytes


def measure_remedies(models: dict, prompt_ids, *, tokenizer=None, remedies=DEFAULT_REMEDIES, new_tokens: int = 16,
                     eval_tokens: int = 128, progress=None) -> list[RemedyResult]:
    """Runs each remedy whose model_key is in `models` on one prompt; the first remedy is the baseline.

    Args:
        models: model_key -> LanguageModel ('attention' for the KV remedies; 'ssm', 'hybrid' for other models).
        prompt_ids: list[int] or (1, n) int64, n > eval_tokens. tokenizer: decodes the outputs (None: ids).
        new_tokens: greedy tokens generated per remedy. eval_tokens: tail of the prompt scored for perplexity.
    """
    import time

    remedies = [r for r in remedies if r.model_key in models]
    if not remedies:
        raise ValueError(f"models: expected keys used by the remedies ({sorted({r.model_key for r in remedies})}), "
                         f"got {sorted(models)}")
    ids = torch.as_tensor(prompt_ids, dtype=torch.int64).reshape(1, -1)
    if not 1 <= eval_tokens < ids.shape[1]:
        raise ValueError(f"eval_tokens: expected 1 <= eval_tokens < prompt length {ids.shape[1]}, got {eval_tokens}")
    targets = ids[0, -eval_tokens:]
    results, base_logits, base = [], None, None
    for remedy in remedies:
        model = models[remedy.model_key].eval()
        device = model.embeddings.weight.device
        x = ids.to(device)
        t0 = time.perf_counter()
        (tokens, sizes), peak = _peak(lambda: _generate(model, x, new_tokens, remedy), device, model)
        seconds = time.perf_counter() - t0
        logits = _eval_logits(model, x, eval_tokens, remedy).cpu()
        ppl = math.exp(F.cross_entropy(logits, targets).item())
        if base is None:
            base, base_logits = (remedy, peak, ppl), logits
        same_model = remedy.model_key == base[0].model_key
        agreement = float((logits.argmax(-1) == base_logits.argmax(-1)).double().mean()) if same_model else None
        results.append(RemedyResult(
            name=remedy.name, model=remedy.model_key, description=remedy.description, prompt_tokens=ids.shape[1],
            peak_bytes=int(peak), cache_bytes=sizes["kv"] + sizes["ssm"], kv_cache_bytes=sizes["kv"],
            saved_bytes=int(base[1] - peak), saved_pct=100.0 * (base[1] - peak) / base[1] if base[1] else 0.0,
            ppl=ppl, ppl_delta=ppl - base[2] if same_model else None, greedy_agreement=agreement,
            output=tokenizer.decode(tokens) if tokenizer is not None else " ".join(map(str, tokens)),
            seconds=seconds))
        if progress:
            progress(len(results), len(remedies))
    return results


def format_remedies(results: list[RemedyResult]) -> str:
    """A markdown table: remedy, model, peak, cache, saved, perplexity (delta), greedy agreement."""
    from .memory_plan import format_bytes
    from .table import markdown_table

    rows = [[r.name, r.model, format_bytes(r.peak_bytes), format_bytes(r.cache_bytes),
             f"{format_bytes(max(r.saved_bytes, 0))} ({r.saved_pct:.0f}%)" if r.saved_bytes >= 0
             else f"-{format_bytes(-r.saved_bytes)} ({r.saved_pct:.0f}%)",
             f"{r.ppl:.4g}", "n/a (other model)" if r.ppl_delta is None else f"{r.ppl_delta:+.3g}",
             "n/a" if r.greedy_agreement is None else f"{r.greedy_agreement:.1%}"] for r in results]
    return markdown_table(["remedy", "model", "peak memory", "cache", "saved vs first", "perplexity",
                           "ppl delta", "argmax agreement"], rows, right_align_from=2)
