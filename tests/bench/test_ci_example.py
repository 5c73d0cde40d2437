"""The CI gate example: it triggers on dependency and model-config changes and weekly, runs bench then gate with
the flags the commands take, and uploads the results even when the gate fails."""

from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / "examples/ci/model-regression-gate.yml"


def test_workflow_triggers_on_dependencies_model_configs_and_weekly():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as the boolean True
    for event in ("push", "pull_request"):
        paths = triggers[event]["paths"]
        assert "pyproject.toml" in paths and "**/config.json" in paths and "examples/models/**" in paths
    cron = triggers["schedule"][0]["cron"].split()
    assert len(cron) == 5 and cron[2:4] == ["*", "*"] and cron[4] != "*"  # once a week


def test_workflow_runs_bench_then_gate_and_always_uploads_results():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["bench-and-gate"]["steps"]
    runs = [s.get("run", "") for s in steps]
    bench = next(i for i, r in enumerate(runs) if "ssmkit bench" in r)
    gate = next(i for i, r in enumerate(runs) if "ssmkit gate" in r)
    assert bench < gate
    for flag in ("--min-quality", "--max-p95-latency-ms", "--max-memory-gb"):
        assert flag in runs[gate]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "results/"
