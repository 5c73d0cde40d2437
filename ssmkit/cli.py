"""The `ssmkit` command: parses arguments and calls into the packages; holds no logic of its own.

Each subcommand is one `add_<name>` function registering its parser and handler, listed in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys


def add_demo(sub):
    p = sub.add_parser("demo", help="run the end-to-end demo on CPU with embedded defaults")
    p.add_argument("--quick", action="store_true", help="smallest sizes only")

    def handler(args):
        from ssmkit.demo import run_demo

        return run_demo(quick=args.quick)

    p.set_defaults(handler=handler)


def add_ops_bench(sub):
    p = sub.add_parser("ops-bench", help="time the operators' evaluation orders on this machine")
    p.add_argument("--seqlens", type=int, nargs="+", default=[256, 1024])

    def handler(args):
        from ssmkit.bench.ops import bench_selective_scan, bench_ssd, markdown_table

        print(markdown_table(bench_ssd(args.seqlens) + bench_selective_scan(args.seqlens)))
        return 0

    p.set_defaults(handler=handler)


def add_route(sub):
    p = sub.add_parser("route", help="the request router: check a policy file, report what the router learned")
    route_sub = p.add_subparsers(dest="route_command", metavar="SUBCOMMAND", required=True)
    rp = route_sub.add_parser("report", help="per bucket: decisions, mean reward per backend, current preference")
    rp.add_argument("db", metavar="DB", help="the router's SQLite database")

    def report(args):
        from ssmkit.route.commands import route_report_main

        return route_report_main(args.db)

    rp.set_defaults(handler=report)
    cp = route_sub.add_parser("check", help="validate a policy YAML (and a router config) and print its rules")
    cp.add_argument("policy", metavar="POLICY", help="rule policy YAML")
    cp.add_argument("--config", metavar="FILE", help="router config YAML (feedback, reward, breakers, fallback)")

    def check(args):
        from ssmkit.route.commands import route_check_main

        return route_check_main(args.policy, args.config)

    cp.set_defaults(handler=check)


def add_advise(sub):
    p = sub.add_parser("advise", help="Transformer, hybrid or Mamba: four questions, a reason at each step, "
                                      "and a routing policy written from the answers")
    yes_no = argparse.BooleanOptionalAction  # --flag / --no-flag; unset = ask (on a terminal) or error
    p.add_argument("--long-context", action=yes_no, help="are most requests 32K tokens or longer?")
    p.add_argument("--gpu-80gb", action=yes_no, help="do the serving GPUs have 80 GB of memory or more?")
    p.add_argument("--icl-central", action=yes_no, help="is in-context learning central to the workload?")
    p.add_argument("--quality-required", action=yes_no, help="is Transformer-level quality required?")
    p.add_argument("--write-policy", metavar="PATH", help="write the matching rule policy YAML to PATH")
    for role in ("transformer", "mamba", "hybrid"):
        p.add_argument(f"--{role}-backend", metavar="NAME", help=f"backend playing the {role} role in the policy")
    p.add_argument("--no-input", action="store_true", help="never ask; an unanswered question is an error")

    def handler(args):
        from ssmkit.route.commands import advise_main

        roles = {r: getattr(args, f"{r}_backend") for r in ("transformer", "mamba", "hybrid")
                 if getattr(args, f"{r}_backend")}
        return advise_main(args.long_context, args.gpu_80gb, args.icl_central, args.quality_required,
                           write_policy=args.write_policy, roles=roles, interactive=False if args.no_input else None)

    p.set_defaults(handler=handler)


def add_compare(sub):
    p = sub.add_parser("compare", help="B / A ratios of TTFT, tokens/s, peak memory and p95 latency of two "
                                       "results files")
    p.add_argument("a", help="results JSON of the baseline (A)")
    p.add_argument("b", help="results JSON of the candidate (B); ratio > 1: B has more")

    def handler(args):
        from ssmkit.bench.commands import compare_command

        return compare_command(args.a, args.b)

    p.set_defaults(handler=handler)


def add_gate(sub):
    p = sub.add_parser("gate", help="check a results file against limits; exit 1 with a table when one fails")
    p.add_argument("results", help="results JSON written by `ssmkit bench`")
    p.add_argument("--min-quality", type=float, help="lowest quality score (0..1)")
    p.add_argument("--max-p95-latency-ms", type=float, help="highest p95 total latency")
    p.add_argument("--max-memory-gb", type=float, help="highest peak memory in GiB (2**30 bytes)")
    p.add_argument("--max-p95-ttft-ms", type=float, help="highest p95 time to first token")
    p.add_argument("--min-throughput", type=float, help="lowest throughput in output tokens/s")
    p.add_argument("--max-failed-fraction", type=float, default=0.0,
                   help="highest fraction of failed requests (default 0)")

    def handler(args):
        from ssmkit.bench.commands import gate_command

        return gate_command(args.results, min_quality=args.min_quality, max_p95_latency_ms=args.max_p95_latency_ms,
                            max_memory_gb=args.max_memory_gb, max_p95_ttft_ms=args.max_p95_ttft_ms,
                            min_throughput_tokens_per_s=args.min_throughput,
                            max_failed_fraction=args.max_failed_fraction)

    p.set_defaults(handler=handler)


def add_tokens(sub):
    p = sub.add_parser("tokens", help="tokenizer tools")
    tokens_sub = p.add_subparsers(dest="tokens_command", metavar="TOKENS_COMMAND", required=True)
    c = tokens_sub.add_parser("compare", help="token counts, ratio and cost impact of two tokenizers on text files")
    c.add_argument("--a", required=True, help="'byte' or a tokenizer.json file or a folder holding one")
    c.add_argument("--b", required=True, help="'byte' or a tokenizer.json file or a folder holding one")
    c.add_argument("--context", type=int, default=4096, help="context window (tokens) for the length-limit example")
    c.add_argument("files", nargs="+", help="UTF-8 text files")

    def handler(args):
        from ssmkit.bench.commands import tokens_compare_command

        return tokens_compare_command(args.a, args.b, args.files, context_tokens=args.context)

    c.set_defaults(handler=handler)


def add_generate(sub):
    p = sub.add_parser("generate", help="generate a completion from a checkpoint folder (HF format)")
    p.add_argument("checkpoint", help="folder with config.json and model.safetensors")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device")
    p.add_argument("--tokenizer", help="'byte', or a folder / tokenizer.json (default: the checkpoint's own)")
    p.add_argument("--prefill-chunk-size", type=int)
    p.add_argument("--kv-dtype", choices=["int8", "float32", "float64", "bfloat16", "float16"])

    def handler(args):
        from ssmkit.inference.command import generate_command

        return generate_command(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                args.top_p, args.seed, dtype=args.dtype, device=args.device,
                                tokenizer=args.tokenizer, prefill_chunk_size=args.prefill_chunk_size,
                                kv_dtype=args.kv_dtype)

    p.set_defaults(handler=handler)


def add_train(sub):
    p = sub.add_parser("train", help="train from a YAML config (run under torchrun for data parallelism)")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set data.seq_len=128 --set model.d_model=64")

    def handler(args):
        from ssmkit.train.commands import train

        return train(args.config, args.overrides)

    p.set_defaults(handler=handler)


def add_eval(sub):
    p = sub.add_parser("eval", help="perplexity / bits per byte, or task accuracy, of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--task", required=True, choices=["ppl", "mqar", "copy", "induction"])
    p.add_argument("--data", nargs="+")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--examples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")

    def handler(args):
        from ssmkit.train.commands import evaluate_checkpoint

        return evaluate_checkpoint(args.checkpoint, args.task, data=args.data, seq_len=args.seq_len,
                                   examples=args.examples, seed=args.seed, batch_size=args.batch_size,
                                   max_batches=args.max_batches, device=args.device, as_json=args.json)

    p.set_defaults(handler=handler)


def add_bench(sub):
    p = sub.add_parser("bench", help="benchmark models on a workload: TTFT, tokens/s, p50/p95/p99, memory; "
                                     "results JSON and an HTML report")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a checkpoint folder, or a preset name (random weights); repeat for several models")
    p.add_argument("--workload", required=True, help="workload YAML (see examples/workloads/README.md)")
    p.add_argument("--out", required=True, help="results JSON (several models: OUT-NAME.json each)")
    p.add_argument("--memory-cap", type=float, metavar="GB",
                   help="requests and sweep lengths whose planned memory exceeds this many GiB fail as out of memory")
    p.add_argument("--sweep", metavar="LENGTHS", help="also sweep prompt lengths, e.g. 256,512,1024,2048 "
                                                      "(each model stops at its first out-of-memory length)")
    p.add_argument("--sweep-batch", type=int, default=1, help="rows per sweep call (default 1)")
    p.add_argument("--sweep-new-tokens", type=int, default=16, help="tokens generated per sweep call (default 16)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: the checkpoint's)")
    p.add_argument("--batching", choices=["none", "serial", "static"], default="none",
                   help="how concurrent requests share the model (default: none, each runs alone)")
    p.add_argument("--prefill-chunk", type=int, help="prefill prompts in chunks of this many tokens")
    p.add_argument("--no-quality", action="store_true", help="skip the quality suite (quality_score null)")
    p.add_argument("--no-report", action="store_true", help="do not write OUT.html")

    def handler(args):
        from ssmkit.bench.commands import bench_command

        return bench_command(args.model, args.workload, args.out, memory_cap_gb=args.memory_cap, sweep=args.sweep,
                             sweep_batch=args.sweep_batch, sweep_new_tokens=args.sweep_new_tokens,
                             device=args.device, dtype=args.dtype, batching=args.batching,
                             prefill_chunk=args.prefill_chunk, quality=not args.no_quality,
                             report=not args.no_report)

    p.set_defaults(handler=handler)


def add_memory(sub):
    p = sub.add_parser("memory", help="bytes of weights, KV cache and SSM state per layer kind, and the longest "
                                      "context that fits a GPU")
    p.add_argument("--config", required=True, help="a preset name, a config.json, or a checkpoint folder")
    p.add_argument("--context", type=int, required=True, help="tokens per sequence (prompt + output)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", help="weights: bf16, fp16, fp32 (default bf16)")
    p.add_argument("--kv-dtype", choices=["int8", "int4"], help="quantized KV cache (default: the weights' dtype)")
    p.add_argument("--gpu-memory-gb", type=float, help="GPU memory in GiB: also print the longest context that fits")
    p.add_argument("--prefill-chunk", type=int, help="plan chunked prefill of this many tokens")
    p.add_argument("--kernels", choices=["fused", "torch"], default="fused",
                   help="activation estimate for GPU kernels (fused, default) or ssmkit's CPU paths (torch)")

    def handler(args):
        from ssmkit.bench.commands import memory_command

        return memory_command(args.config, args.context, batch=args.batch, dtype=args.dtype,
                              kv_dtype=args.kv_dtype, gpu_memory_gb=args.gpu_memory_gb,
                              prefill_chunk=args.prefill_chunk, kernels=args.kernels)

    p.set_defaults(handler=handler)


def add_profile(sub):
    p = sub.add_parser("profile", help="generate under the per-layer profiler, recording every layer call")
    p.add_argument("checkpoint", help="checkpoint folder, or preset:NAME for random weights")
    p.add_argument("--prompt", default=None, help="the prompt to generate from (or --workload)")
    p.add_argument("--workload", default=None, help="a bench workload YAML: profile each of its requests once")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--db", default="trace.duckdb")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--run-name", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--report", default=None, help="also write the HTML report here")

    def handler(args):
        from ssmkit.profile.commands import profile_command

        return profile_command(args.checkpoint, args.prompt, args.max_new_tokens, args.db, run_name=args.run_name,
                               requests=args.requests, batch=args.batch, dtype=args.dtype, device=args.device,
                               tokenizer=args.tokenizer, report=args.report, workload=args.workload)

    p.set_defaults(handler=handler)


def _trace_command(name: str):
    """A handler that calls ssmkit.profile.commands.<name> with the parsed arguments, imported on use."""
    def call(*args, **kwargs):
        from ssmkit.profile import commands

        return getattr(commands, name)(*args, **kwargs)

    return call


def add_trace(sub):
    p = sub.add_parser("trace", help="query, summarize, baseline and check profiler trace stores")
    t = p.add_subparsers(dest="trace_command", metavar="TRACE_COMMAND", required=True)
    q = t.add_parser("query", help="run SQL over the store")
    q.add_argument("db")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(handler=lambda a: _trace_command("trace_query_command")(a.db, a.sql, a.format))
    s = t.add_parser("summary", help="per layer type percentiles, worst layers, hidden tails")
    s.add_argument("db")
    s.add_argument("--run", type=int, default=None)
    s.set_defaults(handler=lambda a: _trace_command("trace_summary_command")(a.db, a.run))
    b = t.add_parser("baseline", help="baselines of per-layer-type percentiles")
    bs = b.add_subparsers(dest="baseline_command", required=True).add_parser("save", help="save a baseline")
    bs.add_argument("db")
    bs.add_argument("name")
    bs.add_argument("--runs", type=int, nargs="+", default=None)
    bs.set_defaults(handler=lambda a: _trace_command("trace_baseline_save_command")(a.db, a.name, a.runs))
    c = t.add_parser("check", help="exit 1 and JSON alerts when a run regresses against a baseline")
    c.add_argument("db")
    c.add_argument("--baseline", required=True)
    c.add_argument("--run", type=int)
    c.add_argument("--rel-p50", type=float, default=0.5)
    c.add_argument("--rel-p95", type=float, default=1.0)
    c.add_argument("--abs-us", type=float, default=50.0)
    c.add_argument("--min-samples", type=int, default=20)
    c.set_defaults(handler=lambda a: _trace_command("trace_check_command")(
        a.db, a.baseline, a.run, rel_p50=a.rel_p50, rel_p95=a.rel_p95, abs_us=a.abs_us, min_samples=a.min_samples))
    r = t.add_parser("report", help="write the self-contained HTML report of a run")
    r.add_argument("db")
    r.add_argument("--out", default="trace-report.html")
    r.add_argument("--run", type=int)
    r.set_defaults(handler=lambda a: _trace_command("trace_report_command")(a.db, a.out, a.run))


def add_serve(sub):
    p = sub.add_parser("serve", help="OpenAI-compatible server over local checkpoints and remote backends, "
                                     "routed per request")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--backend", action="append", default=[], metavar="NAME=URL[#MODEL]")
    p.add_argument("--policy", metavar="POLICY")
    p.add_argument("--router-config", metavar="FILE")
    p.add_argument("--router-db", default=":memory:", metavar="DB")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--max-context", type=int, default=2048)
    p.add_argument("--grace", type=float, default=10.0)
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device")
    p.add_argument("--log-level", default="info")
    p.add_argument("--warmup", action="store_true",
                   help="run every batch size and prompt-length class once before serving (compiles and tunes the "
                        "GPU kernels up front)")

    def handler(args):
        from ssmkit.serve.command import serve_command

        return serve_command(args.model, args.backend, args.policy, host=args.host, port=args.port,
                             max_concurrency=args.max_concurrency, max_queue=args.max_queue, timeout=args.timeout,
                             max_context=args.max_context, grace=args.grace, router_db=args.router_db,
                             router_config=args.router_config, dtype=args.dtype, device=args.device,
                             log_level=args.log_level, warmup=args.warmup)

    p.set_defaults(handler=handler)


COMMANDS = [add_demo, add_ops_bench, add_generate, add_serve, add_train, add_eval, add_bench, add_memory, add_profile, add_trace, add_route, add_advise, add_compare, add_gate, add_tokens]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmkit", description=__import__("ssmkit").__doc__)
    parser.add_argument("--version", action="version", version=f"ssmkit {__import__('ssmkit').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, exit code 2
        print(f"ssmkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
