"""Training throughput on one GPU: ~125M-class Mamba-2, Transformer++ (llama) and a Mamba-2/attention hybrid at
context 2K and 8K, ssmkit side by side with the same models in transformers (its PyTorch path) on the same weights.

Per model: (1) validate: both losses on one batch in fp32, and the first bf16 step's loss at every context;
(2) time full training steps (bf16 autocast forward, fp32 cross-entropy, backward, grad clip, AdamW) on the same
batch, warm-up steps untimed, CUDA synchronized around each step, median over the timed steps. Out of memory is
recorded as a result. Writes benchmarks/results/train-throughput-<device>-<date>.md and prints a table last.

    python benchmarks/train_throughput_gpu.py [--budget-s 380] [--tokens-per-step 16384] [--out DIR]
    python benchmarks/train_throughput_gpu.py --tiny     # a CPU dry run on tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ssmkit.bench.scripts import free, log, sync
from ssmkit.bench.environment import describe_environment, markdown_header
from ssmkit.bench.hf_runner import load_transformers_twin, transformers_family
from ssmkit.bench.table import fmt_number, markdown_table
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.models.config import hybrid_pattern
from ssmkit.train.optim import build_optimizer

H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM, dense bf16 tensor cores (no sparsity): the MFU denominator
# A hybrid that transformers' Bamba computes (mixer + SwiGLU MLP per layer, half-rotary attention), so it has a
# twin; ssmkit's own hybrid-130m preset (no MLPs) has none.
HYBRID_125M = dict(vocab_size=50280, d_model=768, **hybrid_pattern(12, 1 / 6, ffn="mlp"), d_ff=2048, n_heads=12,
                   partial_rotary_factor=0.5, mamba2_d_state=128, mamba2_headdim=64)
HYBRID_TINY = dict(vocab_size=256, d_model=64, **hybrid_pattern(4, 0.25, ffn="mlp"), d_ff=128, n_heads=4,
                   partial_rotary_factor=0.5, mamba2_d_state=16, mamba2_headdim=16, mamba2_chunk_size=16)
MODELS = {"mamba2-130m": "mamba2-130m", "transformer-125m": "llama-125m", "hybrid-125m": HYBRID_125M}
TINY = {"mamba2-tiny": "tiny-mamba2", "transformer-tiny": "tiny-llama", "hybrid-tiny": HYBRID_TINY}


@dataclasses.dataclass
class Settings:
    """What one run measures; parsed from the command line."""

    models: dict
    contexts: tuple
    tokens_per_step: int
    warmup: int
    steps: int
    budget_s: float
    device: str
    autocast: bool
    out: str
    transformers: bool


@dataclasses.dataclass
class Result:
    """One (model, framework, context) measurement; status ok | oom | error | skipped."""

    model: str
    framework: str
    context: int
    batch: int
    status: str = "ok"
    step_ms: float | None = None
    steps_timed: int = 0
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    first_loss: float | None = None
    error: str = ""








def build_config(spec) -> ModelConfig:
    return ModelConfig.from_name(spec) if isinstance(spec, str) else ModelConfig(**spec)


def matmul_params(model: LanguageModel) -> int:
    """Parameters that take part in a matmul per token: all of them, less the input embedding table when it is
    not tied to the LM head (a lookup, no flops)."""
    total = sum(p.numel() for p in model.parameters())
    return total if model.config.tie_embeddings else total - model.embeddings.weight.numel()


def flops_per_token(config: ModelConfig, n_params: int, context: int) -> float:
    """Training flops per token: 6 N (forward 2 N, backward 4 N) plus, per attention layer, the causal score and
    value products, 6 * n_heads * head_dim * context (half of PaLM's 12 L H Q T, as only j <= i is computed).
    The SSM scan's own flops (Mamba-2 chunked SSD outside its projections) are not counted."""
    n_attn = sum(kind == "attention" for kind in config.mixers)
    head_dim = config.head_dim or config.d_model // config.n_heads
    return 6 * n_params + 6 * n_attn * config.n_heads * head_dim * context


def make_batch(vocab: int, batch: int, context: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (seed 1) as (inputs, labels), both (batch, context): labels are the next tokens."""
    ids = torch.randint(0, vocab, (batch, context + 1), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    return ids[:, :-1], ids[:, 1:]


def train_step(forward, optimizer, params, inputs, labels, autocast: bool) -> torch.Tensor:
    """One optimizer step as ssmkit's Trainer takes it: logits under bf16 autocast, cross-entropy in fp32 outside
    it, backward, clip to norm 1, AdamW, gradients cleared. Returns the loss (a device scalar)."""
    context = torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=autocast)
    with context:
        logits = forward(inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def fp32_loss(forward, inputs, labels) -> float:
    with torch.no_grad():
        logits = forward(inputs)
    return float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)))


def measure(side: dict, context: int, s: Settings, deadline: float, hard_deadline: float) -> Result:
    """Times training steps of one framework's model at one context, starting from the initial weights. Past
    `deadline` it stops once 3 steps are timed; past `hard_deadline` (the whole run's budget) at once."""
    device = torch.device(s.device)
    batch = max(1, s.tokens_per_step // context)
    result = Result(side["model"], side["framework"], context, batch)
    if time.time() > deadline:
        result.status = "skipped"
        result.error = "time budget"
        return result
    model = side["module"]
    model.load_state_dict(side["initial"])
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    inputs, labels = make_batch(side["vocab"], batch, context, device)
    times: list[float] = []
    failure = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for i in range(s.warmup + s.steps):
            sync(device)
            start = time.perf_counter()
            loss = train_step(side["forward"], optimizer, params, inputs, labels, s.autocast)
            sync(device)
            if i == 0:
                result.first_loss = float(loss)
            if i >= s.warmup:
                times.append(time.perf_counter() - start)
            now = time.time()
            if (now > deadline and len(times) >= 3) or now > hard_deadline:
                break
    except torch.OutOfMemoryError as err:
        failure = ("oom", str(err).split("\n")[0][:160])
    except Exception as err:  # noqa: BLE001 - any failure is a result of the run, not the end of it
        failure = ("error", f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
    del optimizer
    model.zero_grad(set_to_none=True)
    model.to("cpu")
    free(device)
    if failure is not None:
        result.status, result.error = failure
    elif not times:
        result.status, result.error = "skipped", "time budget ran out before the first timed step"
    if times:
        result.steps_timed = len(times)
        result.step_ms = statistics.median(times) * 1e3
        result.tokens_per_s = batch * context / statistics.median(times)
        if device.type == "cuda":
            result.mfu = side["flops"](context) * result.tokens_per_s / H100_BF16_DENSE_FLOPS
    if device.type == "cuda":
        result.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def prepare(label: str, spec, s: Settings, tmp: Path) -> tuple[list[dict], dict]:
    """The ssmkit model (seed 0, fp32 weights on the CPU) and, where transformers has the family, its twin from
    the same saved weights; validation: both fp32 losses on one (1, 256)-token batch."""
    config = build_config(spec)
    torch.manual_seed(0)
    model = LanguageModel(config)
    n = matmul_params(model)
    flops = lambda context: flops_per_token(config, n, context)  # noqa: E731
    sides = [{"model": label, "framework": "ssmkit", "module": model, "forward": model, "vocab": config.vocab_size,
              "initial": {k: v.clone() for k, v in model.state_dict().items()}, "flops": flops}]
    family = transformers_family(config)
    check = {"model": label, "family": family or "none", "params": sum(p.numel() for p in model.parameters()),
             "matmul_params": n}
    if family is None or not s.transformers:
        return sides, check
    hf = load_transformers_twin(model, tmp / label, device="cpu", dtype=torch.float32)
    hf_forward = lambda ids: hf(input_ids=ids, use_cache=False).logits  # noqa: E731
    sides.append({"model": label, "framework": "transformers", "module": hf, "forward": hf_forward,
                  "vocab": config.vocab_size, "initial": {k: v.clone() for k, v in hf.state_dict().items()},
                  "flops": flops})
    check["hf_params"] = sum(p.numel() for p in hf.parameters())
    device = torch.device(s.device)
    inputs, labels = make_batch(config.vocab_size, 1, 256, device)
    losses = []
    for side in sides:
        side["module"].to(device).train()
        losses.append(fp32_loss(side["forward"], inputs, labels))
        side["module"].to("cpu")
    free(device)
    check.update(ssmkit_fp32=losses[0], transformers_fp32=losses[1], fp32_diff=abs(losses[0] - losses[1]))
    return sides, check


def hf_kernels() -> str:
    """Whether transformers could take its fused paths (mamba_ssm / causal_conv1d installed): the comparison is
    meant against its PyTorch path."""
    found = [name for name in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(name) is not None]
    return ("none installed: PyTorch path" if not found else
            f"{', '.join(found)} installed: transformers may have used them (not its PyTorch path)")


def device_slug(env: dict, device: str) -> str:
    if device != "cuda":
        return "cpu"
    name = env["device"].lower()
    for short in ("h200", "h100", "a100", "l40s"):
        if short in name:
            return short
    return name.replace(" ", "-")


def write_results(results: list[Result], checks: list[dict], notes: list[str], s: Settings, env: dict,
                  started: float) -> Path:
    path = Path(s.out) / f"train-throughput-{device_slug(env, s.device)}-{datetime.date.today().isoformat()}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    first = {(r.model, r.framework, r.context): r.first_loss for r in results}
    valid = []
    for c in checks:
        row = [c["model"], c["family"], f"{c['params'] / 1e6:.1f}", f"{c['matmul_params'] / 1e6:.1f}"]
        if "fp32_diff" in c:
            row += [f"{c['ssmkit_fp32']:.5f}", f"{c['transformers_fp32']:.5f}", f"{c['fp32_diff']:.2e}"]
        else:
            row += ["n/a"] * 3
        for context in s.contexts:
            a, b = first.get((c["model"], "ssmkit", context)), first.get((c["model"], "transformers", context))
            row.append("n/a" if a is None or b is None else f"{a:.4f} / {b:.4f} ({abs(a - b):.1e})")
        valid.append(row)
    precision = "bf16 autocast" if s.autocast else "fp32"
    text = "\n\n".join([
        markdown_header("Training throughput: ssmkit vs transformers on the same weights", env),
        f"Models: random weights (seed 0) kept in fp32, {precision} forward, cross-entropy in fp32, backward, "
        f"gradient clipping at 1, AdamW (ssmkit.train.optim.build_optimizer, the Trainer's: foreach=False, lr "
        f"3e-4, wd 0.1) for both frameworks. Each context gets batch = {s.tokens_per_step} // context rows of random "
        f"token ids (the same batch for both), weights reset to the initial ones; untimed warm-up steps: "
        f"{s.warmup}, then up to {s.steps} timed steps, each between two device synchronizations; step time = median. "
        f"ssmkit: LanguageModel (Triton SSD on CUDA, SDPA attention). transformers: AutoModelForCausalLM from "
        f"ssmkit.io.save_pretrained's files (mamba2, llama, bamba), `use_cache=False`; its fused kernels: "
        f"{hf_kernels()}. MFU = flops/token x tokens/s / {H100_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s (H100 SXM "
        f"dense bf16 peak); flops/token = 6 N + 6 x n_attn_layers x n_heads x head_dim x context (causal "
        f"attention scores and values, fwd + bwd), N = parameters in matmuls (all, less an untied input "
        f"embedding); the SSD scan's own flops are not counted, so Mamba-2 MFU is a lower bound. Wall time "
        f"{time.time() - started:.0f} s.",
        "## Validation (same weights and batch)\n\n" + markdown_table(
            ["model", "transformers family", "params M", "matmul params M", "ssmkit fp32 loss",
             "transformers fp32 loss", "abs diff"] + [f"first step loss at {c}: ssmkit / transformers "
                                                      f"(abs diff)" for c in s.contexts], valid, right_align_from=2),
        "## Throughput\n\n" + results_table(results),
        "## Notes\n\n" + "\n".join(f"- {n}" for n in notes or ["none"])])
    path.write_text(text + "\n", encoding="utf-8")
    return path


def results_table(results: list[Result]) -> str:
    rows = [[r.model, r.framework, r.context, r.batch,
             fmt_number(r.tokens_per_s, 4) if r.status == "ok" else r.status.upper(),
             fmt_number(r.step_ms), "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%", fmt_number(r.peak_gib),
             r.steps_timed, r.error[:80]] for r in results]
    return markdown_table(["model", "framework", "context", "batch", "tokens/s", "step ms", "MFU", "peak GiB",
                           "timed steps", "note"], rows, right_align_from=2)


def parse(argv=None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated labels (default: all)")
    p.add_argument("--contexts", default="2048,8192")
    p.add_argument("--tokens-per-step", type=int, default=16384)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=380.0, help="start no measurement after this long")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: tiny models, contexts 64 and 128")
    p.add_argument("--no-transformers", action="store_true", help="ssmkit only")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    models = TINY if a.tiny else MODELS
    if a.models:
        unknown = sorted(set(a.models.split(",")) - set(models))
        if unknown:
            p.error(f"--models: unknown {unknown}; expected from {sorted(models)}")
        models = {k: models[k] for k in a.models.split(",")}
    device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    contexts = (64, 128) if a.tiny else tuple(int(c) for c in a.contexts.split(","))
    tokens = 256 if a.tiny else a.tokens_per_step
    warmup, steps = (1, 3) if a.tiny else (a.warmup, a.steps)
    return Settings(models, contexts, tokens, warmup, steps, a.budget_s, device, autocast=device == "cuda",
                    out=a.out, transformers=not a.no_transformers)


def main(argv=None) -> int:
    s = parse(argv)
    env, started = describe_environment(), time.time()
    results, checks, notes = [], [], []
    if s.device != "cuda":
        notes.append("not on CUDA: fp32, no autocast, no MFU (a dry run of the script, not a measurement)")
    with tempfile.TemporaryDirectory(prefix="ssmkit-train-throughput-") as tmp:
        prepared = []
        for label, spec in s.models.items():
            log(f"{label}: building and validating")
            sides, check = prepare(label, spec, s, Path(tmp))
            prepared.append(sides)
            checks.append(check)
            if check.get("hf_params", check["params"]) != check["params"]:
                notes.append(f"{label}: transformers holds {check['hf_params']} parameters, ssmkit {check['params']}")
            if "fp32_diff" in check and not check["fp32_diff"] <= 1e-3 * max(1.0, abs(check["ssmkit_fp32"])):
                notes.append(f"{label}: VALIDATION FAILED, fp32 losses differ by {check['fp32_diff']:.2e}")
            log(f"{label}: {check}")
        jobs = [(side, c) for c in s.contexts for sides in prepared for side in sides]
        for i, (side, context) in enumerate(jobs):
            left = started + s.budget_s - time.time()
            deadline = time.time() + left / (len(jobs) - i)
            log(f"{side['model']} {side['framework']} context {context}: {left:.0f} s left")
            r = measure(side, context, s, deadline, started + s.budget_s)
            log(f"  {r.status} {fmt_number(r.tokens_per_s)} tok/s, step {fmt_number(r.step_ms)} ms {r.error}")
            results.append(r)
            path = write_results(results, checks, notes, s, env, started)  # a cut-off run keeps what it has
    print(f"wrote {path}")
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
