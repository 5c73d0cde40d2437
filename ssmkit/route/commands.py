"""The logic of `ssmkit advise`, `ssmkit route report` and `ssmkit route check`, as functions of plain arguments.

Each prints its output and returns an exit code (0 ok, 2 user error with one line on stderr), so `ssmkit.cli` only
parses flags and calls them.
"""

from __future__ import annotations

import sys

from ssmkit.route.advise import Question, advice_policy, advise
from ssmkit.route.config import load_config
from ssmkit.route.policy_file import dump_policy, load_policy
from ssmkit.route.report import bucket_report, format_report


def _error(command: str, err: Exception, stderr) -> int:
    print(f"ssmkit {command}: error: {err}", file=stderr)
    return 2


def _tty_asker(stdin, stdout):
    def ask(question: Question) -> bool:
        while True:
            stdout.write(f"{question.text} [y/n] ")
            stdout.flush()
            line = stdin.readline()
            if not line:
                raise ValueError(f"{question.key}: no answer (end of input)")
            reply = line.strip().lower()
            if reply in ("y", "yes", "n", "no"):
                return reply.startswith("y")
            stdout.write("please answer y or n\n")
    return ask


def advise_main(long_context: bool | None = None, gpu_80gb: bool | None = None, icl_central: bool | None = None,
                quality_required: bool | None = None, write_policy: str | None = None, roles: dict | None = None,
                interactive: bool | None = None, stdin=None, stdout=None, stderr=None) -> int:
    """`ssmkit advise`: answers from flags (None = not given); missing ones are asked when `interactive` (default:
    stdin is a terminal), else an error names the flag. Prints each step's reason and the outcome; with
    `write_policy`, writes the matching rule policy YAML there. roles: role -> backend name for the written policy.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if interactive is None:
        interactive = stdin.isatty()
    answers = {"long_context": long_context, "gpu_80gb": gpu_80gb, "icl_central": icl_central,
               "quality_required": quality_required}
    try:
        advice = advise(answers, ask=_tty_asker(stdin, stdout) if interactive else None)
        print(advice.explain(), file=stdout)
        if write_policy:
            header = f"Written by `ssmkit advise`: {advice.title}.\nLoad with ssmkit.route.load_policy(path)."
            dump_policy(advice_policy(advice, roles), write_policy, header=header)
            print(f"policy written to {write_policy}", file=stdout)
    except (ValueError, OSError) as err:
        return _error("advise", err, stderr)
    return 0


def route_report_main(db: str, stdout=None, stderr=None) -> int:
    """`ssmkit route report DB`: per bucket, what the feedback policy has learned."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        print(format_report(bucket_report(db), db), file=stdout)
    except (ValueError, FileNotFoundError) as err:
        return _error("route report", err, stderr)
    return 0


def route_check_main(policy: str, config: str | None = None, stdout=None, stderr=None) -> int:
    """`ssmkit route check POLICY [--config FILE]`: validates the files and prints the rules in order."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        rules = load_policy(policy)
        if config:
            load_config(config)
    except (ValueError, FileNotFoundError) as err:
        return _error("route check", err, stderr)
    for i, rule in enumerate(rules.rules, 1):
        cond = " and ".join(c.describe() for c in rule.conditions) or "always"
        print(f"{i}. {rule.name}: {cond} -> {rule.role} ({rules.roles[rule.role]}), confidence {rule.confidence:g}"
              f"{' [fixed]' if rule.fixed else ''}", file=stdout)
    print(f"{policy}: ok" + (f"; {config}: ok" if config else ""), file=stdout)
    return 0
