"""The rule policy reproduces issue 8's table case by case, at every boundary, and agrees with a plain transcription
of the table on random features; features are validated; buckets split lengths at the table's edges.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.route import RequestFeatures, RulePolicy, bucket_of, default_policy, length_band, route


def table(f: RequestFeatures) -> tuple[str, float]:
    """Issue 8's table transcribed as if/else, independently of the policy code: (role, confidence)."""
    if f.requires_icl:
        return "transformer", 0.9
    if f.seq_len > 32000 and f.gpu_memory_gb is not None and f.gpu_memory_gb <= 24:
        return "mamba", 0.85
    if f.seq_len > 32000 and f.task in ("summarization", "retrieval"):
        return "mamba", 0.7
    if f.seq_len < 2000:
        return "transformer", 0.8
    return "transformer", 0.5


CASES = [
    # (seq_len, task, gpu_memory_gb, requires_icl) -> (rule, backend, confidence)
    ((100, "chat", None, True), ("in-context-learning", "transformer", 0.9)),
    ((50000, "summarization", 16, True), ("in-context-learning", "transformer", 0.9)),
    ((32001, "chat", 24, False), ("long-context-small-gpu", "mamba", 0.85)),
    ((32001, "chat", 24.1, False), ("default", "transformer", 0.5)),
    ((32000, "chat", 24, False), ("default", "transformer", 0.5)),
    ((32001, "summarization", 24, False), ("long-context-small-gpu", "mamba", 0.85)),
    ((32001, "summarization", 24.1, False), ("long-context-summarization-retrieval", "mamba", 0.7)),
    ((32001, "retrieval", 80, False), ("long-context-summarization-retrieval", "mamba", 0.7)),
    ((32001, "retrieval", None, False), ("long-context-summarization-retrieval", "mamba", 0.7)),
    ((32000, "summarization", 80, False), ("default", "transformer", 0.5)),
    ((32001, "chat", None, False), ("default", "transformer", 0.5)),
    ((1999, "chat", None, False), ("short-prompt", "transformer", 0.8)),
    ((1999, "summarization", 8, False), ("short-prompt", "transformer", 0.8)),
    ((2000, "chat", None, False), ("default", "transformer", 0.5)),
    ((2001, "chat", 8, False), ("default", "transformer", 0.5)),
    ((0, "chat", None, False), ("short-prompt", "transformer", 0.8)),
    ((1_000_000, "qa", 80, False), ("default", "transformer", 0.5)),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[f"{a[0]}-{a[1]}-{a[2]}GB-icl{a[3]}" for a, _ in CASES])
def test_default_policy_matches_the_rule_table_case_by_case(args, expected):
    seq_len, task, mem, icl = args
    d = route(RequestFeatures(seq_len=seq_len, task=task, gpu_memory_gb=mem, requires_icl=icl))
    assert (d.rule, d.backend, d.confidence, d.source) == (*expected, "rule")
    assert d.bucket == bucket_of(RequestFeatures(seq_len=seq_len, task=task, requires_icl=icl))


@settings(max_examples=300, deadline=None)
@given(seq_len=st.one_of(st.sampled_from([0, 1, 1999, 2000, 2001, 31999, 32000, 32001, 32002]),
                         st.integers(0, 200_000)),
       task=st.sampled_from(["chat", "summarization", "retrieval", "code", "Summarization "]),
       mem=st.one_of(st.none(), st.sampled_from([8, 23.9, 24, 24.0, 24.1, 40, 80]), st.floats(0.5, 200)),
       icl=st.booleans(), budget=st.one_of(st.none(), st.floats(1, 1e5)))
def test_default_policy_agrees_with_a_plain_transcription_of_the_table(seq_len, task, mem, icl, budget):
    f = RequestFeatures(seq_len, task, latency_budget_ms=budget, gpu_memory_gb=mem, requires_icl=icl)
    d = route(f)
    assert (d.role, d.confidence) == table(f)
    assert d.backend == d.role  # the default role map: each role is served by a backend of the same name


def test_role_map_decides_backend_names_not_the_rules():
    policy = RulePolicy(default_policy().rules, roles={"transformer": "llama-8b", "mamba": "mamba2-2.7b"})
    assert route(RequestFeatures(40000, gpu_memory_gb=16), policy).backend == "mamba2-2.7b"
    assert route(RequestFeatures(100), policy).backend == "llama-8b"
    assert policy.backends() == ["llama-8b", "mamba2-2.7b"]


def test_reason_names_the_rule_and_the_request_values():
    d = route(RequestFeatures(40000, "chat", gpu_memory_gb=24))
    assert "long-context-small-gpu" in d.reason
    assert "seq_len 40000 > 32000" in d.reason and "gpu_memory_gb 24 <= 24" in d.reason


@pytest.mark.parametrize("seq_len,band", [(0, "0-1999"), (1999, "0-1999"), (2000, "2000-32000"),
                                          (32000, "2000-32000"), (32001, "32001+")])
def test_length_bands_split_at_the_rule_table_edges(seq_len, band):
    assert length_band(seq_len) == band


def test_bucket_key_has_band_task_and_icl_flag():
    assert bucket_of(RequestFeatures(5000, "Summarization")) == "2000-32000/summarization"
    assert bucket_of(RequestFeatures(5, "chat", requires_icl=True)) == "0-1999/chat+icl"
    assert length_band(150, (99, 199)) == "100-199"


@pytest.mark.parametrize("kwargs,field", [
    ({"seq_len": -1}, "seq_len"), ({"seq_len": 1.5}, "seq_len"), ({"seq_len": True}, "seq_len"),
    ({"seq_len": 10, "task": ""}, "task"), ({"seq_len": 10, "task": 3}, "task"),
    ({"seq_len": 10, "latency_budget_ms": 0}, "latency_budget_ms"),
    ({"seq_len": 10, "gpu_memory_gb": float("nan")}, "gpu_memory_gb"),
    ({"seq_len": 10, "gpu_memory_gb": "24"}, "gpu_memory_gb"),
    ({"seq_len": 10, "requires_icl": 1}, "requires_icl"),
])
def test_bad_features_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        RequestFeatures(**kwargs)
