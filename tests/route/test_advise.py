"""`advise`: each of the four outcomes for the answers that lead to it, with only the questions on the path asked;
the policy it writes loads and routes as the advice says; missing answers are asked on a terminal or named as flags.
"""

import io

import pytest

from ssmkit.route import RequestFeatures, advise, default_policy, load_policy
from ssmkit.route.commands import advise_main

PATHS = [
    # answers -> (outcome, questions on the path)
    ({"long_context": False}, ("transformer", ["long_context"])),
    ({"long_context": False, "gpu_80gb": False, "icl_central": True}, ("transformer", ["long_context"])),
    ({"long_context": True, "gpu_80gb": True}, ("transformer-chunked-prefill", ["long_context", "gpu_80gb"])),
    ({"long_context": True, "gpu_80gb": True, "icl_central": True},
     ("transformer-chunked-prefill", ["long_context", "gpu_80gb"])),
    ({"long_context": True, "gpu_80gb": False, "icl_central": True},
     ("hybrid", ["long_context", "gpu_80gb", "icl_central"])),
    ({"long_context": True, "gpu_80gb": False, "icl_central": False, "quality_required": True},
     ("hybrid", ["long_context", "gpu_80gb", "icl_central", "quality_required"])),
    ({"long_context": True, "gpu_80gb": False, "icl_central": False, "quality_required": False},
     ("mamba-ab", ["long_context", "gpu_80gb", "icl_central", "quality_required"])),
]


@pytest.mark.parametrize("answers,expected", PATHS)
def test_advise_reaches_each_outcome_asking_only_the_questions_on_its_path(answers, expected):
    advice = advise(answers)
    assert (advice.outcome, [k for k, _, _ in advice.steps]) == expected
    assert all(reason for _, _, reason in advice.steps)


# outcome -> (flags, {features: role it routes to})
WRITTEN = {
    "transformer": ([False, None, None, None], {RequestFeatures(100_000, gpu_memory_gb=8): "transformer"}),
    "transformer-chunked-prefill": ([True, True, None, None], {RequestFeatures(100_000): "transformer"}),
    "hybrid": ([True, False, True, None], {RequestFeatures(32_001): "hybrid", RequestFeatures(32_000): "transformer"}),
    "mamba-ab": ([True, False, False, False], {RequestFeatures(40_000, gpu_memory_gb=24): "mamba",
                                               RequestFeatures(100): "transformer"}),
}


@pytest.mark.parametrize("outcome", sorted(WRITTEN))
def test_written_policy_loads_and_routes_as_advised(tmp_path, capsys, outcome):
    flags, routes = WRITTEN[outcome]
    path = tmp_path / "policy.yaml"
    roles = {"transformer": "llama", "mamba": "mamba2", "hybrid": "jamba"}
    assert advise_main(*flags, write_policy=str(path), roles=roles, interactive=False) == 0
    out = capsys.readouterr().out
    assert f"policy written to {path}" in out and out.count("=> ") == 1
    policy = load_policy(path)
    assert policy.advice["outcome"] == outcome
    assert policy.advice["answers"] == {k: v for k, v in zip(
        ("long_context", "gpu_80gb", "icl_central", "quality_required"), flags) if v is not None}
    for features, role in routes.items():
        d = policy.route(features)
        assert (d.role, d.backend) == (role, roles[role])
    if outcome == "mamba-ab":
        assert policy.rules == default_policy().rules


def test_missing_answer_without_a_terminal_names_the_flag(capsys):
    assert advise_main(long_context=True, interactive=False) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssmkit advise: error: gpu_80gb: ") and "--gpu-80gb or --no-gpu-80gb" in err


def test_missing_answers_are_asked_on_a_terminal():
    stdin, stdout = io.StringIO("yes\nmaybe\nn\nN\ny\n"), io.StringIO()
    assert advise_main(stdin=stdin, stdout=stdout, interactive=True) == 0
    text = stdout.getvalue()
    assert text.count("[y/n]") == 5 and "please answer y or n" in text  # "maybe" is asked again
    assert text.rstrip().endswith("=> A hybrid: mostly Mamba layers plus some attention layers (or Jamba-style).")


def test_flags_answer_what_they_can_and_the_terminal_the_rest():
    stdin, stdout = io.StringIO("n\n"), io.StringIO()
    assert advise_main(long_context=True, gpu_80gb=False, icl_central=False, stdin=stdin, stdout=stdout,
                       interactive=True) == 0
    assert stdout.getvalue().count("[y/n]") == 1 and "A/B test" in stdout.getvalue()


def test_end_of_input_is_an_error_not_a_hang(capsys):
    assert advise_main(stdin=io.StringIO(""), stdout=io.StringIO(), interactive=True) == 2
    assert "long_context: no answer" in capsys.readouterr().err


def test_unknown_answer_key_is_rejected():
    with pytest.raises(ValueError, match="answers: unknown question 'gpu'"):
        advise({"gpu": True})
