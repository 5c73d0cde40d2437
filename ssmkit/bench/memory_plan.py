"""Memory planner: bytes of weights, KV cache, SSM state (conv + ssm) and prefill activations of a ModelConfig.

Weights and caches are exact (they equal the tensors ssmkit allocates, `cache_nbytes`); activations are an estimate
of the largest live intermediates of one prefill pass, documented in `activation_bytes`. The textbook case:
80 layers x 64 KV heads x head dim 128 x 131,072 tokens x (K and V) x 2 bytes = 343,597,383,680 bytes of KV cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ssmkit.models.config import PRESETS, ModelConfig

DTYPE_BYTES = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_ALIASES = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                 "float": "fp32", "double": "fp64"}
KV_DTYPES = ("int8", "int4")
INT4_GROUP_SIZE = 32  # int4 KV: one float16 scale per 32 values along headdim (4.5 bits per value)
DEFAULT_PREFILL_CHUNK = 2048  # the chunk the planner also tries when asked for the longest context
MAX_SEARCH_CONTEXT = 1 << 31  # max_context searches up to 2**31 tokens; a model whose memory never grows is None


def dtype_name(dtype) -> str:
    """'bf16', 'bfloat16' or torch.bfloat16 -> 'bf16'. Raises ValueError for other dtypes."""
    name = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)} (or torch names), got {dtype!r}")
    return name


def kv_dtype_name(kv_dtype, dtype: str) -> str:
    """None -> the model dtype; 'int8' / 'int4' / torch.int8 -> quantized; a float dtype -> its short name."""
    if kv_dtype is None:
        return dtype
    name = str(kv_dtype).removeprefix("torch.")
    if name in KV_DTYPES:
        return name
    try:
        return dtype_name(name)
    except ValueError:
        raise ValueError(f"kv_dtype: expected one of {list(KV_DTYPES)}, a float dtype or None, got {kv_dtype!r}") \
            from None


def state_dtype_bytes(dtype: str) -> int:
    """SSM states of half-precision models are kept in float32 (ssmkit.layers.padding.state_dtype)."""
    return 4 if dtype in ("bf16", "fp16") else DTYPE_BYTES[dtype]


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int, batch: int = 1,
                   dtype: str = "fp16", kv_dtype=None, group_size: int = INT4_GROUP_SIZE) -> int:
    """K and V of `n_layers` attention layers for `context` positions of `batch` rows, scales included.

    Per layer: 2 (K, V) * batch * context * n_kv_heads * v, where v is head_dim * bytes(dtype) for a float cache;
    for int8, head_dim bytes + one float32 scale per (token, head) (float64 for fp64 models, as KVCache stores it);
    for int4, head_dim / 2 bytes (two values per byte) + one float16 scale per group of min(group_size, head_dim)
    values.
    """
    dtype = dtype_name(dtype)
    kv = kv_dtype_name(kv_dtype, dtype)
    if kv == "int8":
        per_head = head_dim + (8 if dtype == "fp64" else 4)
    elif kv == "int4":
        group_size = min(group_size, head_dim)
        if head_dim % 2 or head_dim % group_size:
            raise ValueError(f"group_size: int4 KV needs an even head_dim divisible by group_size, got head_dim="
                             f"{head_dim}, group_size={group_size}")
        per_head = head_dim // 2 + 2 * (head_dim // group_size)
    else:
        per_head = head_dim * DTYPE_BYTES[kv]
    return 2 * n_layers * batch * context * n_kv_heads * per_head


@dataclass
class LayerKindMemory:
    """One mixer kind: how many layers, their weights (mixer + norms + feed-forward) and cache bytes, all layers."""

    kind: str
    layers: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    conv_bytes: int = 0
    ssm_bytes: int = 0


@dataclass
class MemoryPlan:
    """Bytes for one model at (context, batch, dtype, kv_dtype).

    kv_bytes: K and V (+ scales); kv_mask_bytes: the attention layers' bool key masks (batch x context each, ssmkit's
    padding bookkeeping); conv_bytes + ssm_bytes: the fixed-size SSM states. cache_bytes is their sum, equal to
    ssmkit.inference.cache_nbytes of the allocated cache. activation_bytes: estimated prefill working memory
    over `prefill_tokens` (= context, or the chunk size with chunked prefill). With gpu_memory_bytes:
    max_context is the longest context that fits with this plan's prefill, max_context_chunked the same with
    prefill in chunks of chunked_prefill_tokens (None: no limit, the memory does not grow with the context).
    """

    name: str
    context: int
    batch: int
    dtype: str
    kv_dtype: str
    per_kind: list[LayerKindMemory]
    embedding_bytes: int
    weights_bytes: int
    params: int
    kv_bytes: int
    kv_mask_bytes: int
    conv_bytes: int
    ssm_bytes: int
    activation_bytes: int
    prefill_tokens: int
    kernels: str = "fused"
    gpu_memory_bytes: int | None = None
    max_context: int | None = None
    max_context_chunked: int | None = None
    chunked_prefill_tokens: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cache_bytes(self) -> int:
        return self.kv_bytes + self.kv_mask_bytes + self.conv_bytes + self.ssm_bytes

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes + self.activation_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory_bytes is None else self.total_bytes <= self.gpu_memory_bytes


def layer_params(config: ModelConfig, i: int) -> int:
    """Parameters and buffers of block i: its norms, its mixer and its feed-forward (as LanguageModel holds them)."""
    c, d = config, config.d_model
    kind, ff = c.mixers[i], c.feed_forwards[i]
    n = d  # the block's pre-norm weight
    if kind == "mamba":
        di, s, r = c.mamba_d_inner, c.mamba_d_state, c.mamba_dt_rank
        n += d * 2 * di + c.mamba_proj_bias * 2 * di  # in_proj -> (x, z)
        n += di * c.mamba_d_conv + c.mamba_conv_bias * di  # depthwise conv1d
        n += di * (r + 2 * s) + r * di + di  # x_proj -> (dt, B, C); dt_proj with bias
        n += di * s + di  # A_log, D
        n += di * d + c.mamba_proj_bias * d  # out_proj
        n += (r + 2 * s) if c.mamba_inner_norms else 0
    elif kind == "mamba2":
        di, h, cd = c.mamba2_d_inner, c.mamba2_nheads, c.mamba2_conv_dim
        n += d * (di + cd + h) + c.mamba2_proj_bias * (di + cd + h)  # in_proj -> (z, xBC, dt)
        n += cd * c.mamba2_d_conv + c.mamba2_conv_bias * cd
        n += 3 * h + di  # dt_bias, A_log, D; gated norm weight
        n += di * d + c.mamba2_proj_bias * d
    elif kind == "attention":
        q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        n += d * (q + 2 * kv) + q * d + c.attn_bias * (q + 2 * kv + d)
    elif kind == "s4":
        s = c.s4_d_state
        n += s * s + 2 * d * s + 2 * d + d * d + d  # A (buffer), B, C, log_dt, D, out_proj with bias
    if ff == "mlp":
        mats = 3 if c.mlp_activation == "swiglu" else 2
        n += d + mats * d * c.d_ff + c.mlp_bias * ((mats - 1) * c.d_ff + d)
    elif ff == "moe":
        n += d + d * c.n_experts + c.n_experts + c.n_experts * 3 * d * c.d_ff  # router, router_bias, experts
    return n


def model_params(config: ModelConfig) -> int:
    """All parameters and buffers, the tied LM head counted once."""
    embed = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2) + config.d_model  # + norm_f
    return embed + sum(layer_params(config, i) for i in range(config.n_layers))


def layer_cache_bytes(config: ModelConfig, i: int, context: int, batch: int, dtype: str, kv_dtype: str
                      ) -> tuple[int, int, int, int]:
    """(kv, kv_mask, conv, ssm) bytes of layer i's decode state, as its allocate_state makes it."""
    c, b, sb = config, DTYPE_BYTES[dtype], state_dtype_bytes(dtype)
    kind = c.mixers[i]
    if kind == "attention":
        return kv_cache_bytes(1, c.n_kv_heads, c.head_dim, context, batch, dtype, kv_dtype), batch * context, 0, 0
    if kind == "mamba":
        di = c.mamba_d_inner
        return 0, 0, batch * di * c.mamba_d_conv * b, batch * di * c.mamba_d_state * sb
    if kind == "mamba2":
        h, p = c.mamba2_nheads, c.mamba2_headdim
        return 0, 0, batch * c.mamba2_conv_dim * c.mamba2_d_conv * b, batch * h * p * c.mamba2_d_state * sb
    return 0, 0, 0, batch * c.d_model * c.s4_d_state * sb  # s4: no conv state


