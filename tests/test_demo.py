"""bin/demo.sh, the README's main job, run for real: monitor, nightly runner, outbox, status view."""

from __future__ import annotations

import email
import subprocess
from email import policy

import pytest
from conftest import PROJECT_ROOT, free_port

DEMO = PROJECT_ROOT / "bin" / "demo.sh"


def outbox_mails(outbox) -> list:
    return [email.message_from_bytes(path.read_bytes(), policy=policy.default) for path in sorted(outbox.glob("*.eml"))]


@pytest.mark.slow
def test_it_runs_the_main_job_end_to_end_with_the_embedded_defaults(tmp_path, base_env, tracker_file):
    outbox = tmp_path / "outbox"
    env = {**base_env, "BATCH_OUTBOX_DIR": str(outbox), "METRICS_PORT": str(free_port())}
    result = subprocess.run([str(DEMO)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    mails = outbox_mails(outbox)
    assert [m["X-Batch-Notification"] for m in mails] == ["alert", "recovery"]
    assert mails[0]["Subject"].startswith("[FAILED] nightly batch ")
    assert "failed at stage score" in mails[0]["Subject"]
    assert mails[1]["Subject"].startswith("[RECOVERED] nightly FAILED: batch ")
    assert mails[0]["X-Batch-Incident"] == mails[1]["X-Batch-Incident"]
    # The script shows the alert and the recovery it waited for, then the final check and status.
    assert f"   Subject: {mails[0]['Subject']}" in result.stdout
    assert f"   Subject: {mails[1]['Subject']}" in result.stdout
    # The same two notifications reached the demo's local webhook sink, with their Slack-style text.
    assert f"got: *{mails[0]['Subject']}*" in result.stdout and f"got: *{mails[1]['Subject']}*" in result.stdout
    assert "\nOK: batch " in result.stdout
    assert "state completed  100% complete" in result.stdout
    # Last, one monitor checks both jobs of etc/jobs.demo.toml: the weekly one failed, its alert names it.
    (weekly,) = outbox_mails(outbox / "jobs-demo")
    assert weekly["X-Batch-Job"] == "weekly-rescore"
    assert str(weekly["Subject"]).startswith("[FAILED] weekly-rescore batch ")
    assert "\nPROBLEM: weekly-rescore: failed: batch " in result.stdout
    assert f"   Subject: {weekly['Subject']}" in result.stdout
    # The monitor ran and stopped cleanly, logging where it was told to.
    monitor_log = (tmp_path / "logs" / "demo_monitor.log").read_text()
    assert "stopping on SIGTERM" in monitor_log
    assert tracker_file.exists()


def test_it_rejects_an_unknown_option_without_starting_anything(tmp_path, base_env):
    result = subprocess.run(
        [str(DEMO), "--bogus"], env=base_env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "demo.sh: unknown option '--bogus' (allowed: --help)"
    assert not (tmp_path / "logs").exists()
