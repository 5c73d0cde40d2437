"""Are the CUDA-graph and the eager decode steps equally accurate? Teacher-forced over the same tokens, per preset
(random weights, bf16, a 256-token prompt then 32 fixed tokens): the worst relative RMS difference of the logits
between the graph step, the eager step and the eager step of a float32 copy of the model, and how often each bf16
path's argmax equals float32's. Greedy token agreement alone cannot tell a kernel error from bf16 rounding on
random-weight models, whose logits are nearly flat.

    python3 benchmarks/decode_agreement_gpu.py [hybrid-130m,llama-125m,hybrid-1.3b]     # needs a CUDA device
"""

from __future__ import annotations

import argparse
import copy

import torch

from ssmkit.bench.scripts import random_model
from ssmkit.inference import allocate_cache
from ssmkit.inference.generate import prefill
from ssmkit.inference.graph_registry import graphed_decoder, release_decoder

PROMPT, STEPS, CACHE = 256, 32, 512


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()


@torch.no_grad()
def compare(preset: str, device: torch.device) -> str:
    model = random_model(preset, device, torch.bfloat16)
    reference = copy.deepcopy(model).float()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(PROMPT)).to(device)
    tokens = torch.randint(0, vocab, (STEPS,), generator=torch.Generator().manual_seed(1)).to(device)
    decoder = graphed_decoder(model, 1, CACHE)
    decoder.reset()
    prefill(model, ids, decoder.state)
    decoder.start(PROMPT)
    eager, fp32 = allocate_cache(model, 1, CACHE), allocate_cache(reference, 1, CACHE)
    prefill(model, ids, eager)
    prefill(reference, ids, fp32)
    worst = {"graph-eager": 0.0, "graph-fp32": 0.0, "eager-fp32": 0.0}
    agree = {"graph": 0, "eager": 0}
    for t in range(STEPS):
        tok = tokens[t:t + 1]
        g = decoder.step(tok).float().clone()
        e = model.step(tok, eager).float()
        f = reference.step(tok, fp32).float()
        for key, (a, b) in {"graph-eager": (g, e), "graph-fp32": (g, f), "eager-fp32": (e, f)}.items():
            worst[key] = max(worst[key], rel_rms(a, b))
        agree["graph"] += int(g.argmax() == f.argmax())
        agree["eager"] += int(e.argmax() == f.argmax())
    captured = decoder.captured
    release_decoder(model, decoder)
    return (f"{preset}: captured={captured}; worst rel RMS logits: "
            + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
            + f"; argmax = float32: graph {agree['graph']}/{STEPS}, eager {agree['eager']}/{STEPS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="?", default="hybrid-130m,llama-125m,hybrid-1.3b",
                        help="comma-separated ModelConfig presets")
    for name in parser.parse_args().presets.split(","):
        print(compare(name, torch.device("cuda")), flush=True)
        torch.cuda.empty_cache()
