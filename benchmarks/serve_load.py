"""Serving throughput: continuous batching vs one request at a time, through `ssmkit serve` over loopback HTTP.

Two random checkpoints (Mamba-2 and Transformer++, 4 layers, d_model 256, 256 byte ids and no stop token) are
served by a child process running ssmkit.serve.command.serve_command, once with --max-concurrency C (continuous
batching) and once with --max-concurrency 1 (one request at a time; the rest wait in the queue). C closed-loop
streaming clients replay the same request mix: the Azure LLM inference trace 2023 (conversation service; CC BY 4.0,
Patel et al., "Splitwise", ISCA 2024), lengths scaled by 1/8 and capped (see --length-scale). Before timing, each
batched server's greedy answers to concurrent requests are checked against ssmkit.inference.generate. The engine
prefills the requests that arrive between two decode steps together (left-padded batches of similar lengths, at
most 8192 tokens each), so with C clients prefill is batched as well as decode. A second table isolates that: the
same closed loop against an in-process Engine, max_prefill_tokens 8192 (batched prefill) vs 1 (each prompt alone).

    python benchmarks/serve_load.py [--concurrency 8 32] [--requests 96] [--device cpu|cuda]
                                    [--threads N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import torch

from ssmkit.bench.environment import describe_environment, markdown_header
from ssmkit.bench.traces import load_azure_trace
from ssmkit.inference import generate
from ssmkit.io import ByteTokenizer, load_pretrained, save_pretrained
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.serve import Engine, GenerationRequest

MODELS = {
    "mamba2": dict(vocab_size=256, d_model=256, n_layers=4, mixers="mamba2", mamba2_d_state=64, mamba2_headdim=64,
                   mamba2_chunk_size=64),
    "llama": dict(vocab_size=256, d_model=256, n_layers=4, mixers="attention", feed_forwards="mlp", n_heads=4,
                  d_ff=704),
}
TEXT = "State space models carry a fixed-size state from token to token. "


def build_checkpoints(root: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {}
    for name, cfg in MODELS.items():
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig(**cfg))
        save_pretrained(model, root / name)
        ByteTokenizer(specials=(), eos_token=None).save(root / name)  # no stop token: outputs have trace lengths
        paths[name] = root / name
    return paths


def request_mix(n: int, length_scale: float, max_prompt: int, max_output: int) -> list[tuple[str, int]]:
    """(prompt text, output tokens) of the first n trace requests, scaled and capped; one byte = one token."""
    mix = []
    for r in load_azure_trace("conv", n, length_scale=length_scale):
        p, o = min(r.prompt_tokens, max_prompt), min(r.output_tokens, max_output)
        mix.append(((TEXT * (p // len(TEXT) + 1))[:p], o))
    return mix


_PORTS: set[int] = set()


def free_port() -> int:
    """A port nobody listens on, never one handed out before in this run (two servers start side by side, and the
    OS may offer a just-closed port again before the first child has bound it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


class ServerProcess:
    """`serve_command` in a child process (its own interpreter: no GIL shared with the load generator)."""

    def __init__(self, checkpoints: dict, max_concurrency: int, max_queue: int, max_context: int, device: str,
                 threads: int | None, warmup: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = [f"{n}={p}" for n, p in checkpoints.items()]
        threads_code = f"torch.set_num_threads({threads}); " if threads else ""
        code = (f"import sys, torch; {threads_code}from ssmkit.serve.command import serve_command; "
                f"sys.exit(serve_command({models!r}, port={self.port}, max_concurrency={max_concurrency}, "
                f"max_queue={max_queue}, max_context={max_context}, timeout=600.0, device={device!r}, "
                f"log_level='warning', warmup={warmup!r}))")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stderr=self.log)
        deadline = time.monotonic() + (600 if warmup else 120)  # warming up compiles every GPU kernel first
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the server did not start:\n{self.log.read()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


async def _one(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, text, status = None, [], None
    payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
               "ignore_eos": True}
    async with client.stream("POST", "/v1/completions", json=payload) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error']}")
                if first is None:
                    first = time.perf_counter()
                text.append(event["choices"][0]["text"])
            if status != 200:
                raise RuntimeError(f"status {status}: {line}")
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": max_tokens, "text": "".join(text)}


async def closed_loop(url: str, model: str, mix: list, concurrency: int) -> tuple[list, float]:
    """`concurrency` clients, each sending its next request when the previous one finished; (results, wall s)."""
    pending = list(enumerate(mix))
    results = [None] * len(mix)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker():
            while pending:
                i, (prompt, n) = pending.pop(0)
                results[i] = await _one(client, model, prompt, n)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


def validate(url: str, checkpoint: pathlib.Path, model: str, mix: list, concurrency: int, device: str) -> None:
    """Concurrent greedy answers of the batched server equal generate on each prompt alone."""
    sample = mix[:min(len(mix), concurrency)]
    results, _ = asyncio.run(closed_loop(url, model, sample, len(sample)))
    ref_model, tok = load_pretrained(checkpoint, device=device), ByteTokenizer(specials=(), eos_token=None)
    for (prompt, n), got in zip(sample, results):
        ids = torch.tensor([tok.encode(prompt)], device=device)
        want = tok.decode(generate(ref_model, ids, max_new_tokens=n, eos_token_id=[])[0, ids.shape[1]:].tolist())
        if got["text"] != want:
            raise AssertionError(f"{model}: the batched server's answer differs from generate for a prompt of "
                                 f"{len(prompt)} tokens")


def engine_closed_loop(engine: Engine, mix: list, concurrency: int) -> tuple[float, float]:
    """The closed loop of `closed_loop` against an in-process Engine (no HTTP, byte ids, no stop token):
    (wall s, p50 TTFT s)."""
    pending, ttfts, lock, done = list(mix), [], threading.Lock(), threading.Event()
    left = [len(mix)]

    def send() -> None:
        with lock:
            if not pending:
                return
            prompt, n = pending.pop(0)
        start = time.perf_counter()

        def on_event(event) -> None:
            if event.kind == "token" and event.index == 0:
                ttfts.append(time.perf_counter() - start)
            elif event.kind == "finish":
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()
                send()

        engine.submit(GenerationRequest(list(prompt.encode()), n, on_event))

    start = time.perf_counter()
    for _ in range(concurrency):
        send()
    done.wait()
    return time.perf_counter() - start, pct(ttfts, 0.5)


def prefill_ab(checkpoints: dict, mix: list, concurrency: int, max_len: int, repeats: int, device: str) -> list:
    """Batched prefill (max_prefill_tokens 8192) vs each prompt alone (1), alternating runs on two engines over one
    model; the best run of each, with the prefill forwards it took."""
    rows = []
    for model_name, path in checkpoints.items():
        model = load_pretrained(path, device=device)
        engines = {"batched": Engine(model, max_concurrency=concurrency, max_queue=len(mix), max_len=max_len,
                                     max_prefill_tokens=8192),
                   "alone": Engine(model, max_concurrency=concurrency, max_queue=len(mix), max_len=max_len,
                                   max_prefill_tokens=1)}
        try:
            best = {}
            for engine in engines.values():
                engine_closed_loop(engine, mix[:2], 2)  # warm-up
            for _ in range(repeats):
                for mode, engine in engines.items():
                    forwards = engine.prefills
                    wall, ttft = engine_closed_loop(engine, mix, concurrency)
                    row = {"model": model_name, "concurrency": concurrency, "prefill": mode,
                           "forwards": engine.prefills - forwards, "requests": len(mix),
                           "tok_s": sum(n for _, n in mix) / wall, "wall": wall, "ttft50": ttft}
                    if mode not in best or row["tok_s"] > best[mode]["tok_s"]:
                        best[mode] = row
                    print(f"{model_name} c={concurrency} engine, prefill {mode}: {row['tok_s']:.0f} tok/s", flush=True)
            rows.extend(best.values())
        finally:
            for engine in engines.values():
                engine.stop()
    return rows


def pct(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--requests", type=int, default=96, help="the same first N trace requests at every C")
    ap.add_argument("--length-scale", type=float, default=1 / 8)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--max-output", type=int, default=64)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode; the best is reported")
    ap.add_argument("--device", default="cpu", help="where the server runs the models (cpu, cuda)")
    ap.add_argument("--threads", type=int, help="torch threads of the server process (default: torch's)")
    ap.add_argument("--warmup", action="store_true", help="servers start with `ssmkit serve --warmup`")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    env = describe_environment()
    if args.device == "cpu":
        env["device"] = (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, server torch "
                         f"threads {args.threads or torch.get_num_threads()})")
    rows, ab_rows = [], []
    with tempfile.TemporaryDirectory(prefix="ssmkit-serve-load-") as tmp:
        checkpoints = build_checkpoints(pathlib.Path(tmp))
        checkpoints = {n: checkpoints[n] for n in args.models}
        max_context = args.max_prompt + args.max_output
        for c in args.concurrency:
            mix = request_mix(args.requests, args.length_scale, args.max_prompt, args.max_output)
            # Both servers run side by side (an idle one costs nothing) and the runs alternate between them, so
            # load from other processes falls on both modes alike; each row keeps the best of --repeats runs.
            servers = {mode: ServerProcess(checkpoints, max_concurrency=cap, max_queue=c, max_context=max_context,
                                           device=args.device, threads=args.threads, warmup=args.warmup)
                       for mode, cap in (("continuous batching", c), ("one at a time", 1))}
            try:
                for model in checkpoints:
                    validate(servers["continuous batching"].url, checkpoints[model], model, mix, c, args.device)
                    best = {}
                    for _ in range(args.repeats):
                        for mode, server in servers.items():
                            asyncio.run(closed_loop(server.url, model, mix[:2], 2))  # warm-up
                            results, wall = asyncio.run(closed_loop(server.url, model, mix, c))
                            tokens = sum(r["tokens"] for r in results)
                            row = {"model": model, "concurrency": c, "mode": mode, "requests": len(results),
                                   "tokens": tokens, "wall": wall, "tok_s": tokens / wall,
                                   "p50": pct([r["latency"] for r in results], 0.5),
                                   "p99": pct([r["latency"] for r in results], 0.99),
                                   "ttft50": pct([r["ttft"] for r in results], 0.5)}
                            if mode not in best or row["tok_s"] > best[mode]["tok_s"]:
                                best[mode] = row
                            print(f"{model} c={c} {mode}: {tokens / wall:.0f} tok/s", flush=True)
                    rows.extend(best.values())
            finally:
                for server in servers.values():
                    server.stop()
            ab_rows += prefill_ab(checkpoints, mix, c, max_context, args.repeats, args.device)
        mix_stats = request_mix(args.requests, args.length_scale, args.max_prompt, args.max_output)
    write_report(rows, ab_rows, env, args, mix_stats)
    return 0


def write_report(rows: list, ab_rows: list, env: dict, args, mix: list) -> None:
    date = datetime.date.today().isoformat()
    tag = "cpu" if args.device == "cpu" else env["device"].lower().replace("nvidia ", "").split()[0]
    out = pathlib.Path(args.out) / f"serve-load-{tag}-{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    where = "CPU" if args.device == "cpu" else env["device"]
    lines = [markdown_header(f"Serving throughput on {where}: continuous batching vs one request at a time", env),
             f"Server: `ssmkit serve` (serve_command, --device {args.device}) in a child process on 127.0.0.1; "
             f"two random checkpoints, 4 layers, d_model 256, float32: "
             f"{', '.join(args.models)}. Clients: C closed-loop streaming clients (asyncio + httpx) in this "
             f"process, greedy, ignore_eos (each output has exactly its trace length). "
             f"\"continuous batching\" = --max-concurrency C; \"one at a time\" = --max-concurrency 1 with the "
             f"others queued. The same requests, in the same order, in both modes; best of {args.repeats} "
             f"alternating runs per mode, after a warm-up. Load average (1 min) at the "
             f"end: {load:.1f} on {os.cpu_count()} CPUs (other processes add noise to absolute numbers).", "",
             f"Request mix: the first {len(mix)} requests of the Azure LLM inference trace 2023, conversation "
             f"service (CC BY 4.0; Patel et al., \"Splitwise\", ISCA 2024; `ssmkit/bench/data`), prompt and output "
             f"lengths scaled by {args.length_scale:g} and capped at {args.max_prompt} / {args.max_output} tokens: "
             f"mean prompt {statistics.mean(len(p) for p, _ in mix):.0f} "
             f"tokens, mean output {statistics.mean(o for _, o in mix):.1f} tokens, the same requests at every C. "
             f"Before timing, the batched server's greedy answers to C concurrent requests were checked equal to "
             f"ssmkit.inference.generate on each prompt alone.", "",
             "With continuous batching, the requests that arrive between two decode steps are prefilled together "
             "(one left-padded forward per group of similar prompt lengths, at most 8192 tokens; ssmkit.serve."
             "engine.prefill_groups) and then decode in the shared batch; one at a time, each request is "
             "prefilled alone. Closed-loop clients arrive together at the start and then as earlier requests "
             "finish, so how many prompts share a prefill depends on C and on the mix. TTFT of \"one at a time\" "
             "includes the wait in the queue.", "",
             "| model | C | mode | requests | output tokens | wall s | output tok/s | speedup | p50 latency s "
             "| p99 latency s | p50 TTFT s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {(r["model"], r["concurrency"]): r["tok_s"] for r in rows if r["mode"] == "one at a time"}
    for r in rows:
        speed = r["tok_s"] / base[(r["model"], r["concurrency"])] if (r["model"], r["concurrency"]) in base else 1
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['mode']} | {r['requests']} | {r['tokens']} | "
                     f"{r['wall']:.2f} | {r['tok_s']:.0f} | {speed:.2f}x | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['ttft50']:.3f} |")
    lines += ["", "Prefill batching alone, without HTTP: the same closed loop (C clients, the same mix) against an "
              "in-process Engine on the checkpoint, max_prefill_tokens 8192 (\"batched\") vs 1 (\"alone\": every "
              "prompt in its own forward, as before prefill was batched); decode is batched in both. Best of "
              f"{args.repeats} alternating runs.", "",
              "| model | C | prefill | prefill forwards / requests | wall s | output tok/s | p50 TTFT s |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for r in ab_rows:
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['prefill']} | {r['forwards']} / {r['requests']} | "
                     f"{r['wall']:.2f} | {r['tok_s']:.0f} | {r['ttft50']:.3f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
