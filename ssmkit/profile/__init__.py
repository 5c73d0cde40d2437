"""Per-layer profiling: every mixer and feed-forward call of a model recorded into an SQL trace store (DuckDB),
analysed by layer type, compared with baselines, and acted on (MoE router bias, what-if scheduling).
"""

from .events import LAYER_TYPES, PHASES, LayerEvent, MoERouting
from .recorder import Profiler
from .schema import SCHEMA_VERSION
from .store import SqlError, TraceStore

__all__ = ["Profiler", "TraceStore", "LayerEvent", "MoERouting", "LAYER_TYPES", "PHASES", "SCHEMA_VERSION",
           "SqlError"]
