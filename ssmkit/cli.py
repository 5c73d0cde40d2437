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


COMMANDS = [add_demo, add_ops_bench]


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