MAMBA_SCAN_STATES = 2**18  # the parallel selective scan materializes about this many states per chunk


KERNELS = ("fused", "torch")


def _mixer_width(c: ModelConfig, kind: str, kernels: str) -> tuple[int, int]:
    """(values in the model dtype, values in the scan's compute dtype) live per token inside one mixer."""
    if kind == "mamba":
        di, s, r = c.mamba_d_inner, c.mamba_d_state, c.mamba_dt_rank
        return 8 * di + r + 2 * s, 0  # in_proj (2), conv, dt, y, gate, out copies of d_inner; x_proj
    if kind == "mamba2":
        di, h, cd, n = c.mamba2_d_inner, c.mamba2_nheads, c.mamba2_conv_dim, c.mamba2_d_state
        q, p, g = c.mamba2_chunk_size, c.mamba2_headdim, c.mamba2_ngroups
        if kernels == "fused":  # the Triton SSD keeps chunk states and each chunk's C B^T (per group)
            return (di + cd + h) + cd + 2 * di, h * p * n // q + q * g
        # in_proj, conv, gated norm and out; chunked SSD in torch: B and C per head (x2 padded), segment decays
        # and scores (3 x Q per head), chunk states (4 x h p n / Q), x dt, diagonal, off-diagonal and sum outputs
        return (di + cd + h) + cd + 2 * di, 4 * h * n + 3 * q * h + 4 * h * p * n // q + 4 * di
    if kind == "attention":
        return 3 * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim // 2 + c.n_heads * c.head_dim + c.d_model, 0
    return 0, 8 * c.d_model  # s4: real and complex FFT buffers of the convolution


