"""The monitor's HTML status page for people, rendered on the server from one status dict.

Unknown shapes degrade to dashes, never errors; relative times come from ``status["now"]``, never a
clock read; every value is escaped and a Content-Security-Policy forbids scripts and external assets.
"""

from __future__ import annotations

from utils.deadline import format_duration
from utils.page_format import PageTimes, as_dict, as_dicts, duration, instant, is_number, percent, relative
from utils.page_format import escape as _e
from utils.status_chart import CHART_NIGHTS, render_chart

MAX_ALERTS_ON_PAGE = 10
OUTBOX_STALE_SECONDS = 600  # the outbox backs off to one attempt every 10 min: older means it is stuck
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'"  # no scripts, no external assets
PAGE_STYLE = """<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }
tr.active td { font-weight: bold; }
time { text-decoration: underline dotted #999; }
.ok { color: #1a7f37; } .bad { color: #b42318; } .empty { color: #666; }
.banner { font-weight: bold; border: 2px solid #b42318; padding: 0.5em 0.8em; background: #fef3f2; }
svg.nights { max-width: 100%; height: auto; font-size: 12px; fill: #444; margin-bottom: 1.5em; }
svg.nights .grid { stroke: #e4e7ec; }
</style>"""


def _deadline_html(deadline: object, times: PageTimes, time_left: bool = False) -> str:
    """``05:00 EST, Mon 23 Nov``, with ``time_left`` followed by `` (in 3 h 10 min)`` when known."""
    left = as_dict(deadline).get("seconds_left")
    if isinstance(deadline, dict):
        deadline = deadline.get("utc") or deadline.get("epoch") or deadline.get("local")
    text = times.at(deadline)
    return f"{text} ({relative(left)})" if time_left and is_number(left) else text


def _monitor(status: dict) -> dict:
    return as_dict(status.get("monitor"))


def _monitor_view(status: dict) -> list[dict] | None:
    """The monitor's open incidents when its view is current (it has checked and is healthy), else None:
    the page follows the view that alerts, and a monitor whose checks fail has a stale one."""
    monitor = _monitor(status)
    incidents = monitor.get("open_incidents")
    if not isinstance(incidents, list) or not monitor.get("last_check_at") or monitor.get("healthy") is False:
        return None
    return as_dicts(incidents)


def _verdict(status: dict) -> tuple[bool | None, object]:
    """``(ok, reason)`` for the headline: the monitor's verdict when its view is current, else the tracker's."""
    monitor = _monitor(status)
    if _monitor_view(status) is not None and isinstance(monitor.get("ok"), bool):
        return monitor["ok"], monitor.get("reason")
    ok = status.get("ok")
    return (ok if isinstance(ok, bool) else None), status.get("reason")


def _recent_alerts(status: dict) -> list[dict]:
    alerts = status.get("recent_alerts") or _monitor(status).get("recent_alerts") or []
    return as_dicts(alerts)[-MAX_ALERTS_ON_PAGE:][::-1]


def _open_incidents(status: dict) -> list[dict]:
    if (monitored := _monitor_view(status)) is not None:
        return monitored
    incidents = status.get("open_incidents") or _monitor(status).get("open_incidents") or []
    if isinstance(incidents, dict):
        incidents = list(incidents.values())
    return as_dicts(incidents)


def _failure_html(failure: object, times: PageTimes) -> str | None:
    """``at stage enrich: exit code 3 (02:00 EST, Mon 23 Nov)``; None when there is no failure."""
    if not isinstance(failure, dict):
        return None
    where = f"at stage {_e(failure['stage'])}" if failure.get("stage") else "stage not recorded"
    why = f": {_e(failure['reason'])}" if failure.get("reason") else ""
    when = times.at(failure["at"]) if failure.get("at") else "time unknown"
    return f"{where}{why} ({when})"


def _projection_rows(status: dict, incidents: list[dict], times: PageTimes) -> list[tuple[str, str]]:
    """Projected finish, at risk and slow stage, already escaped (empty when there is no batch)."""
    if status.get("id") is None:
        return []
    projection = status.get("projection")
    if not isinstance(projection, dict):
        return [("Projected finish", _e(None) if status.get("state") == "running" else "– (not running)")]
    if not projection.get("projected_completion_utc"):
        reason = projection.get("reason") or "cannot be projected"
        return [("Projected finish", f"– ({_e(reason)})")]
    finish = times.at(projection.get("projected_completion_utc"))
    past = projection.get("seconds_past_deadline")
    if is_number(past):
        finish += f" ({duration(past)} {'after' if past > 0 else 'before'} the deadline)"
    warning = next((i for i in incidents if i.get("kind") == "at_risk"), None)
    if warning is not None:
        risk = "YES: early warning " + ("sent" if warning.get("alerted_at") else "open")
    elif is_number(past):
        risk = f"projected {duration(past)} late, no early warning yet" if past > 0 else "no"
    else:
        risk = _e(None)
    rows = [("Projected finish", finish), ("At risk", risk)]
    if projection.get("slow_stage"):
        so_far, usual = (duration(projection.get(f"slow_stage_{n}_seconds")) for n in ("elapsed", "usual"))
        rows.append(("Slow stage", f"{_e(projection['slow_stage'])}: {so_far} so far, usually {usual}"))
    return rows


