"""The shipped Prometheus rules: promtool check and unit tests, coverage of every alert, exported metrics only."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import PROJECT_ROOT

from utils.metrics import exported_sample_names

pytestmark = pytest.mark.prometheus

RULES = PROJECT_ROOT / "etc" / "prometheus" / "batch_completion_rules.yml"
RULE_TESTS = PROJECT_ROOT / "etc" / "prometheus" / "batch_completion_rules.test.yml"
REQUIRED_ALERTS = {
    "BatchNotCompleteAtDeadline",
    "BatchFailed",
    "BatchNotStarted",
    "BatchHighCostPerLead",
    "BatchHighGpuSpendRate",
    "BatchMonitorDown",
    "BatchAlertEmailsStuck",
}
SOURCE_JOIN = "* on (job, instance, batch) group_left (host) anthrasite_batch_source_info"
# Series Prometheus itself provides.
PROMETHEUS_SERIES = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; bin/setup.sh --test installs it)")
    return path


def run(*command: str, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


def all_rules() -> list[dict]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def test_it_passes_promtool_check_rules(promtool):
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_it_passes_promtool_test_rules(promtool):
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_it_fails_the_rule_tests_when_a_threshold_changes(promtool, tmp_path):
    # The unit tests pin behaviour: a changed threshold must make them fail.
    text = RULES.read_text()
    threshold = "anthrasite_batch_cost_per_lead\n            * on (job, instance, batch) group_left (host) anthrasite_batch_source_info\n          ) > 0.5"
    assert threshold in text
    (tmp_path / RULES.name).write_text(text.replace(threshold, threshold[:-3] + "5"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "BatchHighCostPerLead" in result.stdout + result.stderr


def test_it_ships_the_required_alerts():
    names = [rule["alert"] for rule in alerts()]
    assert REQUIRED_ALERTS <= set(names)
    assert len(names) == len(set(names))


def test_it_tests_every_alert_firing_and_not_firing():
    cases: dict[str, set[str]] = {}
    for test in load(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add("firing" if case.get("exp_alerts") else "silent")
    for rule in alerts():
        assert cases.get(rule["alert"]) == {"firing", "silent"}, f"{rule['alert']}: {cases.get(rule['alert'])}"


def test_it_gives_every_alert_a_severity_summary_and_description():
    for rule in alerts():
        heartbeat = rule["alert"] == "BatchMonitorHeartbeat"  # always firing: routed to a dead-man's switch only
        assert rule["labels"]["severity"] in ({"none"} if heartbeat else {"critical", "warning"}), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_it_uses_only_metrics_this_project_exports():
    exported = exported_sample_names() | PROMETHEUS_SERIES
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    for rule in all_rules():
        for name in re.findall(r"\b(anthrasite_batch[a-z_:]*|up)\b(?!\s*\()", rule["expr"]):
            assert name in exported or name in recorded, f"{rule.get('alert') or rule.get('record')}: {name}"


def test_it_documents_the_default_thresholds_in_the_file():
    header = RULES.read_text().split("groups:")[0]
    for alert in (
        "BatchHighCostPerLead",
        "BatchHighGpuSpendRate",
        "BatchMonitorDown",
        "BatchAtRisk",
        "BatchAlertEmailsStuck",
    ):
        assert alert in header
    assert "$0.50" in header and "$20 per hour" in header


def test_it_names_no_scrape_job():
    # The user picks the job names in prometheus.yml: a rule selecting one can never match theirs.
    for rule in all_rules():
        assert not re.search(r"\bjob\s*=~?", rule["expr"]), rule.get("alert") or rule.get("record")


def test_it_counts_a_batch_once_when_the_monitor_and_a_pushgateway_both_report_it():
    # Every rule on series the Pushgateway also carries joins them to their source and aggregates
    # by (batch, host); only the monitor's own series (never pushed) may go without.
    pushed = exported_sample_names(include_monitor=False) - {"anthrasite_batch_source_info"}
    for rule in all_rules():
        expr = " ".join(rule["expr"].split())
        names = set(re.findall(r"\banthrasite_batch_[a-z_]+", expr))
        if names & pushed:
            assert SOURCE_JOIN in expr and "by (batch, host" in expr, rule.get("alert") or rule.get("record")