def activation_bytes(config: ModelConfig, tokens: int, batch: int, dtype: str, context: int | None = None,
                     kernels: str = "fused") -> int:
    """Estimated peak working memory of prefilling `tokens` tokens (the whole prompt, or one chunk).

    batch * tokens * (residual stream + the widest per-token working set), where the working set is the largest
    of a mixer's intermediates (`_mixer_width`), a feed-forward's (3 d_ff + d_model for SwiGLU, 2 d_ff + d_model
    for GELU, per expert used) and the LM head's logits (ssmkit's prefill computes them at every position).
    kernels: "fused" for the GPU paths (Triton SSD keeping only chunk states and C B^T, attention without
    seqlen^2 scores), "torch" for ssmkit's torch paths on CPU (the chunked SSD's per-head B, C, decays and
    scores; the parallel selective scan's fixed chunk of states). A prefill chunk shorter than the context adds
    attention's chunk x context mask (bool, and the additive copy SDPA makes). With kernels="torch" and the
    prompt at once, the estimate is within [0.9, 1.15] x the measured peak of new tensors on CPU for the tiny
    presets at 1024 tokens (tested); with small prefill chunks fixed per-call costs make it less exact.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels: expected one of {list(KERNELS)}, got {kernels!r}")
    c, d, b = config, config.d_model, DTYPE_BYTES[dtype]
    ct = max(b, 4)  # intermediates of the SSM scans are float32 for half-precision models
    widest = (c.vocab_size + d) * b  # logits and the final norm's input
    # a chunk after the first attends over the cache through an explicit mask: bool plus SDPA's additive copy
    mask = context * (1 + b) if context is not None and tokens < context else 0
    for i, kind in enumerate(c.mixers):
        ff = c.feed_forwards[i]
        mats = 3 if c.mlp_activation == "swiglu" else 2  # gate and up (or up), the activation, the product
        ff_width = 0 if ff is None else (mats * c.d_ff + d) * (c.moe_top_k if ff == "moe" else 1)
        model_vals, scan_vals = _mixer_width(c, kind, kernels)
        widest = max(widest, model_vals * b + scan_vals * ct + (mask if kind == "attention" else 0), ff_width * b)
    residual = 2 * d * (4 if c.residual_in_fp32 else b)
    total = batch * tokens * (widest + residual)
    if "mamba" in c.mixers and kernels == "torch":
        total += 6 * ct * max(MAMBA_SCAN_STATES, batch * 64 * c.mamba_d_inner * c.mamba_d_state)
    return total


def plan_memory(config: ModelConfig, *, context: int, batch: int = 1, dtype="bf16", kv_dtype=None,
                prefill_chunk: int | None = None, gpu_memory_gb: float | None = None, name: str = "",
                kernels: str = "fused") -> MemoryPlan:
    """The MemoryPlan of `config` at `context` tokens (prompt plus output) for `batch` sequences.

    dtype: of the weights ('bf16', 'fp16', 'fp32', 'fp64' or torch names); kv_dtype: None (= dtype), 'int8' or
    'int4'; prefill_chunk: tokens per prefill chunk (None: the whole prompt at once); gpu_memory_gb (GiB, 2**30
    bytes): also find the longest context that fits it. kernels: "fused" (GPU) or "torch" (CPU) for the
    activation estimate (see activation_bytes).
    """
    for arg, value in (("context", context), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: expected an int >= 1, got {value!r}")
    if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int)
                                      or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk: expected None or an int >= 1, got {prefill_chunk!r}")
    if gpu_memory_gb is not None and not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb: expected a size > 0 in GiB, got {gpu_memory_gb!r}")
    dtype = dtype_name(dtype)
    kv = kv_dtype_name(kv_dtype, dtype)
    b = DTYPE_BYTES[dtype]
    kinds: dict[str, LayerKindMemory] = {}
    totals = [0, 0, 0, 0]
    for i, kind in enumerate(config.mixers):
        row = kinds.setdefault(kind, LayerKindMemory(kind, 0))
        row.layers += 1
        row.weights_bytes += layer_params(config, i) * b
        kv_b, mask_b, conv_b, ssm_b = layer_cache_bytes(config, i, context, batch, dtype, kv)
        row.kv_bytes += kv_b
        row.conv_bytes += conv_b
        row.ssm_bytes += ssm_b
        totals = [t + v for t, v in zip(totals, (kv_b, mask_b, conv_b, ssm_b))]
    params = model_params(config)
    embed = (params - sum(layer_params(config, i) for i in range(config.n_layers))) * b
    tokens = min(prefill_chunk or context, context)
    plan = MemoryPlan(name=name, context=context, batch=batch, dtype=dtype, kv_dtype=kv,
                      per_kind=list(kinds.values()), embedding_bytes=embed, weights_bytes=params * b, params=params,
                      kv_bytes=totals[0], kv_mask_bytes=totals[1], conv_bytes=totals[2], ssm_bytes=totals[3],
                      activation_bytes=activation_bytes(config, tokens, batch, dtype, context, kernels),
                      prefill_tokens=tokens, kernels=kernels)
    if gpu_memory_gb is not None:
        plan.gpu_memory_bytes = int(gpu_memory_gb * 2**30)
        plan.max_context = max_context(config, plan.gpu_memory_bytes, batch=batch, dtype=dtype, kv_dtype=kv,
                                       prefill_chunk=prefill_chunk, kernels=kernels)
        plan.chunked_prefill_tokens = prefill_chunk or DEFAULT_PREFILL_CHUNK
        plan.max_context_chunked = max_context(config, plan.gpu_memory_bytes, batch=batch, dtype=dtype,
                                               kv_dtype=kv, prefill_chunk=plan.chunked_prefill_tokens,
                                               kernels=kernels)
    return plan


def max_context(config: ModelConfig, memory_bytes: int, *, batch: int = 1, dtype="bf16", kv_dtype=None,
                prefill_chunk: int | None = None, kernels: str = "fused") -> int | None:
    """The longest context (tokens) whose planned total fits `memory_bytes`; 0 if not even one token fits;
    None when the total does not grow with the context (an SSM-only model with chunked prefill)."""
    def total(n: int) -> int:
        return plan_memory(config, context=n, batch=batch, dtype=dtype, kv_dtype=kv_dtype,
                           prefill_chunk=prefill_chunk, kernels=kernels).total_bytes

    if total(1) > memory_bytes:
        return 0
    if total(MAX_SEARCH_CONTEXT) <= memory_bytes:
        return None if total(MAX_SEARCH_CONTEXT) == total(MAX_SEARCH_CONTEXT // 2) else MAX_SEARCH_CONTEXT
    lo, hi = 1, MAX_SEARCH_CONTEXT  # total(lo) fits, total(hi) does not; the total never shrinks as n grows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= memory_bytes else (lo, mid)
    return lo


def load_config(spec) -> tuple[str, ModelConfig]:
    """(name, ModelConfig) from a preset name, a config.json file, or a checkpoint folder holding one.

    Raises ValueError naming the spec for an unknown preset, and (through ssmkit.io) for a config.json of an
    unsupported family (the message lists the supported model_type values).
    """
    from ssmkit.io.hf_config import config_from_hf

    if isinstance(spec, ModelConfig):
        return "config", spec
    spec = str(spec)
    if spec in PRESETS:
        return spec, ModelConfig.from_name(spec)
    path = Path(spec)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        hint = f"no config.json in folder {path}" if path.is_dir() else "no such file or preset"
        raise ValueError(f"config: {spec!r} is not a preset, a config.json or a checkpoint folder ({hint}); presets: "
                         f"{', '.join(sorted(PRESETS))}")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(hf).__name__}")
    try:
        _, config = config_from_hf(hf)
    except (KeyError, TypeError, ValueError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{file}: {what}") from None
    return (path.name if path.is_dir() else path.parent.name or file.stem), config


def format_bytes(n: int | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB, TiB) with three significant digits, and in decimal GB above 1 GB."""
    if n is None:
        return "n/a"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            text = f"{_sig3(n / size)} {unit}"
            return text + (f" ({_sig3(n / 1e9)} GB)" if n >= 1e9 else "")
    return f"{n} B"


