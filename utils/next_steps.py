"""What on-call should run next, per kind of incident, with this installation's commands and paths.

``ctx`` is the mail context (:class:`utils.mail_compose.MailContext`); ``batch`` a :class:`utils.model.Batch` or None.
"""

from __future__ import annotations

import os
import shlex
import time

from utils.model import Batch

# Where the monitor's own log is when it runs as the installed service (bin/install_batch_monitor_service.sh).
MONITOR_UNIT = "batch-completion-monitor"
RUNNER_TIMER = "nightly-batch.timer"
# The template unit's instances: nightly-batch@run (the timer's) and nightly-batch@resume.
RUNNER_UNITS = "'nightly-batch@*'"


def batch_log_file(ctx, batch: Batch | None) -> str:
    """The runner's log for ``batch``'s latest run (named by the UTC day the run started), else a glob."""
    log_dir = ctx.log_dir.rstrip("/") or "/"
    if batch is None:
        return f"{shlex.quote(log_dir)}/nightly_*.log"
    run_started = max([batch.started_at, *batch.resumed_at])
    day = time.strftime("%Y%m%d", time.gmtime(run_started))
    return shlex.quote(os.path.join(log_dir, f"nightly_{day}.log"))


def next_steps(ctx, kind: str, batch: Batch | None) -> list[tuple[str, str]]:
    """(command, what it shows or does) for an incident of ``kind``. Only a failed batch is offered the resume
    command: the runner refuses to resume any other, and a late or missing one needs a look first."""
    cli = ctx.cli_command
    log = batch_log_file(ctx, batch)
    stage = (batch.active_stage() if batch else None) or ""
    status = (f"{cli} status", "the batch's stages, deadline and projection")
    history = (f"{cli} history", "recent batches, their durations and outcomes")
    tail = (f"tail -n 50 {log}", f"the latest lines of the batch's log{f' (stage {stage})' if stage else ''}")
    monitor_log = [(f"journalctl -u {MONITOR_UNIT} -n 100", "the monitor's own log")] if ctx.under_systemd else []
    if kind == "failed":
        what = f"the failed stage {stage}'s full output" if stage else "the failed run's full output"
        steps = [(f"grep -n -e ERROR -e '\\[{stage}\\]' {log}" if stage else f"grep -n ERROR {log}", what), status]
        if batch is None or batch.is_failed:  # once resumed, it is running again: nothing to resume
            resume = "after fixing the cause: re-run from the failed stage (finished stages are skipped)"
            steps.append((ctx.resume_command, resume))
        return steps
    if kind in ("late", "at_risk"):
        return [status, tail, history]
    if kind in ("missing", "late_start"):
        if ctx.under_systemd:
            scheduler = [
                (f"systemctl list-timers {RUNNER_TIMER}", "when the nightly run last fired and fires next"),
                (f"journalctl -u {RUNNER_UNITS} -n 50", "what the last nightly run said"),
            ]
        else:
            scheduler = [("crontab -l", "is the nightly run scheduled")]
        return [
            *scheduler,
            (f"ls -lt {shlex.quote(ctx.log_dir)} | head", "the latest nightly logs (did a run start at all?)"),
            history,
            (ctx.run_command, "start the batch now (it is recorded as late)"),
        ]
    if kind == "tracker_unreadable":
        folder = shlex.quote(os.path.dirname(ctx.tracker_file) or ".")
        return [
            (f"{cli} status", "the read error"),
            (f"ls -l {folder}", "the tracker file and any copy moved aside (*.corrupt-*)"),
            *monitor_log,
        ]
    if kind == "too_short":
        return [history, (f"grep -n -i -e error -e warning {log}", "stages that did little or complained")]
    if kind == "stalled_stage":
        alive = f"systemctl status {RUNNER_UNITS}" if ctx.under_systemd else "pgrep -af run_nightly.sh"
        return [tail, status, (alive, "is the nightly run still alive")]
    return [status, tail, *monitor_log]
