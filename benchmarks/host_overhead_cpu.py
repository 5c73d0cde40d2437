"""Host time of the per-call work on the way to a generate call's first token, before and after
ssmkit/inference/module_walk.py, on the CPU: the captured graphs' staleness check (a full parameters() /
buffers() walk against tensor_signature) and the switch to eval mode and back (model.eval() + model.train(was)
against eval_mode), plus how many launches zero a decoder's SSM state (one zero_() per tensor against one
torch._foreach_zero_). The models are built on the meta device: the Python work is that of the real model, with no
weights allocated. Median of --repeats blocks of --calls calls each.

    python benchmarks/host_overhead_cpu.py [--presets mamba2-1.3b,llama-1.3b] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmkit.bench.environment import markdown_header  # noqa: E402
from ssmkit.inference.cache import allocate_cache, cache_tensors  # noqa: E402
from ssmkit.inference.module_walk import eval_mode, tensor_signature  # noqa: E402
from ssmkit.models import LanguageModel, ModelConfig  # noqa: E402


def full_walk_signature(model) -> tuple:
    """The staleness check before module_walk.py (graph_registry._signature)."""
    return tuple(t.data_ptr() for t in model.parameters()) + tuple(t.data_ptr() for t in model.buffers())


def eval_and_back(model) -> None:
    """generate's mode switch before module_walk.py."""
    was = model.training
    model.eval()
    model.train(was)


def eval_mode_and_back(model) -> None:
    with eval_mode(model):
        pass


def ms_per_call(fn, model, calls: int, repeats: int) -> float:
    fn(model)  # the kept walk is made here, outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(model)
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="mamba2-130m,mamba2-1.3b,llama-1.3b,hybrid-1.3b")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="write the markdown here")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for preset in a.presets.split(","):
        with torch.device("meta"):
            model = LanguageModel(ModelConfig.from_name(preset))
            state = allocate_cache(model, 1, 16)
        ssm = [t for name, t in cache_tensors(state).items() if ".kv." not in name and not name.endswith("key_mask")]
        r = [preset, sum(1 for _ in model.modules()), sum(1 for _ in model.parameters())]
        for fn in (full_walk_signature, tensor_signature, eval_and_back, eval_mode_and_back):
            r.append(f"{ms_per_call(fn, model, a.calls, a.repeats):.3f}")
        r.append(f"{len(ssm)} -> {1 if ssm else 0}")
        rows.append(r)
        print(" | ".join(map(str, r)), flush=True)
    head = ["preset", "modules", "parameters", "signature: full walk (ms)", "tensor_signature (ms)",
            "eval() + train(was) (ms)", "eval_mode (ms)", "zeroing launches in reset"]
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                      + ["| " + " | ".join(map(str, r)) + " |" for r in rows])
    text = (markdown_header("Host time before the first token: the per-call checks, before and after module_walk")
            + f"- one torch thread; median of {a.repeats} blocks of {a.calls} calls; models on the meta device\n\n"
            + table + "\n")
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