def format_plan(plan: MemoryPlan) -> str:
    """A per-layer-kind table, the totals, and the longest context that fits (when a memory size was given)."""
    from .table import markdown_table

    head = (f"{plan.name or 'model'}: {plan.params:,} parameters, context {plan.context:,} tokens, batch "
            f"{plan.batch}, weights {plan.dtype}, KV cache {plan.kv_dtype}")
    rows = [[k.kind, k.layers, format_bytes(k.weights_bytes), format_bytes(k.kv_bytes), format_bytes(k.conv_bytes),
             format_bytes(k.ssm_bytes)] for k in plan.per_kind]
    table = markdown_table(["layer kind", "layers", "weights", "KV cache (K+V)", "conv state", "SSM state"], rows)
    chunk = (f"prefill of {plan.prefill_tokens:,} tokens at once" if plan.prefill_tokens == plan.context
             else f"chunked prefill, {plan.prefill_tokens:,} tokens per chunk")
    lines = [head, "", table, "",
             f"weights:     {format_bytes(plan.weights_bytes)} (embeddings, LM head, final norm: "
             f"{format_bytes(plan.embedding_bytes)})",
             f"KV cache:    {format_bytes(plan.kv_bytes)} (+ {format_bytes(plan.kv_mask_bytes)} key masks)",
             f"SSM state:   {format_bytes(plan.conv_bytes + plan.ssm_bytes)} (conv {format_bytes(plan.conv_bytes)}, "
             f"ssm {format_bytes(plan.ssm_bytes)}; does not grow with the context)",
             f"activations: {format_bytes(plan.activation_bytes)} (estimate: {chunk}, {plan.kernels} kernels)",
             f"total:       {format_bytes(plan.total_bytes)}"]
    if plan.gpu_memory_bytes is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"GPU memory:  {format_bytes(plan.gpu_memory_bytes)}: this context {verdict}")
        def longest(n):
            return "no limit (memory does not grow with the context)" if n is None else f"{n:,} tokens"

        how = "at once" if plan.prefill_tokens == plan.context else f"in chunks of {plan.prefill_tokens:,}"
        text = f"longest context that fits at batch {plan.batch}: {longest(plan.max_context)} (prefill {how})"
        if plan.chunked_prefill_tokens != plan.prefill_tokens:
            text += (f"; {longest(plan.max_context_chunked)} (prefill in chunks of "
                     f"{plan.chunked_prefill_tokens:,})")
        lines.append(text)
    return "\n".join(lines + plan.notes)


def _sig3(x: float) -> str:
    """About three significant digits without exponent notation: 1000 -> '1000', 12.345 -> '12.3'."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"