def outbox_problem(outbox: dict, now: float | None) -> str | None:
    """Why the alert outbox needs attention (failed alerts, an alert queued too long), else None."""
    failed, oldest = outbox.get("failed"), instant(outbox.get("oldest_pending_at"))
    problems = []
    if is_number(failed) and failed > 0:
        problems.append(f"{failed:g} alert(s) could not be delivered")
    if oldest is not None and now is not None and now - oldest > OUTBOX_STALE_SECONDS:
        problems.append(f"an alert has waited {format_duration(now - oldest)} for delivery")
    return "; ".join(problems) or None


def _outbox_row(outbox: dict, times: PageTimes) -> str:
    """``2 queued (oldest 14 min), 1 failed``, red when something is stuck or failed."""
    pending, failed = outbox.get("pending"), outbox.get("failed")
    oldest = instant(outbox.get("oldest_pending_at"))
    parts = [f"{_e(pending) if is_number(pending) else '?'} queued"]
    if oldest is not None:
        age = f", {duration(times.now - oldest)} old" if times.now is not None else ""
        parts[0] += f" (oldest since {times.at(oldest)}{age})"
    parts.append(f"{_e(failed) if is_number(failed) else '?'} failed")
    text = ", ".join(parts)
    return f"<span class='bad'>⚠ {text}</span>" if outbox_problem(outbox, times.now) else text


def _summary_rows(status: dict, incidents: list[dict], times: PageTimes) -> list[tuple[str, str]]:
    """The "current batch" table as (label, escaped HTML) pairs."""
    monitor = _monitor(status)
    tracker = as_dict(status.get("tracker"))
    rows: list[tuple[str, str]] = []
    if tracker.get("readable") is False:
        rows.append(("Tracker file", f"unreadable: {_e(tracker.get('error'))}"))
    deadline, upcoming = status.get("deadline"), status.get("next_deadline")
    if status.get("id") is None:
        rows.append(("Batch", "none recorded yet"))
    else:
        rows += [
            ("Batch", _e(status.get("id"))),
            ("State", _e(status.get("state"))),
            ("Completion", percent(status.get("completion_percentage"))),
            ("Active stage", _e(status.get("active_stage"))),
            ("Started", times.at(status.get("started_at"))),
            ("Elapsed", duration(status.get("elapsed_seconds"))),
            ("Ended", times.at(status.get("ended_at"))),
            ("Deadline", _deadline_html(deadline, times)),
            ("Time to deadline", relative(as_dict(deadline).get("seconds_left"))),
        ]
        rows += _projection_rows(status, incidents, times)
        if failure := _failure_html(status.get("failure"), times):
            rows.append(("Failure", failure))
        elif status.get("state") == "running" and as_dicts(status.get("failures")):
            earlier = _failure_html(as_dicts(status.get("failures"))[-1], times)
            rows.append(("Earlier failure", f"{earlier}, resumed since"))
        rows += [
            ("Cost per lead", _e(status.get("cost_per_lead"))),
            ("GPU spend ($)", _e(status.get("gpu_cost_dollars"))),
        ]
    if status.get("id") is None or as_dict(upcoming).get("utc") != as_dict(deadline).get("utc"):
        rows.append(("Next deadline", _deadline_html(upcoming, times, time_left=True)))
    if monitor:
        rows.append(("Monitor last check", times.ago(monitor.get("last_check_at"))))
        if monitor.get("healthy") is False:
            rows.append(("Monitor health", "<span class='bad'>checks are not completing: see /healthz</span>"))
        if monitor.get("delivery"):
            rows.append(("Alert delivery", _e(monitor.get("delivery"))))
        if isinstance(monitor.get("outbox"), dict):
            rows.append(("Alert outbox", _outbox_row(monitor["outbox"], times)))
    return rows


def _on_time_text(value: object) -> str:
    return {True: "on time", False: "LATE"}.get(value, "pending") if isinstance(value, bool | None) else _e(value)


