"""The trace store's SQL schema, version 2 (DuckDB dialect). README.md in this folder describes every column.

A store records its version in `meta`; opening a store of another version is refused, never silently migrated.
"""

from __future__ import annotations

SCHEMA_VERSION = 2

TABLES = {
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (
            key VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL
        )""",
    "runs": """
        CREATE TABLE IF NOT EXISTS runs (
            run_id INTEGER PRIMARY KEY,
            name VARCHAR,
            status VARCHAR NOT NULL,       -- running | ok | error (a run left 'running' was interrupted)
            error VARCHAR,                 -- 'ExceptionType: message' when status = 'error'
            started_at TIMESTAMP NOT NULL, -- wall clock, UTC
            ended_at TIMESTAMP,
            wall_ns BIGINT,                -- profiled time on the run's clock, from enter to exit
            clock VARCHAR NOT NULL,        -- cpu (time.perf_counter_ns) | cuda (CUDA events)
            device VARCHAR,
            model JSON,                    -- ModelConfig.to_dict() and the parameter count
            environment JSON               -- versions of python, torch, duckdb; host; thread count
        )""",
    "events": """
        CREATE TABLE IF NOT EXISTS events (
            run_id INTEGER NOT NULL,
            call_id BIGINT NOT NULL,       -- order of the call in the run
            request_id INTEGER NOT NULL,
            phase VARCHAR NOT NULL,        -- prefill | decode
            step INTEGER NOT NULL,         -- model call of the request, from 0
            layer_idx INTEGER NOT NULL,
            layer_type VARCHAR NOT NULL,   -- mamba | mamba2 | attention | s4 | mlp | moe | all_to_all
            batch INTEGER NOT NULL,
            seqlen INTEGER NOT NULL,
            start_ns BIGINT NOT NULL,      -- from the start of the run
            duration_ns BIGINT NOT NULL
        )""",
    "moe_routing": """
        CREATE TABLE IF NOT EXISTS moe_routing (
            run_id INTEGER NOT NULL,
            call_id BIGINT NOT NULL,       -- the MoE call's row in events
            layer_idx INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL,
            expert_counts INTEGER[] NOT NULL,
            imbalance DOUBLE,              -- max / mean of expert_counts
            capacity INTEGER,              -- the experts' common capacity; NULL when they differ or there is none
            over_capacity INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            expert_capacity INTEGER[],     -- per expert (version 2)
            expert_overflow INTEGER[],     -- assignments past each expert's capacity (version 2)
            router_ns BIGINT,
            expert_ns BIGINT,
            exchange_ns BIGINT             -- all-to-all time (expert-parallel layers only)
        )""",
    "kernels": """
        CREATE TABLE IF NOT EXISTS kernels (
            run_id INTEGER NOT NULL,
            call_id BIGINT NOT NULL,       -- the layer call that launched the kernel or ran the op
            name VARCHAR NOT NULL,
            device_type VARCHAR NOT NULL,  -- cpu (an aten op) | cuda (a GPU kernel)
            duration_ns BIGINT NOT NULL
        )""",
    "baselines": """
        CREATE TABLE IF NOT EXISTS baselines (
            name VARCHAR NOT NULL,
            phase VARCHAR NOT NULL,
            layer_type VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            p50_ns DOUBLE NOT NULL,
            p95_ns DOUBLE NOT NULL,
            p99_ns DOUBLE NOT NULL,
            mean_ns DOUBLE NOT NULL,
            run_ids INTEGER[] NOT NULL,
            created_at TIMESTAMP NOT NULL
        )""",
}
