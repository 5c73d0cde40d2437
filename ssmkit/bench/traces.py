"""Production request traces: the Azure LLM inference trace 2023 (CC BY 4.0; Patel et al., "Splitwise", ISCA 2024).

ssmkit ships the first 300 requests of each service as JSONL in `ssmkit/bench/data/` (see the README there);
`azure_csv_to_jsonl` converts the full published CSVs the same way for longer replays.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

from .request_log import Request, read_request_log, write_request_log

DATA_DIR = Path(__file__).parent / "data"
AZURE_SERVICES = {"conv": "azure-llm-inference-2023-conv.jsonl", "code": "azure-llm-inference-2023-code.jsonl"}


def load_azure_trace(service: str, n: int | None = None, time_scale: float = 1.0,
                     length_scale: float = 1.0) -> list[Request]:
    """The first n requests (all shipped ones if None) of the shipped Azure slice of `service` ("conv" or "code").

    Lengths are token counts (no prompt text in the trace). time_scale multiplies arrival times; length_scale
    multiplies prompt and output lengths (a small model or a CPU run needs both; say so next to any numbers).
    """
    if service not in AZURE_SERVICES:
        raise ValueError(f"service: expected one of {sorted(AZURE_SERVICES)}, got {service!r}")
    path = DATA_DIR / AZURE_SERVICES[service]
    requests = read_request_log(path, time_scale=time_scale, length_scale=length_scale)
    if n is not None and not 1 <= n <= len(requests):
        raise ValueError(f"n: expected 1..{len(requests)} (the requests shipped in {path.name}), got {n}")
    return requests[:n]


def parse_azure_timestamp(text: str) -> datetime.datetime:
    """'2023-11-16 18:17:03.9799600' -> datetime; the trace has 7 fractional digits, kept to the microsecond."""
    whole, _, frac = text.strip().partition(".")
    t = datetime.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    return t + datetime.timedelta(microseconds=round(int((frac or "0")[:7].ljust(7, "0")) / 10))


def azure_csv_to_jsonl(csv_path, out_path, n: int | None = None) -> int:
    """Converts the first n rows of an Azure trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens) to the request
    log format: arrival_s from the first row's timestamp, prompt_tokens, output_tokens. Returns rows written."""
    csv_path = Path(csv_path)
    requests = []
    t0 = None
    with csv_path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            if n is not None and len(requests) >= n:
                break
            try:
                t = parse_azure_timestamp(row["TIMESTAMP"])
                ptok, out = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{csv_path}:{lineno}: expected TIMESTAMP, ContextTokens, GeneratedTokens "
                                 f"({err})") from None
            t0 = t if t0 is None else t0
            requests.append(Request(len(requests), output_tokens=out, prompt_tokens=ptok,
                                    arrival_s=(t - t0).total_seconds()))
    write_request_log(requests, out_path)
    return len(requests)
