"""Generation: a fixed-size decode cache (SSM states, KV caches), prefill and token-by-token decode, sampling,
batched generation of prompts of different lengths, CUDA-graph decode, and the `ssmkit generate` command's logic.
"""

from .batch import generate_batch, left_pad
from .cache import allocate_cache, cache_nbytes, cache_tensors
from .generate import GenerationStep, generate, generate_steps, prefill
from .graph_registry import clear_graphs, eager_only, graphed_decoder
from .graphs import GraphedDecoder
from .sampling import SamplingConfig, filtered_logits, next_token, top_k_filter, top_p_filter

__all__ = ["generate", "generate_steps", "generate_batch", "prefill", "GenerationStep", "left_pad",
           "allocate_cache", "cache_nbytes", "cache_tensors", "SamplingConfig", "filtered_logits", "next_token",
           "top_k_filter", "top_p_filter", "GraphedDecoder", "graphed_decoder", "clear_graphs", "eager_only"]
