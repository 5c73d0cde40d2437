"""Request routing: request features -> a routing decision, by a rule policy (YAML) and a feedback policy that
learns from outcomes (SQLite), behind per-backend circuit breakers. Pure Python: no model, no network.
"""

from ssmkit.route.advise import Advice, advice_policy, advise
from ssmkit.route.breaker import CircuitBreaker
from ssmkit.route.config import BreakerConfig, FeedbackConfig, RewardConfig, RouterConfig, load_config, parse_config
from ssmkit.route.features import RequestFeatures, RoutingDecision, bucket_of, length_band
from ssmkit.route.feedback import reward
from ssmkit.route.policy_file import PolicyError, dump_policy, load_policy, parse_policy, policy_to_dict
from ssmkit.route.report import bucket_report, format_report
from ssmkit.route.router import Router
from ssmkit.route.rules import Condition, Rule, RulePolicy, default_policy, route

__all__ = [
    "Advice", "BreakerConfig", "CircuitBreaker", "Condition", "FeedbackConfig", "PolicyError", "RequestFeatures",
    "RewardConfig", "Router", "RouterConfig", "RoutingDecision", "Rule", "RulePolicy", "advice_policy", "advise",
    "bucket_of", "bucket_report", "default_policy", "dump_policy", "format_report", "length_band", "load_config",
    "load_policy", "parse_config", "parse_policy", "policy_to_dict", "reward", "route",
]
