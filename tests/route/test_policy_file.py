"""Policy and router-config YAML: the shipped example is the default table, a policy survives a write/read round
trip with identical routing, and each kind of mistake in a file gives an error naming the file, the rule and the key.
"""

from pathlib import Path

import pytest

from ssmkit.route import (Condition, PolicyError, RequestFeatures, Rule, RulePolicy, default_policy, dump_policy,
                          load_config, load_policy)
from ssmkit.route.commands import route_check_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "router"


def test_example_policy_file_is_the_default_table():
    assert load_policy(EXAMPLES / "policy.yaml") == default_policy()


def test_example_feedback_config_loads_with_its_documented_values():
    cfg = load_config(EXAMPLES / "feedback.yaml")
    assert cfg.backends == ("transformer", "mamba") and cfg.fallback == ("transformer", "mamba")
    assert cfg.feedback.method == "thompson" and cfg.feedback.min_samples == 20
    assert cfg.breaker_for("mamba").p99_ms == 30000 and cfg.breaker_for("transformer").p99_ms == 10000
    assert cfg.breaker_for("mamba").cooldown_s == cfg.breaker.cooldown_s  # per-backend inherits the defaults


def _every_kind_of_rule() -> RulePolicy:
    return RulePolicy(rules=(
        Rule("icl", "transformer", 0.95, (Condition("requires_icl", "eq", True),), reason="recall", fixed=True),
        Rule("tight-budget", "hybrid", 0.6, (Condition("latency_budget_ms", "lt", 250.5),
                                             Condition("task", "not_in", ("code",)))),
        Rule("long", "mamba", 0.7, (Condition("seq_len", "ge", 16384), Condition("gpu_memory_gb", "le", 40),
                                    Condition("seq_len", "le", 1 << 20), Condition("task", "in", ("qa", "chat")))),
        Rule("exact", "mamba", 0.3, (Condition("seq_len", "eq", 777),)),
        Rule("rest", "transformer", 0.0),
    ), roles={"transformer": "tfm", "mamba": "ssm-a", "hybrid": "jamba"}, description="all kinds",
        advice={"outcome": "hybrid", "answers": {"long_context": True}})


def test_policy_round_trip_gives_an_equal_policy_that_routes_identically(tmp_path):
    policy = _every_kind_of_rule()
    text = dump_policy(policy, tmp_path / "p.yaml", header="a header\n\nwith a blank line")
    assert text.startswith("# a header\n#\n# with a blank line\n")
    loaded = load_policy(tmp_path / "p.yaml")
    assert loaded == policy
    for seq_len in (0, 777, 16383, 16384, 1 << 20, (1 << 20) + 1):
        for task in ("qa", "code", "chat"):
            for budget in (None, 100.0, 250.5):
                for mem in (None, 40, 40.5):
                    for icl in (False, True):
                        f = RequestFeatures(seq_len, task, latency_budget_ms=budget, gpu_memory_gb=mem,
                                            requires_icl=icl)
                        assert loaded.route(f) == policy.route(f)
    assert dump_policy(loaded) == dump_policy(policy)  # a second write gives the same text


