"""One dataclass describes every ssmkit language model: a stack of pre-norm blocks, each a mixer and a feed-forward.

A hybrid is a per-layer pattern (`mixers`, `feed_forwards`), not a subclass. Presets are a dict of overrides
(`PRESETS`, `ModelConfig.from_name`); `hybrid_pattern` spreads attention layers evenly as in Jamba and Mamba-2-Hybrid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MIXERS = ("mamba", "mamba2", "attention", "s4")
FEED_FORWARDS = (None, "mlp", "moe")
MLP_ACTIVATIONS = ("swiglu", "gelu")
S4_DISCRETIZATIONS = ("zoh", "bilinear", "euler")


@dataclass
class ModelConfig:
    """Fields are grouped by the layer that reads them; `None` fields are derived in `__post_init__`.

    `mixers` and `feed_forwards` are per-layer lists; a single string (or None for feed_forwards) is repeated
    over `n_layers`. Mamba-1 fields start with `mamba_`, Mamba-2 fields with `mamba2_`, S4 fields with `s4_`.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    mixers: list | str = "mamba2"
    feed_forwards: list | str | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    residual_in_fp32: bool = False  # keep the residual stream in float32 (Mamba / Mamba-2 checkpoints do)
    # Mamba-1 (selective scan)
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | None = None  # None: ceil(d_model / 16), as in the Mamba paper
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_inner_norms: bool = False  # Jamba's RMSNorms on dt, B and C
    # Mamba-2 (SSD)
    mamba2_d_state: int = 128
    mamba2_headdim: int = 64
    mamba2_ngroups: int = 1
    mamba2_chunk_size: int = 256
    mamba2_d_conv: int = 4
    mamba2_expand: int = 2
    mamba2_conv_bias: bool = True
    mamba2_proj_bias: bool = False
    mamba2_norm_per_group: bool = True  # gated RMSNorm over each group's d_inner / ngroups slice (transformers)
    mamba2_dt_limit: tuple = (0.0, math.inf)
    # Attention
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (multi-head); fewer: grouped-query attention
    head_dim: int | None = None  # None: d_model // n_heads
    use_rope: bool = True  # Jamba's attention layers use no positional encoding at all
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0  # rotate the first head_dim * factor dims (Bamba: 0.5)
    attn_bias: bool = False
    # MLP and MoE experts
    d_ff: int | None = None  # None: 8/3 d_model rounded up to 64 for swiglu, 4 d_model for gelu
    mlp_activation: str = "swiglu"
    mlp_bias: bool = False
    n_experts: int = 8
    moe_top_k: int = 2
    moe_capacity_factor: float | None = None  # None: no token dropping (applied only in training mode)
    moe_aux_loss_coef: float = 0.01
    moe_renormalize: bool = False  # renormalize the top-k probabilities (Mixtral) or keep them (Jamba)
    # S4 (LTI, HiPPO-LegS)
    s4_d_state: int = 64
    s4_dt_min: float = 1e-3
    s4_dt_max: float = 1e-1
    s4_discretization: str = "zoh"
    # Token ids the tokenizer and generation agree on (metadata, not architecture)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        _check_positive(self, "vocab_size", "d_model", "n_layers")
        self.mixers = _per_layer(self.mixers, self.n_layers, "mixers")
        self.feed_forwards = _per_layer(self.feed_forwards, self.n_layers, "feed_forwards")
        for i, kind in enumerate(self.mixers):
            if kind not in MIXERS:
                raise ValueError(f"mixers[{i}]: expected one of {list(MIXERS)}, got {kind!r}")
        for i, kind in enumerate(self.feed_forwards):
            if kind not in FEED_FORWARDS:
                raise ValueError(f"feed_forwards[{i}]: expected one of {list(FEED_FORWARDS)}, got {kind!r}")
        self.mamba2_dt_limit = tuple(float(v) for v in self.mamba2_dt_limit)
        if "mamba" in self.mixers:
            self._check_mamba()
        if "mamba2" in self.mixers:
            self._check_mamba2()
        if "attention" in self.mixers:
            self._check_attention()
        if "s4" in self.mixers:
            _check_positive(self, "s4_d_state")
            if self.s4_discretization not in S4_DISCRETIZATIONS:
                raise ValueError(f"s4_discretization: expected one of {list(S4_DISCRETIZATIONS)}, "
                                 f"got {self.s4_discretization!r}")
        if any(self.feed_forwards):
            self._check_feed_forward()

    def _check_mamba(self):
        _check_positive(self, "mamba_d_state", "mamba_d_conv", "mamba_expand")
        if self.mamba_dt_rank is None:
            self.mamba_dt_rank = math.ceil(self.d_model / 16)
        _check_positive(self, "mamba_dt_rank")

    def _check_mamba2(self):
        _check_positive(self, "mamba2_d_state", "mamba2_headdim", "mamba2_ngroups", "mamba2_chunk_size",
                        "mamba2_d_conv", "mamba2_expand")
        d_inner = self.mamba2_d_inner
        if d_inner % self.mamba2_headdim != 0:
            raise ValueError(f"mamba2_headdim: d_inner = mamba2_expand * d_model = {d_inner} must be divisible by "
                             f"mamba2_headdim, got mamba2_headdim={self.mamba2_headdim}")
        nheads = d_inner // self.mamba2_headdim
        if nheads % self.mamba2_ngroups != 0:
            raise ValueError(f"mamba2_ngroups: nheads = {nheads} must be divisible by mamba2_ngroups, "
                             f"got mamba2_ngroups={self.mamba2_ngroups}")
        lo, hi = self.mamba2_dt_limit
        if not 0.0 <= lo <= hi:
            raise ValueError(f"mamba2_dt_limit: expected (lo, hi) with 0 <= lo <= hi, got {self.mamba2_dt_limit}")

    def _check_attention(self):
        _check_positive(self, "n_heads")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _check_positive(self, "n_kv_heads")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_kv_heads: n_heads = {self.n_heads} must be divisible by n_kv_heads, "
                             f"got n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(f"n_heads: d_model = {self.d_model} must be divisible by n_heads when head_dim "
                                 f"is not given, got n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        _check_positive(self, "head_dim")
        if self.use_rope and (not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2 != 0):
            raise ValueError(f"partial_rotary_factor: expected 0 < factor <= 1 giving an even rotary_dim "
                             f"(head_dim * factor), got {self.partial_rotary_factor} -> {self.rotary_dim}")

    def _check_feed_forward(self):
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation: expected one of {list(MLP_ACTIVATIONS)}, got {self.mlp_activation!r}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp_activation == "gelu" else _round_up(8 * self.d_model // 3, 64)
        _check_positive(self, "d_ff")
        if "moe" in self.feed_forwards:
            _check_positive(self, "n_experts", "moe_top_k")
            if self.moe_top_k > self.n_experts:
                raise ValueError(f"moe_top_k: expected at most n_experts = {self.n_experts}, got {self.moe_top_k}")
            if self.mlp_activation != "swiglu":
                raise ValueError(f"mlp_activation: MoE experts are SwiGLU, expected 'swiglu' with a 'moe' layer, "
                                 f"got {self.mlp_activation!r}")
            if self.moe_capacity_factor is not None and self.moe_capacity_factor <= 0:
                raise ValueError(f"moe_capacity_factor: expected None or > 0, got {self.moe_capacity_factor}")

    # Derived sizes (properties, so they never go stale when a field is replaced)
    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_expand * self.d_model

    @property
    def mamba2_d_inner(self) -> int:
        return self.mamba2_expand * self.d_model

    @property
    def mamba2_nheads(self) -> int:
        return self.mamba2_d_inner // self.mamba2_headdim

    @property
    def mamba2_conv_dim(self) -> int:
        return self.mamba2_d_inner + 2 * self.mamba2_ngroups * self.mamba2_d_state

    @property
    def mamba2_norm_group_size(self) -> int:
        return self.mamba2_d_inner // self.mamba2_ngroups if self.mamba2_norm_per_group else self.mamba2_d_inner

    @property
    def rotary_dim(self) -> int:
        return int((self.head_dim or 0) * self.partial_rotary_factor)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown ModelConfig fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A preset from `PRESETS`, with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"name: expected one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})


def hybrid_pattern(n_layers: int, attn_share: float = 0.1, moe_every: int | None = None, *,
                   ssm: str = "mamba2", ffn: str | None = "mlp") -> dict:
    """Per-layer kinds for an SSM/attention hybrid, as overrides for ModelConfig.

    round(n_layers * attn_share) attention layers (at least one when attn_share > 0) sit in the middle of equal
    segments: layer floor((j + 1/2) n_layers / n_attn) for j < n_attn (8 layers with one attention layer puts it at
    index 4, Jamba's attn_layer_offset). With moe_every=k, layer i gets an MoE feed-forward when i % k == k - 1
    (Jamba: every second layer, from layer 1); the other layers get `ffn`.
    Returns {"n_layers", "mixers", "feed_forwards"}.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
    if not 0.0 <= attn_share <= 1.0:
        raise ValueError(f"attn_share: expected 0 <= attn_share <= 1, got {attn_share}")
    if moe_every is not None and moe_every < 1:
        raise ValueError(f"moe_every: expected None or >= 1, got {moe_every}")
    n_attn = 0 if attn_share == 0 else max(1, round(n_layers * attn_share))
    attn = {int((j + 0.5) * n_layers / n_attn) for j in range(n_attn)}
    mixers = ["attention" if i in attn else ssm for i in range(n_layers)]
    ffs = ["moe" if moe_every and i % moe_every == moe_every - 1 else ffn for i in range(n_layers)]
    return {"n_layers": n_layers, "mixers": mixers, "feed_forwards": ffs}


def _per_layer(value, n_layers: int, name: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(f"{name}: expected {n_layers} entries (n_layers), got {len(value)}: {value}")
    return value


def _check_positive(cfg, *names):
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


_TINY = dict(vocab_size=256, d_model=64, n_layers=2, norm_eps=1e-5)
_GPT2_VOCAB = 50280  # GPT-NeoX tokenizer (50277) padded to a multiple of 8, as the Mamba checkpoints store it
_MAMBA = dict(mixers="mamba", vocab_size=_GPT2_VOCAB, tie_embeddings=True, residual_in_fp32=True)
_MAMBA2 = dict(mixers="mamba2", vocab_size=50288, tie_embeddings=True, residual_in_fp32=True,
               mamba2_d_state=128, mamba2_headdim=64)
_LLAMA = dict(mixers="attention", feed_forwards="mlp", vocab_size=_GPT2_VOCAB, rope_theta=10000.0)
_HYBRID = dict(vocab_size=_GPT2_VOCAB, mamba2_d_state=128, mamba2_headdim=64)

PRESETS: dict[str, dict] = {
    "tiny-mamba": {**_TINY, "mixers": "mamba", "mamba_d_state": 16},
    "tiny-mamba2": {**_TINY, "mixers": "mamba2", "mamba2_d_state": 16, "mamba2_headdim": 16,
                    "mamba2_chunk_size": 16},
    "tiny-llama": {**_TINY, "mixers": "attention", "feed_forwards": "mlp", "n_heads": 4, "n_kv_heads": 2,
                   "d_ff": 128},
    "tiny-hybrid-moe": {**_TINY, **hybrid_pattern(4, attn_share=0.25, moe_every=2), "mamba2_d_state": 16,
                        "mamba2_headdim": 16, "mamba2_chunk_size": 16, "n_heads": 4, "n_kv_heads": 2,
                        "d_ff": 128, "n_experts": 4, "moe_top_k": 2},
    "tiny-s4": {**_TINY, "mixers": "s4", "feed_forwards": "mlp", "mlp_activation": "gelu", "s4_d_state": 16},
    "mamba-130m": {**_MAMBA, "d_model": 768, "n_layers": 24},
    "mamba-370m": {**_MAMBA, "d_model": 1024, "n_layers": 48},
    "mamba-1.4b": {**_MAMBA, "d_model": 2048, "n_layers": 48},
    "mamba2-130m": {**_MAMBA2, "d_model": 768, "n_layers": 24},
    "mamba2-370m": {**_MAMBA2, "d_model": 1024, "n_layers": 48},
    "mamba2-1.3b": {**_MAMBA2, "d_model": 2048, "n_layers": 48},
    "llama-125m": {**_LLAMA, "d_model": 768, "n_layers": 12, "n_heads": 12},
    "llama-350m": {**_LLAMA, "d_model": 1024, "n_layers": 24, "n_heads": 16},
    "llama-1.3b": {**_LLAMA, "d_model": 2048, "n_layers": 24, "n_heads": 16},
    "hybrid-130m": {**_HYBRID, **hybrid_pattern(24, 0.1, ffn=None), "d_model": 768, "n_heads": 12},
    "hybrid-370m": {**_HYBRID, **hybrid_pattern(48, 0.1, ffn=None), "d_model": 1024, "n_heads": 16},
    "hybrid-1.3b": {**_HYBRID, **hybrid_pattern(48, 0.1, ffn=None), "d_model": 2048, "n_heads": 16},
    "hybrid-moe-1.3b": {**_HYBRID, **hybrid_pattern(24, 0.1, moe_every=2), "d_model": 1024, "n_heads": 16,
                        "n_experts": 8, "moe_top_k": 2},
}
