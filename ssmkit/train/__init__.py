"""Training and evaluation: byte-level text and synthetic recall tasks, the Trainer (AdamW, warmup + cosine,
accumulation, clipping, bf16 autocast, atomic checkpoints that resume exactly), evaluation, and data, tensor
or sequence parallelism (parallel.py).

Command logic for `ssmkit train` and `ssmkit eval` is in ssmkit.train.commands.
"""

from .config import DataConfig, TrainConfig, model_config
from .data import Data
from .distributed import DistContext, init_distributed
from .evaluate import evaluate
from .packing import cu_seqlens_from_segments, packed_forward
from .synthetic import MQAR, InductionHeads, SelectiveCopy, make_task
from .trainer import NonFiniteLossError, Trainer, TrainResult

__all__ = ["DataConfig", "TrainConfig", "model_config", "Data", "DistContext", "init_distributed", "evaluate",
           "cu_seqlens_from_segments", "packed_forward", "MQAR", "InductionHeads", "SelectiveCopy", "make_task",
           "NonFiniteLossError", "Trainer", "TrainResult"]
