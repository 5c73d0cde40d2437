"""nn.Module layers: the Mamba, Mamba-2, attention and S4 mixers, MLP and MoE feed-forwards, RMSNorms.

Every mixer has `allocate_state(batch, max_len, dtype, device)`, `forward(x, state=None, key_padding_mask=None, *,
cu_seqlens=None)` and `step(x, state)`; its decode state is the small dataclass defined beside it.
"""

from .attention import Attention, AttentionState
from .mamba import Mamba, MambaState
from .mamba2 import Mamba2, Mamba2State
from .mlp import MLP
from .moe import MoE
from .norm import GatedRMSNorm, RMSNorm
from .s4 import S4, S4State

__all__ = ["Attention", "AttentionState", "Mamba", "MambaState", "Mamba2", "Mamba2State", "MLP", "MoE",
           "GatedRMSNorm", "RMSNorm", "S4", "S4State"]
