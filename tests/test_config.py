"""utils.config: TrackerConfig and MonitorConfig, every variable validated once, bad values named,
the deadline built once, the password never shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from utils.config import PROJECT_ROOT, VARIABLES, ConfigError, MonitorConfig, Secret, TrackerConfig, help_text
from utils.state_store import sibling_file
from utils.values import FrozenInstanceError

COMMON_MONITOR_VARIABLES = (
    "BATCH_TRACKER_FILE BATCH_COMPLETION_DEADLINE_HOUR BATCH_COMPLETION_DEADLINE_MINUTE BATCH_COMPLETION_TIMEZONE "
    "BATCH_HISTORY_LIMIT BATCH_EXPECTED_STAGES BATCH_NAME BATCH_JOBS_FILE BATCH_PUSHGATEWAY_URL "
    "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS BATCH_ALERT_REPEAT_SECONDS BATCH_AT_RISK_MARGIN_SECONDS "
    "BATCH_OUTBOX_DIR ALERT_EMAIL_TO ALERT_EMAIL_FROM SMTP_SERVER SMTP_PORT SMTP_SECURITY SMTP_USERNAME "
    "SMTP_PASSWORD SMTP_PASSWORD_FILE SMTP_TIMEOUT_SECONDS METRICS_ADDR METRICS_PORT LOG_LEVEL "
    "BATCH_CLI_COMMAND BATCH_RUN_COMMAND BATCH_RESUME_COMMAND LOG_DIR STATUS_PAGE_URL ALERT_OUTPUT_TAIL_LINES "
    "BATCH_PING_URL ALERTMANAGER_URL ALERT_WEBHOOK_URL ALERT_EMAIL"
).split()


def test_it_uses_the_documented_defaults():
    config = MonitorConfig.from_env({})
    assert config.check_interval_seconds == 300
    assert config.alert_repeat_seconds == 0
    assert config.at_risk_margin_seconds == 1800
    assert config.outbox_dir == os.path.join(PROJECT_ROOT, "data", "outbox")
    assert config.email_to == ("alerts@anthrasite.com",)
    assert config.email_from == "leadfactory@anthrasite.com"
    assert config.smtp_server is None
    assert (config.smtp_security, config.smtp_port) == ("starttls", 587)
    assert config.smtp_username is None and config.smtp_password is None
    assert config.smtp_timeout_seconds == 10
    assert (config.metrics_addr, config.metrics_port) == ("127.0.0.1", 9469)
    assert config.log_level == "INFO"
    assert config.tracker == TrackerConfig.from_env({})
    assert config.monitor_state_file == sibling_file(config.tracker.tracker_file, "monitor")
    assert config.monitor_state_file.endswith(os.path.join("data", "batch_tracker.monitor.json"))


def test_it_parses_every_variable(tmp_path):
    env = {
        "BATCH_TRACKER_FILE": str(tmp_path / "t.json"),
        "BATCH_COMPLETION_DEADLINE_HOUR": "6",
        "BATCH_COMPLETION_DEADLINE_MINUTE": "30",
        "BATCH_COMPLETION_TIMEZONE": "Europe/Berlin",
        "BATCH_NAME": "weekly",
        "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS": "60",
        "BATCH_ALERT_REPEAT_SECONDS": "3600",
        "BATCH_AT_RISK_MARGIN_SECONDS": "900",
        "BATCH_OUTBOX_DIR": str(tmp_path / "outbox"),
        "ALERT_EMAIL_TO": " ops@example.com, oncall@example.org ,ops@example.com",
        "ALERT_EMAIL_FROM": "monitor@example.net",
        "SMTP_SERVER": "mail.example.net",
        "SMTP_SECURITY": "SSL",
        "SMTP_USERNAME": "monitor",
        "SMTP_PASSWORD": "s3cret pass",
        "SMTP_TIMEOUT_SECONDS": "2.5",
        "METRICS_ADDR": "::1",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "debug",
    }
    config = MonitorConfig.from_env(env)
    assert config.tracker.tracker_file == str(tmp_path / "t.json")
    assert (config.tracker.deadline_hour, config.tracker.deadline_minute) == (6, 30)
    assert config.tracker.timezone == "Europe/Berlin" and config.tracker.batch_name == "weekly"
    assert (config.check_interval_seconds, config.alert_repeat_seconds, config.at_risk_margin_seconds) == (
        60,
        3600,
        900,
    )
    assert config.outbox_dir == str(tmp_path / "outbox")
    assert config.email_to == ("ops@example.com", "oncall@example.org")
    assert config.email_from == "monitor@example.net" and config.sender_domain == "example.net"
    assert (config.smtp_server, config.smtp_security, config.smtp_port) == ("mail.example.net", "ssl", 465)
    assert config.smtp_username == "monitor" and config.smtp_password.reveal() == "s3cret pass"
    assert config.smtp_timeout_seconds == 2.5
    assert (config.metrics_addr, config.metrics_port) == ("::1", 0)
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("plain", 25)])
def test_it_defaults_the_smtp_port_by_security(security, port):
    assert MonitorConfig.from_env({"SMTP_SECURITY": security}).smtp_port == port
    assert MonitorConfig.from_env({"SMTP_SECURITY": security, "SMTP_PORT": "2525"}).smtp_port == 2525


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", "0"),
        ("BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", "5m"),
        ("BATCH_ALERT_REPEAT_SECONDS", "-1"),
        ("BATCH_AT_RISK_MARGIN_SECONDS", "lots"),
        ("ALERT_EMAIL_TO", "not-an-address"),
        ("ALERT_EMAIL_TO", "ops@example.com, two words@example.com"),
        ("ALERT_EMAIL_TO", "ops@example.com\r\nBcc: evil@example.com"),
        ("ALERT_EMAIL_FROM", "a@example.com,b@example.com"),
        ("SMTP_SERVER", "mail example com"),
        ("SMTP_PORT", "70000"),
        ("SMTP_SECURITY", "tls"),
        ("SMTP_TIMEOUT_SECONDS", "nan"),
        ("SMTP_TIMEOUT_SECONDS", "0"),
        ("METRICS_ADDR", "127.0.0.1; rm"),
        ("METRICS_PORT", "http"),
        ("LOG_LEVEL", "LOUD"),
        ("BATCH_COMPLETION_TIMEZONE", "Mars/Olympus"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "24"),
        ("BATCH_NAME", "night ly"),
    ],
)
def test_it_names_the_bad_variable(variable, value):
    with pytest.raises(ConfigError) as raised:
        MonitorConfig.from_env({variable: value})
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message and "\r" not in message


def test_it_raises_its_own_config_error_for_monitor_variables():
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        MonitorConfig.from_env({"LOG_LEVEL": "LOUD"})


def test_it_reads_the_password_file_once_at_start_up(tmp_path):
    secret_file = tmp_path / "smtp_password"
    secret_file.write_text("correct horse\n")
    config = MonitorConfig.from_env({"SMTP_USERNAME": "monitor", "SMTP_PASSWORD_FILE": str(secret_file)})
    secret_file.unlink()
    assert config.smtp_password.reveal() == "correct horse"


def test_it_never_shows_the_password(tmp_path, caplog):
    config = MonitorConfig.from_env(
        {"SMTP_SERVER": "mail.example.com", "SMTP_USERNAME": "monitor", "SMTP_PASSWORD": "hunter2-secret"}
    )
    logging.getLogger("test").warning("config: %s %r", config, config.smtp_password)
    shown = repr(config) + str(config) + str(config.smtp_password) + config.describe_smtp() + caplog.text
    assert "hunter2-secret" not in shown
    assert "monitor" in config.describe_smtp()
    assert Secret("x") == Secret("x") and Secret("x") != Secret("y")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SMTP_USERNAME": "u", "SMTP_PASSWORD": "p", "SMTP_PASSWORD_FILE": "/etc/x"}, "both set"),
        ({"SMTP_PASSWORD": "p"}, "SMTP_USERNAME"),
        ({"SMTP_USERNAME": "u", "SMTP_PASSWORD_FILE": "/nonexistent/secret"}, "SMTP_PASSWORD_FILE"),
    ],
)
def test_it_rejects_inconsistent_password_settings(env, needle):
    with pytest.raises(ConfigError, match=needle):
        MonitorConfig.from_env(env)


def test_it_rejects_an_empty_or_multi_line_password_file_without_showing_it(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"SMTP_PASSWORD_FILE.*empty"):
        MonitorConfig.from_env({"SMTP_USERNAME": "u", "SMTP_PASSWORD_FILE": str(empty)})
    two_lines = tmp_path / "two"
    two_lines.write_text("line-one-secret\nline-two-secret\n")
    with pytest.raises(ConfigError) as raised:
        MonitorConfig.from_env({"SMTP_USERNAME": "u", "SMTP_PASSWORD_FILE": str(two_lines)})
    assert "SMTP_PASSWORD_FILE" in str(raised.value)
    assert "line-one-secret" not in str(raised.value) and "line-two-secret" not in str(raised.value)


def test_it_is_frozen():
    config = MonitorConfig.from_env({})
    with pytest.raises(FrozenInstanceError):
        config.check_interval_seconds = 1  # type: ignore[misc]


def test_it_resolves_relative_paths_from_the_project_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = MonitorConfig.from_env({"BATCH_OUTBOX_DIR": "var/outbox", "BATCH_TRACKER_FILE": "var/t.json"})
    assert config.outbox_dir == os.path.join(PROJECT_ROOT, "var", "outbox")
    assert config.tracker.tracker_file == os.path.join(PROJECT_ROOT, "var", "t.json")


def test_it_documents_every_variable_with_its_default():
    documented = [name for name, _, _ in VARIABLES]
    assert sorted(documented) == sorted(COMMON_MONITOR_VARIABLES)
    text = help_text()
    for name, default, _ in VARIABLES:
        assert name in text and f"[{default}]" in text


# --------------------------------------------------------------------------- field trial (issue 10.11)

MONITOR = os.path.join(PROJECT_ROOT, "bin", "batch_completion_monitor.py")

ACCEPTED_ALTHOUGH_WRONG = [
    ("SMTP_SERVER", ":::::"),
    ("SMTP_SERVER", "999.1.1.1"),
    ("SMTP_SERVER", "mail..example.com"),
    ("SMTP_SERVER", "-mail.example.com"),
    ("SMTP_SERVER", "m\u00e4il.example.com"),
    ("METRICS_ADDR", "999.1.1.1"),
    ("METRICS_ADDR", "127.0.0.256"),
    ("METRICS_ADDR", ":::::"),
    ("BATCH_COMPLETION_DEADLINE_HOUR", "\u0665"),  # Arabic-Indic five: int() takes it
    ("BATCH_COMPLETION_DEADLINE_MINUTE", "3_0"),
    ("METRICS_PORT", "\uff19\uff14\uff16\uff19"),  # full-width 9469
    ("SMTP_PORT", " 25 "),
    ("BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", "6_0"),
    ("SMTP_TIMEOUT_SECONDS", " 5 "),
    ("SMTP_TIMEOUT_SECONDS", "5_0"),
    ("SMTP_TIMEOUT_SECONDS", "\u0665"),
    ("SMTP_TIMEOUT_SECONDS", "infinity"),
]


@pytest.mark.parametrize(("variable", "value"), ACCEPTED_ALTHOUGH_WRONG)
def test_it_refuses_values_python_parses_but_are_wrong(variable, value):
    with pytest.raises(ConfigError) as raised:
        MonitorConfig.from_env({variable: value})
    message = str(raised.value)
    assert f"{variable}={value.strip()!r}" in message or f"{variable}={value!r}" in message
    assert "\n" not in message


def test_it_refuses_a_tracker_file_that_names_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"BATCH_TRACKER_FILE=.* names a directory"):
        MonitorConfig.from_env({"BATCH_TRACKER_FILE": str(tmp_path)})


@pytest.mark.parametrize(
    ("variable", "value", "stored"),
    [
        ("SMTP_SERVER", "smtp.example.com", "smtp.example.com"),
        ("SMTP_SERVER", "mail-relay_1.internal.", "mail-relay_1.internal."),
        ("SMTP_SERVER", "192.0.2.7", "192.0.2.7"),
        ("SMTP_SERVER", "[2001:db8::1]", "2001:db8::1"),
        ("SMTP_SERVER", "localhost", "localhost"),
        ("METRICS_ADDR", "::", "::"),
        ("METRICS_ADDR", "0.0.0.0", "0.0.0.0"),
        ("METRICS_ADDR", "[::1]", "::1"),
        ("METRICS_ADDR", "monitor.example.net", "monitor.example.net"),
    ],
)
def test_it_accepts_real_host_names_and_addresses(variable, value, stored):
    config = MonitorConfig.from_env({variable: value})
    assert (config.smtp_server if variable == "SMTP_SERVER" else config.metrics_addr) == stored


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_SERVER", ":::::"),
        ("METRICS_ADDR", "999.1.1.1"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "\u0665"),
        ("SMTP_TIMEOUT_SECONDS", "5_0"),
        ("BATCH_TRACKER_FILE", "{tmp}"),
    ],
)
def test_it_makes_the_monitor_exit_2_with_one_line_naming_the_value(base_env, tmp_path, variable, value):
    value = value.format(tmp=tmp_path)
    env = dict(base_env, BATCH_OUTBOX_DIR=str(tmp_path / "outbox"), METRICS_PORT="0", **{variable: value})
    result = subprocess.run(
        [sys.executable, MONITOR, "--once"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{variable}={value!r}" in lines[0], lines
    assert not (tmp_path / "outbox").exists()


# --------------------------------------------------------------------------- TrackerConfig (moved from test_batch_tracker)


def test_it_reads_the_defaults_from_an_empty_environment():
    config = TrackerConfig.from_env({})
    assert config.tracker_file == os.path.join(PROJECT_ROOT, "data", "batch_tracker.json")
    assert (config.deadline_hour, config.deadline_minute, config.timezone) == (5, 0, "America/New_York")
    assert (config.history_limit, config.expected_stages, config.batch_name) == (90, (), "nightly")
    assert config.pushgateway_url is None


def test_it_reads_every_variable(tmp_path):
    config = TrackerConfig.from_env(
        {
            "BATCH_TRACKER_FILE": str(tmp_path / "t.json"),
            "BATCH_COMPLETION_DEADLINE_HOUR": "6",
            "BATCH_COMPLETION_DEADLINE_MINUTE": "30",
            "BATCH_COMPLETION_TIMEZONE": "Europe/Berlin",
            "BATCH_HISTORY_LIMIT": "10",
            "BATCH_EXPECTED_STAGES": "scrape, enrich ,score",
            "BATCH_NAME": "weekly",
            "BATCH_PUSHGATEWAY_URL": "http://127.0.0.1:9091",
        }
    )
    assert config.tracker_file == str(tmp_path / "t.json")
    assert (config.deadline_hour, config.deadline_minute, config.timezone) == (6, 30, "Europe/Berlin")
    assert config.history_limit == 10
    assert config.expected_stages == ("scrape", "enrich", "score")
    assert (config.batch_name, config.pushgateway_url) == ("weekly", "http://127.0.0.1:9091")
    assert config.deadline().zone.zone == "Europe/Berlin"


def test_it_resolves_a_relative_tracker_file_against_the_project_root_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrackerConfig.from_env({"BATCH_TRACKER_FILE": "state/tracker.json"})
    assert config.tracker_file == os.path.join(PROJECT_ROOT, "state", "tracker.json")
    assert not config.tracker_file.startswith(str(tmp_path))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_COMPLETION_DEADLINE_HOUR", "24"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "-1"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "abc"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "5.5"),
        ("BATCH_COMPLETION_DEADLINE_MINUTE", "60"),
        ("BATCH_COMPLETION_DEADLINE_MINUTE", "abc"),
        ("BATCH_HISTORY_LIMIT", "0"),
        ("BATCH_HISTORY_LIMIT", "many"),
        ("BATCH_EXPECTED_STAGES", "scrape,bad name"),
        ("BATCH_EXPECTED_STAGES", "scrape,\u00e9"),
        ("BATCH_PUSHGATEWAY_URL", "ftp://gateway:9091"),
        ("BATCH_PUSHGATEWAY_URL", "gateway:9091"),
        ("BATCH_PUSHGATEWAY_URL", "http://"),
        ("BATCH_NAME", "night ly"),
    ],
)
def test_it_refuses_a_bad_setting_with_a_message_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as raised:
        TrackerConfig.from_env({variable: value})
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message


def test_it_refuses_an_unknown_time_zone_naming_the_variable():
    config = TrackerConfig.from_env({"BATCH_COMPLETION_TIMEZONE": "Mars/Olympus"})
    with pytest.raises(ConfigError, match="BATCH_COMPLETION_TIMEZONE='Mars/Olympus'"):
        config.deadline()


def test_it_keeps_the_config_immutable(tracker_config):
    with pytest.raises(AttributeError):
        tracker_config.history_limit = 5
    changed = tracker_config.replace(history_limit=5)
    assert (changed.history_limit, tracker_config.history_limit) == (5, 90)
    assert changed != tracker_config and tracker_config == tracker_config.replace()


def test_it_builds_the_deadline_once_per_config(tracker_config):
    deadline = tracker_config.deadline()
    assert tracker_config.deadline() is deadline  # built once, then kept
    assert (deadline.hour, deadline.minute, deadline.zone.zone) == (5, 0, "America/New_York")
    later = tracker_config.replace(deadline_hour=6)
    assert later.deadline() is not deadline and later.deadline().hour == 6
    assert later.replace(deadline_hour=5) == tracker_config  # the kept deadline is not part of equality
    monitor = MonitorConfig.from_env({"BATCH_COMPLETION_TIMEZONE": "Europe/Berlin"})
    assert monitor.tracker.deadline() is monitor.tracker.deadline()  # validated at start-up, then reused


def test_it_has_one_config_error_that_the_cli_maps_to_exit_2():
    from utils import batch_tracker, errors

    assert getattr(batch_tracker, "ConfigError", ConfigError) is ConfigError  # no second class
    assert issubclass(ConfigError, errors.TrackerError) and ConfigError.exit_code == errors.EXIT_USAGE == 2
    for build in (
        lambda: TrackerConfig.from_env({"BATCH_NAME": "a b"}),
        lambda: MonitorConfig.from_env({"SMTP_PORT": "x"}),
    ):
        with pytest.raises(ConfigError):
            build()
    assert not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "utils", "monitor_config.py"))