GOOD_RULE = "  - {name: rest, role: transformer, confidence: 0.5}\n"
BAD_FILES = {
    "invalid-yaml": ("version: 1\nrules: [\n", "not valid YAML"),
    "top-level-list": ("- 1\n", "expected a mapping at the top level"),
    "no-version": ("rules:\n" + GOOD_RULE, "version: expected 1, got None"),
    "wrong-version": ("version: 2\nrules:\n" + GOOD_RULE, "version: expected 1, got 2"),
    "unknown-top-key": ("version: 1\nrule:\n" + GOOD_RULE, "unknown key 'rule'"),
    "no-rules": ("version: 1\nrules: []\n", "rules: expected a non-empty list"),
    "missing-role": ("version: 1\nrules:\n  - {name: a, confidence: 0.5}\n", "rule 1 ('a'): missing key 'role'"),
    "unknown-role": ("version: 1\nrules:\n  - {name: a, role: rnn, confidence: 0.5}\n",
                     "rule 1 ('a'): role: expected one of transformer, mamba, hybrid, got 'rnn'"),
    "role-without-backend": ("version: 1\nroles: {transformer: t}\nrules:\n  - {name: a, role: mamba, "
                             "confidence: 0.5}\n", "rule 1 ('a'): role: role 'mamba' has no backend in `roles`"),
    "bad-confidence": ("version: 1\nrules:\n  - {name: a, role: mamba, confidence: 1.5}\n",
                       "rule 1 ('a'): confidence: expected a number in [0, 1], got 1.5"),
    "unknown-operator": ("version: 1\nrules:\n  - {name: long, when: {seq_len: {gte: 5}}, role: mamba, "
                         "confidence: 0.5}\n" + GOOD_RULE, "rule 1 ('long'): when.seq_len: unknown operator 'gte'"),
    "non-numeric-bound": ("version: 1\nrules:\n  - {name: long, when: {seq_len: {gt: big}}, role: mamba, "
                          "confidence: 0.5}\n" + GOOD_RULE, "rule 1 ('long'): when.seq_len.gt: expected a number"),
    "task-not-a-list": ("version: 1\nrules:\n" + GOOD_RULE.replace("rest", "x") + "  - {name: s, when: {task: "
                        "{in: summarization}}, role: mamba, confidence: 0.5}\n" + GOOD_RULE,
                        "rule 2 ('s'): when.task.in: expected a non-empty list of task names"),
    "unknown-feature": ("version: 1\nrules:\n  - {name: l, when: {length: {gt: 5}}, role: mamba, confidence: 0.5}\n"
                        + GOOD_RULE, "rule 1 ('l'): when: unknown key 'length'"),
    "icl-not-bool": ("version: 1\nrules:\n  - {name: i, when: {requires_icl: yes please}, role: mamba, "
                     "confidence: 0.5}\n" + GOOD_RULE, "rule 1 ('i'): when.requires_icl: expected true or false"),
    "unknown-rule-key": ("version: 1\nrules:\n  - {name: a, role: mamba, confidence: 0.5, weight: 2}\n",
                         "rule 1 ('a'): unknown key 'weight'"),
    "duplicate-name": ("version: 1\nrules:\n" + GOOD_RULE + GOOD_RULE, "rule 2 ('rest'): name: duplicate rule name"),
    "last-rule-conditional": ("version: 1\nrules:\n  - {name: a, when: {seq_len: {gt: 5}}, role: mamba, "
                              "confidence: 0.5}\n", "rule 1 ('a'): when: the last rule must have no `when`"),
    "rule-not-a-mapping": ("version: 1\nrules:\n  - just a string\n" + GOOD_RULE, "rule 1: expected a mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_policy_file_error_names_file_rule_and_key(tmp_path, name):
    text, message = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert message in str(err.value), str(err.value)


BAD_CONFIGS = {
    "exploration-out-of-range": ("feedback: {exploration: 2}", "feedback.exploration: expected a number in [0.0, 1.0]"),
    "unknown-method": ("feedback: {method: ucb}", "feedback.method: expected one of thompson, epsilon_greedy"),
    "min-samples-float": ("feedback: {min_samples: 2.5}", "feedback.min_samples: expected an int"),
    "unknown-feedback-key": ("feedback: {epsilon: 0.1}", "feedback: unknown key 'epsilon'"),
    "zero-weights": ("reward: {quality_weight: 0, latency_weight: 0}", "reward: quality_weight + latency_weight"),
    "bands-not-ascending": ("buckets: {length_bands: [32000, 1999]}", "buckets.length_bands: expected strictly"),
    "per-backend-bad-key": ("breakers: {per_backend: {mamba: {p99: 5}}}", "breakers.per_backend.mamba: unknown key"),
    "fallback-repeats": ("fallback: [a, a]", "fallback: expected a list of distinct backend names"),
    "unknown-top-key": ("breaker: {}", "unknown key 'breaker'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_router_config_error_names_file_and_key(tmp_path, name):
    body, message = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\n{body}\n")
    with pytest.raises(PolicyError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


def test_missing_policy_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "nope.yaml")


def test_route_check_prints_the_rules_or_one_error_line(tmp_path, capsys):
    assert route_check_main(str(EXAMPLES / "policy.yaml"), str(EXAMPLES / "feedback.yaml")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "2. long-context-small-gpu: seq_len > 32000 and gpu_memory_gb <= 24 -> mamba (mamba), " \
                     "confidence 0.85"
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_FILES["bad-confidence"][0])
    assert route_check_main(str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssmkit route check: error: ") and "confidence" in err and err.count("\n") == 1
