"""Rule policies as YAML files: a small versioned schema, validated with errors that name file, rule and key.

Schema (version 1); `roles` may be omitted (each role is served by a backend of the same name):

    version: 1
    description: free text                     # optional
    roles: {transformer: tfm-7b, mamba: mamba-2.8b, hybrid: jamba}
    rules:                                     # ordered, first match wins; the last rule has no `when`
      - name: long-context-small-gpu
        when: {seq_len: {gt: 32000}, gpu_memory_gb: {le: 24}, task: {in: [summarization]}, requires_icl: true}
        role: mamba                            # transformer | mamba | hybrid
        confidence: 0.85                       # in [0, 1]
        reason: why, in prose                  # optional
        fixed: false                           # optional; true = the feedback policy never overrides it
    advice: {...}                              # optional, written by `ssmkit advise`
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ssmkit.route.features import ROLES
from ssmkit.route.rules import NUMERIC_FEATURES, NUMERIC_OPS, TASK_OPS, Condition, Rule, RulePolicy

SCHEMA_VERSION = 1
TOP_KEYS = ("version", "description", "roles", "rules", "advice")
RULE_KEYS = ("name", "when", "role", "confidence", "reason", "fixed")
WHEN_KEYS = NUMERIC_FEATURES + ("task", "requires_icl")


class PolicyError(ValueError):
    """A policy file that does not follow the schema; the message names the file, the rule and the key."""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _fail(where: str, msg: str):
    raise PolicyError(f"{where}: {msg}")


def _unknown(where: str, got: dict, allowed) -> None:
    extra = [k for k in got if k not in allowed]
    if extra:
        _fail(where, f"unknown key {extra[0]!r}, expected one of {', '.join(allowed)}")


def _parse_when(where: str, when) -> tuple[Condition, ...]:
    if not isinstance(when, dict):
        _fail(f"{where}: when", f"expected a mapping of feature -> test, got {when!r}")
    _unknown(f"{where}: when", when, WHEN_KEYS)
    conds = []
    for feature, test in when.items():
        at = f"{where}: when.{feature}"
        if feature == "requires_icl":
            if not isinstance(test, bool):
                _fail(at, f"expected true or false, got {test!r}")
            conds.append(Condition(feature, "eq", test))
            continue
        if not isinstance(test, dict) or not test:
            _fail(at, f"expected a mapping of operator -> value, got {test!r}")
        ops = TASK_OPS if feature == "task" else tuple(NUMERIC_OPS)
        for op, value in test.items():
            if op not in ops:
                _fail(at, f"unknown operator {op!r}, expected one of {', '.join(ops)}")
            if feature == "task":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                    _fail(f"{at}.{op}", f"expected a non-empty list of task names, got {value!r}")
                value = tuple(v.strip().lower() for v in value)
            elif not _is_number(value):
                _fail(f"{at}.{op}", f"expected a number, got {value!r}")
            conds.append(Condition(feature, op, value))
    return tuple(conds)


def _parse_rule(src: str, i: int, raw, roles: dict) -> Rule:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{src}: rule {i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping with keys name, when, role, confidence; got {raw!r}")
    _unknown(where, raw, RULE_KEYS)
    for key in ("name", "role", "confidence"):
        if key not in raw:
            _fail(where, f"missing key {key!r}")
    if not isinstance(name, str) or not name.strip():
        _fail(f"{where}: name", f"expected a non-empty string, got {name!r}")
    role = raw["role"]
    if role not in ROLES:
        _fail(f"{where}: role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    if role not in roles:
        _fail(f"{where}: role", f"role {role!r} has no backend in `roles` ({', '.join(roles) or 'empty'})")
    conf = raw["confidence"]
    if not _is_number(conf) or not 0.0 <= conf <= 1.0:
        _fail(f"{where}: confidence", f"expected a number in [0, 1], got {conf!r}")
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        _fail(f"{where}: reason", f"expected a string, got {reason!r}")
    fixed = raw.get("fixed", False)
    if not isinstance(fixed, bool):
        _fail(f"{where}: fixed", f"expected true or false, got {fixed!r}")
    conds = _parse_when(where, raw["when"]) if "when" in raw else ()
    return Rule(name=name, role=role, confidence=float(conf), conditions=conds, reason=reason, fixed=fixed)


def parse_policy(data, source: str = "<policy>") -> RulePolicy:
    """A decoded YAML document -> RulePolicy; raises PolicyError naming `source`, the rule and the key."""
    if not isinstance(data, dict):
        _fail(source, f"expected a mapping at the top level, got {type(data).__name__}")
    _unknown(source, data, TOP_KEYS)
    if data.get("version") != SCHEMA_VERSION:
        _fail(f"{source}: version", f"expected {SCHEMA_VERSION}, got {data.get('version')!r}")
    roles = data.get("roles", {r: r for r in ROLES})
    if not isinstance(roles, dict):
        _fail(f"{source}: roles", f"expected a mapping of role -> backend name, got {roles!r}")
    for role, backend in roles.items():
        if role not in ROLES:
            _fail(f"{source}: roles.{role}", f"unknown role, expected one of {', '.join(ROLES)}")
        if not isinstance(backend, str) or not backend.strip():
            _fail(f"{source}: roles.{role}", f"expected a backend name, got {backend!r}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        _fail(f"{source}: rules", f"expected a non-empty list of rules, got {raw_rules!r}")
    rules = tuple(_parse_rule(source, i, r, roles) for i, r in enumerate(raw_rules))
    seen = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            _fail(f"{source}: rule {i + 1} ({rule.name!r}): name", "duplicate rule name")
        seen.add(rule.name)
    if rules[-1].conditions:
        _fail(f"{source}: rule {len(rules)} ({rules[-1].name!r}): when",
              "the last rule must have no `when`, so that every request gets a decision")
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(f"{source}: description", f"expected a string, got {description!r}")
    advice = data.get("advice")
    if advice is not None and not isinstance(advice, dict):
        _fail(f"{source}: advice", f"expected a mapping, got {advice!r}")
    return RulePolicy(rules=rules, roles=dict(roles), description=description, advice=advice)


def load_policy(path) -> RulePolicy:
    """Reads and validates a policy YAML file. Raises FileNotFoundError or PolicyError (naming the file)."""
    path = Path(path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not valid YAML: {err}") from None
    return parse_policy(data, str(path))


def policy_to_dict(policy: RulePolicy) -> dict:
    """The inverse of `parse_policy`: parse_policy(policy_to_dict(p)) == p."""
    out: dict = {"version": SCHEMA_VERSION}
    if policy.description:
        out["description"] = policy.description
    out["roles"] = dict(policy.roles)
    out["rules"] = []
    for rule in policy.rules:
        raw: dict = {"name": rule.name}
        when: dict = {}
        for c in rule.conditions:
            if c.feature == "requires_icl":
                when[c.feature] = c.value
            else:
                when.setdefault(c.feature, {})[c.op] = list(c.value) if c.feature == "task" else c.value
        if when:
            raw["when"] = when
        raw["role"] = rule.role
        raw["confidence"] = rule.confidence
        if rule.reason:
            raw["reason"] = rule.reason
        if rule.fixed:
            raw["fixed"] = True
        out["rules"].append(raw)
    if policy.advice is not None:
        out["advice"] = policy.advice
    return out


def dump_policy(policy: RulePolicy, path=None, header: str = "") -> str:
    """Writes the policy as YAML to `path` (when given) and returns the text; `header` becomes leading comments."""
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    text += yaml.safe_dump(policy_to_dict(policy), sort_keys=False, default_flow_style=False, width=100)
    if path is not None:
        Path(path).write_text(text)
    return text