def render_status_page(status: dict, *, json_path: str = "/status.json", home: str | None = None) -> str:
    """The HTML page for a dict shaped like ``get_batch_status()``, plus optional ``monitor``, ``history.nights``,
    ``recent_alerts``, ``open_incidents`` (top level or under ``monitor``) and ``job`` (a job's name and schedule,
    when one monitor watches several); ``json_path``: the link to its JSON; ``home``: a link back to every job."""
    status = status if isinstance(status, dict) else {}
    job = as_dict(status.get("job"))
    heading = f"Batch completion: {job['name']}" if job.get("name") else "Batch completion"
    times = PageTimes(status)
    incidents = _open_incidents(status)
    ok, reason = _verdict(status)
    verdict = "OK" if ok else ("PROBLEM" if ok is False else "unknown")
    css_class = "ok" if ok else "bad"
    summary = "\n".join(
        f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in _summary_rows(status, incidents, times)
    )
    banner = ""
    if outbox_trouble := outbox_problem(as_dict(_monitor(status).get("outbox")), times.now):
        banner = f"<p class='bad banner'>⚠ Alert e-mails are not getting through: {_e(outbox_trouble)}.</p>"
    failure_stage = as_dict(status.get("failure")).get("stage")

    def stage_row(s: dict) -> str:
        note = "failed here" if failure_stage and s.get("name") == failure_stage else ""
        if not note and s.get("name") and s.get("name") == status.get("active_stage"):
            note = "active"
        row_class = " class='active'" if note else ""
        return (
            f"<tr{row_class}><td>{_e(s.get('name'))}</td><td>{percent(s.get('percentage'))}</td>"
            f"<td>{_progress(s.get('percentage'))}</td>"
            f"<td>{times.at(s.get('updated_at'))}</td><td>{times.at(s.get('completed_at'))}</td><td>{_e(note)}</td></tr>"
        )

    stage_rows = "\n".join(stage_row(s) for s in as_dicts(status.get("stages")))
    incident_rows = "\n".join(
        f"<tr><td>{_e(i.get('kind'))}</td><td>{_e(i.get('summary'))}</td><td>{times.at(i.get('since'))}</td>"
        f"<td>{times.at(i.get('alerted_at')) if i.get('alerted_at') else 'not yet'}</td></tr>"
        for i in incidents
    )
    alert_rows = "\n".join(
        f"<tr><td>{times.at(a.get('at'))}</td><td>{_e(a.get('type'))}</td><td>{_e(a.get('kind'))}</td>"
        f"<td>{_e(a.get('subject'))}</td></tr>"
        for a in _recent_alerts(status)
    )
    history_rows = "\n".join(
        f"<tr><td>{_e(b.get('id'))}</td><td>{_e(b.get('state'))}</td><td>{times.at(b.get('started_at'))}</td>"
        f"<td>{duration(b.get('duration_seconds'))}</td><td>{_on_time_text(b.get('on_time'))}</td></tr>"
        for b in as_dicts(as_dict(status.get("history")).get("recent"))
    )

    def table(headers: list[str], body: str, empty: str) -> str:
        if not body:
            return f"<p class='empty'>{_e(empty)}</p>"
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{PAGE_POLICY}">
<meta http-equiv="refresh" content="30">
<title>{_e(heading)}: {_e(verdict)}</title>
{PAGE_STYLE}
</head>
<body>
<h1>{_e(heading)}: <span class="{css_class}">{_e(verdict)}</span></h1>
{_schedule_html(job)}
<p>{_e(reason)}</p>
{banner}
<p class="empty">as of {times.at(status.get("now"))}</p>
<h2>Current batch</h2>
<table><tbody>
{summary}
</tbody></table>
<h2>Stages</h2>
{table(["stage", "complete", "", "updated", "completed", ""], stage_rows, "no stages recorded")}
<h2>Open incidents</h2>
{table(["kind", "summary", "since", "alerted"], incident_rows, "none")}
{_excused_html(status, times)}
<h2>Recent alerts</h2>
{table(["at", "type", "kind", "subject"], alert_rows, "no alerts sent")}
<h2>Last {CHART_NIGHTS} nights</h2>
{render_chart(status, times)}
<h2>Last batches</h2>
{table(["batch", "state", "started", "duration", "on time"], history_rows, "no finished batches yet")}
<p>{_links_html(json_path, home)}</p>
</body>
</html>
"""


def _links_html(json_path: str, home: str | None) -> str:
    links = [(home, "all jobs")] if home else []
    links += [("/metrics", "/metrics"), (json_path, json_path), ("/healthz", "/healthz")]
    return " · ".join(f'<a href="{_e(href)}">{_e(text)}</a>' for href, text in links)


def _schedule_text(job: dict) -> str:
    """``deadline 05:00 America/New_York, sat; start by 22:00``: a job's schedule in words."""
    days = job.get("days")
    every_day = not isinstance(days, list) or len(days) == 7
    text = f"deadline {job.get('deadline')} {job.get('timezone')}, " + ("every day" if every_day else ", ".join(days))
    return text + (f"; start by {job['start_by']}" if job.get("start_by") else "")


