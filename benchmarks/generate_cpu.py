"""CPU generation benchmark: ssmkit's generate vs transformers' generate on the same tiny checkpoints.

Each checkpoint is a random transformers model (mamba, mamba2, llama, bamba hybrid) saved in HF format and loaded
by ssmkit.io.load_pretrained. Every measurement first checks that ssmkit's greedy tokens equal transformers', then
times prefill and decode and measures memory; writes benchmarks/results/generate-cpu-<date>.md.

    python benchmarks/generate_cpu.py [--prompt-lens 128 512 1024 2048 4096] [--new-tokens 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import statistics
import tempfile
import time
import warnings

import torch

from ssmkit.inference import allocate_cache, cache_nbytes, generate_steps
from ssmkit.bench.environment import markdown_header
from ssmkit.bench.memory_monitor import process_rss_bytes
from ssmkit.bench.tensor_memory import PeakTensorMemory

VOCAB = 1024
D_MODEL = 256
# Tiny checkpoints, 4 layers of width 256; the Mamba-2 heads (8 x 64, d_state 64) follow the released models' shapes.
CHECKPOINTS = {
    "mamba": ("MambaConfig", dict(hidden_size=D_MODEL, state_size=16, num_hidden_layers=4, expand=2,
                                  conv_kernel=4)),
    "mamba2": ("Mamba2Config", dict(hidden_size=D_MODEL, num_heads=8, head_dim=64, n_groups=1, state_size=64,
                                    num_hidden_layers=4, expand=2, chunk_size=64)),
    "llama": ("LlamaConfig", dict(hidden_size=D_MODEL, intermediate_size=704, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192)),
    "bamba (mamba2 + 1 attention)": ("BambaConfig", dict(
        hidden_size=D_MODEL, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, attn_layer_indices=[2], mamba_n_heads=8, mamba_d_head=64, mamba_d_state=64,
        mamba_n_groups=1, mamba_chunk_size=64, max_position_embeddings=8192)),
}
PREFILL_CHUNK = 512


def build_checkpoints(folder: pathlib.Path) -> dict:
    """{family: (transformers model, ssmkit model)} with the same weights, both in eval mode, float32."""
    import transformers

    from ssmkit.io import load_pretrained

    pairs = {}
    for i, (family, (cls_name, kwargs)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(i)
        config = getattr(transformers, cls_name)(vocab_size=VOCAB, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.AutoModelForCausalLM.from_config(config).float().eval()
            with torch.no_grad():  # sharpen the logits so greedy decoding does not fall into a one-token loop
                hf.get_output_embeddings().weight.mul_(20.0)
        path = folder / f"ckpt{i}"
        hf.save_pretrained(path)
        pairs[family] = (hf, load_pretrained(path).float().eval())
    return pairs


class _Clock:
    """transformers streamer that records when each new token is ready (its first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self):
        pass


def runner(impl: str, hf, model):
    """A function (input_ids (1, L), n) -> (new token ids, perf_counter time at which each became available),
    greedy, no stop token. Both sides stamp a token right after it is chosen."""
    if impl == "transformers":
        def run(ids, n):
            clock = _Clock()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, eos_token_id=None, pad_token_id=0, streamer=clock)
            return out[0, ids.shape[1]:].tolist(), clock.times
        return run
    chunk = PREFILL_CHUNK if impl.startswith("ssmkit, chunked") else None

    def run(ids, n):
        tokens, times = [], []
        for step in generate_steps(model, ids, max_new_tokens=n, eos_token_id=[], prefill_chunk_size=chunk):
            tokens.append(int(step.tokens[0]))
            times.append(time.perf_counter())
        return tokens, times
    return run


