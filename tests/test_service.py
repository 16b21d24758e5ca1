"""The service entry point (utils/service.py) in process: one boundary maps domain errors to exit codes."""

from __future__ import annotations

import logging

import pytest

from utils import service
from utils.errors import EXIT_STORAGE, EXIT_USAGE


@pytest.fixture(autouse=True)
def keep_root_logging():
    """``main`` configures the root logger as a process would; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def env(base_env, tmp_path) -> dict:
    return dict(base_env, BATCH_OUTBOX_DIR=str(tmp_path / "outbox"), METRICS_PORT="0")


def test_it_exits_2_with_one_line_naming_a_bad_setting(env, capsys, tmp_path):
    code = service.main(["--once"], environ=dict(env, SMTP_SECURITY="tls"))
    err = capsys.readouterr().err
    assert code == EXIT_USAGE == 2
    assert err.count("\n") == 1 and err.startswith("batch_completion_monitor: configuration error: ")
    assert "SMTP_SECURITY" in err
    assert not (tmp_path / "outbox").exists()


def test_it_exits_2_for_an_unknown_outbox_id(env, capsys):
    (code, err) = (service.main(["outbox", "retry", "nosuchid"], environ=env), capsys.readouterr().err)
    assert code == 2 and err.startswith("batch_completion_monitor: outbox retry: ") and "'nosuchid'" in err


def test_it_exits_3_when_its_state_cannot_be_written(env, capsys, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    code = service.main(["--once"], environ=dict(env, BATCH_TRACKER_FILE=str(blocker / "batch_tracker.json")))
    err = capsys.readouterr().err
    assert code == EXIT_STORAGE == 3
    assert "batch_completion_monitor: storage error: " in err


def test_it_exits_0_with_once_and_prints_one_status_line(env, capsys):
    assert service.main(["--once"], environ=env) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: no batch recorded yet") and out.count("\n") == 1


def test_it_maps_every_domain_error_in_one_table():
    assert [(error.__name__, code) for error, code, _label in service.EXIT_CODES] == [
        ("ConfigError", 2),
        ("UnknownMessageError", 2),
        ("StorageError", 3),
    ]