def _schedule_html(job: dict) -> str:
    return f"<p class='empty'>Job {_e(job.get('name'))}: {_e(_schedule_text(job))}</p>" if job.get("name") else ""


def render_jobs_page(overview: dict) -> str:
    """The HTML page of every job one monitor watches, from :meth:`utils.monitor_jobs.JobsMonitor.status`: a line
    a job (verdict, state, progress, deadlines in the job's zone, its page) and the shared alert delivery."""
    overview = overview if isinstance(overview, dict) else {}
    ok = overview.get("ok")
    verdict = "OK" if ok is True else ("PROBLEM" if ok is False else "unknown")
    now = overview.get("now")
    monitor = _monitor(overview)

    def job_row(job: dict) -> str:
        times = PageTimes({"now": now, "next_deadline": {"timezone": job.get("timezone")}})
        job_ok = job.get("ok")
        css = "ok" if job_ok is True else "bad"
        shown = "OK" if job_ok is True else ("PROBLEM" if job_ok is False else "unknown")
        batch = as_dict(job.get("batch_deadline"))
        due = _deadline_html(batch, times, time_left=True) if batch else _e(None)
        incidents = ", ".join(str(kind) for kind in job.get("open_incidents") or []) or "none"
        excused = " (skipped or paused: no alert)" if as_dict(job.get("next_deadline")).get("excused") else ""
        return (
            f"<tr class='job'><td><a href=\"{_e(job.get('url'))}\">{_e(job.get('name'))}</a></td>"
            f"<td class='{css}'>{_e(shown)}</td><td>{_e(job.get('state'))}</td>"
            f"<td>{percent(job.get('completion_percentage'))} {_progress(job.get('completion_percentage'))}</td>"
            f"<td>{due}</td><td>{_deadline_html(job.get('next_deadline'), times, time_left=True)}{excused}</td>"
            f"<td>{_e(_schedule_text(job))}</td><td>{_e(incidents)}</td><td>{_e(job.get('reason'))}</td></tr>"
        )

    rows = "\n".join(job_row(job) for job in as_dicts(overview.get("jobs")))
    head = "".join(
        f"<th>{h}</th>"
        for h in ("job", "verdict", "state", "progress", "batch deadline", "next deadline", "schedule", "open", "why")
    )
    delivery = []
    if monitor.get("delivery"):
        delivery.append(("Alert delivery", _e(monitor.get("delivery"))))
    if isinstance(monitor.get("outbox"), dict):
        delivery.append(("Alert outbox", _outbox_row(monitor["outbox"], PageTimes({"now": now}))))
    if monitor.get("healthy") is False:
        delivery.append(("Monitor health", f"<span class='bad'>{_e(monitor.get('health'))}</span>"))
    delivery_rows = "\n".join(f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in delivery)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{PAGE_POLICY}">
<meta http-equiv="refresh" content="30">
<title>Batch jobs: {_e(verdict)}</title>
{PAGE_STYLE}
</head>
<body>
<h1>Batch jobs: <span class="{"ok" if ok is True else "bad"}">{_e(verdict)}</span></h1>
<p>{_e(overview.get("reason"))}</p>
<p class="empty">as of {PageTimes({"now": now}).at(now)} (UTC); each job's times in its own zone</p>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<table><tbody>
{delivery_rows}
</tbody></table>
<p>{_links_html("/status.json", None)}</p>
</body>
</html>
"""


def _progress(percentage: object) -> str:
    """A 0-100 progress bar (at 0 for anything that is not a number)."""
    return f"<progress max='100' value='{_e(percentage if is_number(percentage) else 0)}'></progress>"


def _excused_html(status: dict, times: PageTimes) -> str:
    """The nights deliberately not run (``skip``, ``pause``: no missing or late alert for them), when there are any."""
    excused = as_dict(status.get("excused"))
    rows = [
        f"<tr><td>{_e(n.get('date'))}</td><td>{_e(n.get('kind'))}</td><td>{times.at(n.get('deadline_utc'))}</td>"
        f"<td>{_e(n.get('reason') or '-')}</td></tr>"
        for n in as_dicts(excused.get("nights"))
    ]
    rows += [
        f"<tr><td>{times.at(p.get('from'))} to {times.at(p.get('until'))}</td>"
        f"<td>{'paused now' if p.get('active') else 'pause'}</td><td></td><td>{_e(p.get('reason') or '-')}</td></tr>"
        for p in as_dicts(excused.get("pauses"))
    ]
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("night", "why", "deadline", "reason"))
    body = "\n".join(rows)
    return f"<h2>Skipped and paused nights</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