def measure(run, ids: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """In a forked child (so each measurement starts from the same heap): one cold run for the tokens and the
    peak RSS growth, `repeats` timed runs, one run under the tensor-memory tracker. The parent has warmed every
    code path up on a short prompt before forking."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            rss0 = process_rss_bytes()
            tokens, _ = run(ids, new_tokens)
            result = {"tokens": tokens,
                      "rss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20}
            ttft, gaps, total = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, times = run(ids, new_tokens)
                ttft.append(times[0] - t0)
                gaps += [b - a for a, b in zip(times, times[1:])]
                total.append(len(times) / (times[-1] - t0))
            # Other processes on a shared machine only ever add time: the best run for TTFT and end to end, the
            # median gap between tokens over all runs for decode (a burst of load then hits a few gaps only).
            result.update(ttft_s=min(ttft), decode_tps=1 / statistics.median(gaps), total_tps=max(total))
            with PeakTensorMemory() as mem:
                run(ids, new_tokens)
            result["tensor_mib"] = mem.peak_bytes / 2**20
        except Exception as err:  # reported in the table, never silently dropped
            result = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while data := os.read(read, 1 << 16):
        chunks.append(data)
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "child died"}')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=list(CHECKPOINTS))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before any parallel region: forking after one is unsafe
    impls = ["ssmkit", f"ssmkit, chunked prefill {PREFILL_CHUNK}", "transformers"]
    rows, results, cache_rows = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = build_checkpoints(pathlib.Path(tmp))
        for family in args.families:
            hf, model = pairs[family]
            warm = torch.randint(0, VOCAB, (1, 8))
            for impl in impls:
                runner(impl, hf, model)(warm, 2)
            for L in args.prompt_lens:
                ids = torch.randint(0, VOCAB, (1, L), generator=torch.Generator().manual_seed(L))
                for impl in impls:
                    results[family, L, impl] = measure(runner(impl, hf, model), ids, args.new_tokens, args.repeats)
                for impl in impls:
                    rows.append(row(family, L, impl, results[family, L, impl], results[family, L, "transformers"]))
                    print(rows[-1], flush=True)
                nbytes = cache_nbytes(allocate_cache(model, 1, L + args.new_tokens))
                cache_rows.append(f"| {family} | {L} | {nbytes['ssm'] / 2**20:.2f} | {nbytes['kv'] / 2**20:.2f} |")
    table = "\n".join([HEADER, "|---|---:|---|---:|---:|---:|---:|---:|---|", *rows])
    caches = "\n".join(["| checkpoint | prompt | SSM states (MiB) | KV caches (MiB) |", "|---|---:|---:|---:|",
                        *cache_rows])
    text = markdown_header("Generation on CPU: ssmkit vs transformers, same checkpoints") + f"""
Checkpoints: random transformers models ({", ".join(CHECKPOINTS)}), 4 layers, d_model {D_MODEL},
vocab {VOCAB}, float32, saved in HF format and loaded by ssmkit.io.load_pretrained. Batch 1, greedy,
{args.new_tokens} new tokens, no stop token; torch threads: {args.threads}; load average (1 min) at the end:
{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine: absolute times are noisy).

Each new token is time-stamped as soon as it is chosen (ssmkit: generate_steps; transformers: a streamer).
time to first token = prefill + first token (best of {args.repeats} runs); decode = 1 / the median gap between
consecutive tokens over all runs; end to end = new tokens / total time (best run). Other processes on a shared
machine only ever add time, hence best runs and medians. All runs of a row happen in one forked child, after a
warm-up on a short prompt. RSS = peak resident-set growth of that
child during its first run; tensors = peak bytes of live tensors created during one run
(ssmkit.bench.tensor_memory; model weights excluded). "same tokens" checks ssmkit's greedy tokens against
transformers' before anything is timed. transformers runs its pure-PyTorch paths (mamba_ssm and causal_conv1d
are not installed on this CPU machine).

## Summary at the longest prompt ({max(args.prompt_lens)} tokens)

{summary(results, args.families, max(args.prompt_lens), impls)}

## All runs

{table}

## ssmkit decode cache per sequence (prompt + {args.new_tokens} positions)

SSM states do not grow with the prompt; attention KV caches do (one layer of four in the bamba checkpoint).

{caches}
"""
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"generate-cpu-{datetime.date.today().isoformat()}.md"
    path.write_text(text)
    print(f"wrote {path}")


HEADER = ("| checkpoint | prompt | impl | time to first token (ms) | decode (tokens/s) | end to end (tokens/s) "
          "| peak RSS growth (MiB) | peak tensors (MiB) | same tokens as transformers |")


def row(family: str, prompt_len: int, impl: str, r: dict, ref: dict) -> str:
    if "error" in r:
        return f"| {family} | {prompt_len} | {impl} | error: {r['error']} | | | | | |"
    same = "-" if impl == "transformers" else ("yes" if r["tokens"] == ref.get("tokens") else "NO")
    return (f"| {family} | {prompt_len} | {impl} | {r['ttft_s'] * 1e3:.1f} | {r['decode_tps']:.1f} | "
            f"{r['total_tps']:.1f} | {r['rss_mib']:.1f} | {r['tensor_mib']:.1f} | {same} |")


def summary(results: dict, families, L: int, impls) -> str:
    """One line per checkpoint: ssmkit (best variant) against transformers on time and memory."""
    lines = ["| checkpoint | TTFT ssmkit / transformers | decode ssmkit / transformers | peak tensors transformers / "
             "ssmkit chunked |", "|---|---:|---:|---:|"]
    for family in families:
        ours = [results[family, L, impl] for impl in impls[:2]]
        ref, chunked = results[family, L, "transformers"], results[family, L, impls[1]]
        if any("error" in r for r in (*ours, ref)):
            lines.append(f"| {family} | error | error | error |")
            continue
        ttft = min(r["ttft_s"] for r in ours) / ref["ttft_s"]
        decode = max(r["decode_tps"] for r in ours) / ref["decode_tps"]
        lines.append(f"| {family} | {ttft:.2f}x | {decode:.2f}x | {ref['tensor_mib'] / chunked['tensor_mib']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
