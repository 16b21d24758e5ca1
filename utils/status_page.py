"""The monitor's HTML status page for people, rendered on the server from one status dict.

Contract of :func:`render_status_page`:

- Input: a dict shaped like :func:`utils.batch_tracker.get_batch_status` (plus the
  monitor's ``monitor`` section and, optionally, ``history.nights``: the last batches
  as :func:`utils.status_report.summarize_batch` dicts, newest first). Unknown shapes
  degrade to dashes, never errors.
- One instant per page: every relative time ("in 2 h", "47 min ago", the age of the
  oldest queued alert, a running batch on the chart) is computed from ``status["now"]``,
  never from a clock read while rendering.
- Human-facing times are shown in the deadline's zone with its abbreviation
  (``05:00 EST, Tue 1 Dec``); the UTC ISO-8601 instant is in the ``title`` (hover) and
  ``datetime`` attributes of a ``<time>`` element.
- Safe by itself: every value is HTML-escaped, control characters (escape sequences
  included), bidirectional overrides and lone surrogates are replaced by visible
  stand-ins, and a Content-Security-Policy forbids scripts and external assets.
- The last :data:`CHART_NIGHTS` batches' finish times against their deadlines are an
  inline SVG chart (no JavaScript): one ``.point`` per batch, a deadline line, late,
  failed and unfinished batches marked by shape and colour.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re

import pytz

from utils.deadline import format_duration, format_utc

MAX_ALERTS_ON_PAGE = 10
CHART_NIGHTS = 30
OUTBOX_STALE_SECONDS = 600  # the outbox backs off to one attempt every 10 min: older means it is stuck
HOUR = 3600
DAY = 86_400

# C0 and C1 controls (tab and newline are plain whitespace in HTML), DEL, the bidirectional
# overrides and isolates that can reorder what a person reads, and lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _stand_in(match: re.Match) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ESC shows as ␛
    if code == 0x7F:
        return "\u2421"
    return "\ufffd"


def _e(value: object) -> str:
    """Escape anything for HTML text or attribute context; None shows as a dash."""
    if value is None:
        return "–"
    return html.escape(_UNSAFE.sub(_stand_in, str(value)), quote=True)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _instant(value: object) -> float | None:
    """An epoch number or an ISO-8601 string with an offset as epoch seconds; None otherwise."""
    if _number(value) and 0 <= value < 1e11:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is not None:
            return parsed.timestamp()
    return None


class _Times:
    """Formats instants for people in the deadline's zone; ``now`` is the page's one instant."""

    def __init__(self, status: dict):
        zone_name = _dict(status.get("deadline")).get("timezone") or _dict(status.get("next_deadline")).get("timezone")
        try:
            self.zone = pytz.timezone(str(zone_name)) if zone_name else pytz.utc
        except (pytz.UnknownTimeZoneError, ValueError):
            self.zone = pytz.utc
        self.now = _instant(status.get("now"))

    def local(self, instant: float) -> dt.datetime:
        utc = pytz.utc.localize(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=instant))
        return self.zone.normalize(utc.astimezone(self.zone))

    def text(self, instant: float) -> str:
        """``05:00 EST, Tue 1 Dec`` (with the year when it is not the page's year)."""
        local = self.local(instant)
        text = f"{local:%H:%M} {local.tzname()}, {local:%a} {local.day} {local:%b}"
        if self.now is not None and self.local(self.now).year != local.year:
            text += f" {local.year}"
        return text

    def at(self, value: object) -> str:
        """HTML for an instant: local text, the UTC ISO instant on hover; anything else escaped."""
        instant = _instant(value)
        if instant is None:
            return _e(value)
        utc = format_utc(instant)
        return f'<time datetime="{utc}" title="{utc}">{_e(self.text(instant))}</time>'

    def ago(self, value: object) -> str:
        """``<time> (12 min ago)`` against the page's instant."""
        instant = _instant(value)
        if instant is None or self.now is None:
            return self.at(value)
        if abs(instant - self.now) < 1:
            return f"{self.at(value)} (just now)"
        return f"{self.at(value)} ({_relative(instant - self.now)})"


def _percent(value: object) -> str:
    return f"{value:.1f}%" if _number(value) else _e(value)


def _duration(seconds: object) -> str:
    """Seconds as ``2 h 03 min`` (escaped); anything but a finite number is a dash."""
    return _e(format_duration(seconds)) if _number(seconds) else _e(None)


def _relative(seconds_left: object) -> str:
    """Seconds until an instant as ``in 2 h 03 min`` or ``47 min ago``; a dash when unknown."""
    if not _number(seconds_left):
        return _e(None)
    return f"in {_duration(seconds_left)}" if seconds_left >= 0 else f"{_duration(seconds_left)} ago"


def _deadline_text(deadline: object, times: _Times) -> str:
    if isinstance(deadline, dict):
        return times.at(deadline.get("utc") or deadline.get("epoch") or deadline.get("local"))
    return times.at(deadline)


def _deadline_with_time_left(deadline: object, times: _Times) -> str:
    """``05:00 EST, Mon 23 Nov (in 3 h 10 min)``: the instant and how far away it is."""
    text = _deadline_text(deadline, times)
    left = _dict(deadline).get("seconds_left")
    return f"{text} ({_relative(left)})" if _number(left) else text


def _monitor(status: dict) -> dict:
    return _dict(status.get("monitor"))


def _monitor_view(status: dict) -> list[dict] | None:
    """The monitor's open incidents when its view is current (it has checked and is healthy), else None.

    The monitor's view is the one that alerts: it counts deadlines only from when it
    started watching and adds the early warnings, so the page follows it. A monitor
    whose checks fail has a stale view; then the tracker's own verdict speaks.
    """
    monitor = _monitor(status)
    incidents = monitor.get("open_incidents")
    if not isinstance(incidents, list) or not monitor.get("last_check_at") or monitor.get("healthy") is False:
        return None
    return _dicts(incidents)


def _verdict(status: dict) -> tuple[bool | None, object]:
    """``(ok, reason)`` for the headline: the monitor's verdict when its view is current, else the tracker's."""
    monitor = _monitor(status)
    if _monitor_view(status) is not None and isinstance(monitor.get("ok"), bool):
        return monitor["ok"], monitor.get("reason")
    ok = status.get("ok")
    return (ok if isinstance(ok, bool) else None), status.get("reason")


def _recent_alerts(status: dict) -> list[dict]:
    alerts = status.get("recent_alerts") or _monitor(status).get("recent_alerts") or []
    return _dicts(alerts)[-MAX_ALERTS_ON_PAGE:][::-1]


def _open_incidents(status: dict) -> list[dict]:
    monitored = _monitor_view(status)
    if monitored is not None:
        return monitored
    incidents = status.get("open_incidents") or _monitor(status).get("open_incidents") or []
    if isinstance(incidents, dict):
        incidents = list(incidents.values())
    return _dicts(incidents)


def _failure_html(failure: object, times: _Times) -> str | None:
    """``at stage enrich: exit code 3 (02:00 EST, Mon 23 Nov)``; None when there is no failure."""
    if not isinstance(failure, dict):
        return None
    where = f"at stage {_e(failure['stage'])}" if failure.get("stage") else "stage not recorded"
    why = f": {_e(failure['reason'])}" if failure.get("reason") else ""
    when = times.at(failure["at"]) if failure.get("at") else "time unknown"
    return f"{where}{why} ({when})"


def _projection_rows(status: dict, incidents: list[dict], times: _Times) -> list[tuple[str, str]]:
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
    if _number(past):
        finish += f" ({_duration(past)} {'after' if past > 0 else 'before'} the deadline)"
    warning = next((i for i in incidents if i.get("kind") == "at_risk"), None)
    if warning is not None:
        risk = "YES: early warning " + ("sent" if warning.get("alerted_at") else "open")
    elif _number(past):
        risk = f"projected {_duration(past)} late, no early warning yet" if past > 0 else "no"
    else:
        risk = _e(None)
    rows = [("Projected finish", finish), ("At risk", risk)]
    if projection.get("slow_stage"):
        rows.append(
            (
                "Slow stage",
                f"{_e(projection['slow_stage'])}: {_duration(projection.get('slow_stage_elapsed_seconds'))} so far, "
                f"usually {_duration(projection.get('slow_stage_usual_seconds'))}",
            )
        )
    return rows


def outbox_problem(outbox: dict, now: float | None) -> str | None:
    """Why the alert outbox needs attention (failed alerts, an alert queued too long), else None."""
    failed, oldest = outbox.get("failed"), _instant(outbox.get("oldest_pending_at"))
    problems = []
    if _number(failed) and failed > 0:
        problems.append(f"{failed:g} alert(s) could not be delivered")
    if oldest is not None and now is not None and now - oldest > OUTBOX_STALE_SECONDS:
        problems.append(f"an alert has waited {format_duration(now - oldest)} for delivery")
    return "; ".join(problems) or None


def _outbox_row(outbox: dict, times: _Times) -> str:
    """``2 queued (oldest 14 min), 1 failed``, red when something is stuck or failed."""
    pending, failed = outbox.get("pending"), outbox.get("failed")
    oldest = _instant(outbox.get("oldest_pending_at"))
    parts = [f"{_e(pending) if _number(pending) else '?'} queued"]
    if oldest is not None:
        age = f", {_duration(times.now - oldest)} old" if times.now is not None else ""
        parts[0] += f" (oldest since {times.at(oldest)}{age})"
    parts.append(f"{_e(failed) if _number(failed) else '?'} failed")
    text = ", ".join(parts)
    if outbox_problem(outbox, times.now):
        return f"<span class='bad'>⚠ {text}</span>"
    return text


def _summary_rows(status: dict, incidents: list[dict], times: _Times) -> list[tuple[str, str]]:
    """The "current batch" table as (label, escaped HTML) pairs."""
    monitor = _monitor(status)
    tracker = _dict(status.get("tracker"))
    rows: list[tuple[str, str]] = []
    if tracker.get("readable") is False:
        rows.append(("Tracker file", f"unreadable: {_e(tracker.get('error'))}"))
    if status.get("id") is None:
        rows.append(("Batch", "none recorded yet"))
        rows.append(("Next deadline", _deadline_with_time_left(status.get("next_deadline"), times)))
    else:
        deadline = status.get("deadline")
        rows += [
            ("Batch", _e(status.get("id"))),
            ("State", _e(status.get("state"))),
            ("Completion", _percent(status.get("completion_percentage"))),
            ("Active stage", _e(status.get("active_stage"))),
            ("Started", times.at(status.get("started_at"))),
            ("Elapsed", _duration(status.get("elapsed_seconds"))),
            ("Ended", times.at(status.get("ended_at"))),
            ("Deadline", _deadline_text(deadline, times)),
            ("Time to deadline", _relative(_dict(deadline).get("seconds_left"))),
        ]
        rows += _projection_rows(status, incidents, times)
        failure = _failure_html(status.get("failure"), times)
        if failure:
            rows.append(("Failure", failure))
        elif status.get("state") == "running" and _dicts(status.get("failures")):
            earlier = _failure_html(_dicts(status.get("failures"))[-1], times)
            if earlier:
                rows.append(("Earlier failure", f"{earlier}, resumed since"))
        rows += [
            ("Cost per lead", _e(status.get("cost_per_lead"))),
            ("GPU spend ($)", _e(status.get("gpu_cost_dollars"))),
        ]
        if _dict(status.get("next_deadline")).get("utc") != _dict(deadline).get("utc"):
            rows.append(("Next deadline", _deadline_with_time_left(status.get("next_deadline"), times)))
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


# --------------------------------------------------------------------------- the chart of the last nights

CHART_WIDTH, CHART_HEIGHT = 760, 300
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 88, 24, 34, 44
COLOURS = {"on-time": "#1a7f37", "late": "#b42318", "failed": "#7a0e0e", "unfinished": "#667085", "running": "#175cd3"}
LEGEND = (
    ("on-time", "on time"),
    ("late", "late"),
    ("failed", "failed"),
    ("unfinished", "abandoned"),
    ("running", "running"),
)


def _nights(status: dict) -> list[dict]:
    """The last :data:`CHART_NIGHTS` batches, oldest first, the current one included."""
    history = _dict(status.get("history"))
    batches = _dicts(history.get("nights")) or _dicts(history.get("recent"))
    current = status.get("id")
    if current is not None and all(b.get("id") != current for b in batches):
        record = {key: status.get(key) for key in ("id", "state", "started_at", "ended_at", "on_time")}
        batches = [dict(record, deadline_utc=_dict(status.get("deadline")).get("utc")), *batches]
    return batches[:CHART_NIGHTS][::-1]


def _point(batch: dict, now: float | None) -> tuple[str, float | None, float | None]:
    """``(kind, deadline, finish)`` of a batch: finish is when it ended (or now, while it runs)."""
    due, ended = _instant(batch.get("deadline_utc")), _instant(batch.get("ended_at"))
    state = batch.get("state")
    if state == "running":
        return "running", due, now
    if state == "completed":
        late = batch.get("on_time") is False or (ended is not None and due is not None and ended > due)
        return ("late" if late else "on-time"), due, ended
    return ("failed" if state == "failed" else "unfinished"), due, ended


def _marker(kind: str, x: float, y: float, title: str, batch_id: object) -> str:
    colour = COLOURS[kind]
    attributes = f"class='point {kind}' data-batch='{_e(batch_id)}'"
    if kind == "late":  # a bigger diamond: the eye finds the misses first
        shape = f"<path {attributes} d='M{x:.1f},{y - 8:.1f} l8,8 l-8,8 l-8,-8 z' fill='{colour}'>"
    elif kind == "failed":
        shape = (
            f"<path {attributes} d='M{x - 6:.1f},{y - 6:.1f} l12,12 m0,-12 l-12,12' stroke='{colour}' "
            "stroke-width='3' fill='none'>"
        )
    elif kind in ("unfinished", "running"):
        shape = (
            f"<circle {attributes} cx='{x:.1f}' cy='{y:.1f}' r='5.5' fill='#fff' stroke='{colour}' stroke-width='2.5'>"
        )
    else:
        shape = f"<circle {attributes} cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{colour}'>"
    closing = "</path>" if shape.startswith("<path") else "</circle>"
    return f"{shape}<title>{_e(title)}</title>{closing}"


def render_chart(status: dict, times: _Times | None = None) -> str:
    """The last nights' finish times against their deadlines as inline SVG (see the module docstring).

    x: the nights, by the local date of each batch's deadline; y: when the batch ended,
    relative to its deadline, labelled with the local clock time (the deadline is the
    same local time every night). A batch without a known deadline is left out.
    """
    times = times or _Times(status)
    nights = []
    for batch in _nights(status):
        kind, due, finish = _point(batch, times.now)
        if due is not None:
            nights.append((batch, kind, due, finish))
    if not nights:
        return "<p class='empty'>no batches to chart yet</p>"
    first_day = times.local(nights[0][2]).date()
    span = max(1, (times.local(nights[-1][2]).date() - first_day).days)
    offsets = [finish - due for _, _, due, finish in nights if finish is not None]
    low = max(-12, min(-2, math.floor(min(offsets, default=0) / HOUR)))
    high = min(12, max(1, math.ceil(max(offsets, default=0) / HOUR)))
    plot_w = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_h = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM

    def x_of(due: float) -> float:
        return CHART_LEFT + 12 + (plot_w - 24) * (times.local(due).date() - first_day).days / span

    def y_of(offset: float) -> float:
        hours = max(low, min(high, offset / HOUR))
        return CHART_TOP + plot_h * (high - hours) / (high - low)

    latest_due = times.local(nights[-1][2])
    zone = latest_due.tzname()
    parts = [
        f"<rect x='{CHART_LEFT}' y='{CHART_TOP}' width='{plot_w}' height='{y_of(0) - CHART_TOP:.1f}' fill='#fef3f2'/>",
    ]
    step = 1 if high - low <= 8 else 2
    for hours in range(low, high + 1, step):
        y = y_of(hours * HOUR)
        clock = (latest_due + dt.timedelta(hours=hours)).strftime("%H:%M")
        parts.append(
            f"<line class='grid' x1='{CHART_LEFT}' x2='{CHART_WIDTH - CHART_RIGHT}' y1='{y:.1f}' y2='{y:.1f}'/>"
        )
        parts.append(f"<text x='{CHART_LEFT - 8}' y='{y + 4:.1f}' text-anchor='end'>{_e(clock)}</text>")
    y0 = y_of(0)
    parts.append(
        f"<line class='deadline' x1='{CHART_LEFT}' x2='{CHART_WIDTH - CHART_RIGHT}' y1='{y0:.1f}' y2='{y0:.1f}' "
        "stroke='#b42318' stroke-width='2' stroke-dasharray='6 4'/>"
    )
    parts.append(
        f"<text class='deadline-label' x='{CHART_WIDTH - CHART_RIGHT - 4}' y='{y0 - 6:.1f}' text-anchor='end' "
        f"fill='#b42318'>deadline {latest_due:%H:%M} {_e(zone)}</text>"
    )
    labels: list[tuple[float, str]] = []  # (x, date): about eight, never overlapping, the newest night always
    label_every = max(1, math.ceil(len(nights) / 8))
    for index, (_, _, due, _) in enumerate(nights):
        if index % label_every and index != len(nights) - 1:
            continue
        x, local = x_of(due), times.local(due)
        if labels and x - labels[-1][0] < 48:
            if index != len(nights) - 1:
                continue
            labels.pop()
        labels.append((x, f"{local.day} {local:%b}"))
    for x, text in labels:
        parts.append(f"<text x='{x:.1f}' y='{CHART_HEIGHT - CHART_BOTTOM + 18}' text-anchor='middle'>{text}</text>")
    for batch, kind, due, finish in nights:
        x = x_of(due)
        if finish is None:  # an old record without an end time: put it on the deadline line
            y, when = y0, "end time unknown"
        else:
            y = y_of(finish - due)
            side = "after" if finish > due else "before"
            when = f"{times.text(finish)}, {format_duration(finish - due)} {side} the deadline"
        label = {"on-time": "finished", "late": "finished LATE", "failed": "FAILED", "running": "still running"}
        title = f"{batch.get('id')}: {label.get(kind, str(batch.get('state')))} {when}"
        parts.append(_marker(kind, x, y, title, batch.get("id")))
    legend_x = CHART_LEFT
    for kind, text in LEGEND:
        parts.append(_marker(kind, legend_x + 6, 16, text, "legend").replace("class='point ", "class='key "))
        parts.append(f"<text x='{legend_x + 16}' y='20'>{_e(text)}</text>")
        legend_x += 24 + 8 * len(text)
    late = sum(1 for _, kind, _, _ in nights if kind in ("late", "failed", "unfinished"))
    summary = f"finish times of the last {len(nights)} batches against the deadline; {late} late or not finished"
    return (
        f"<svg class='nights' role='img' aria-label='{_e(summary)}' viewBox='0 0 {CHART_WIDTH} {CHART_HEIGHT}' "
        f"width='{CHART_WIDTH}' height='{CHART_HEIGHT}'>"
        f"<title>{_e(summary)}</title>\n" + "\n".join(parts) + "\n</svg>"
    )


# --------------------------------------------------------------------------- the page


def render_status_page(status: dict) -> str:
    """The HTML status page for a status dict shaped like ``get_batch_status()``.

    Shows the verdict, the current batch (state, overall and per-stage percentages,
    elapsed, deadline and time left, projected finish or why there is none, at risk,
    failure), the alert outbox, open incidents, recent alerts, the chart of the last
    nights and the last batches. Optional keys ``recent_alerts`` / ``open_incidents``
    (top level or under ``monitor``) add the alert sections; a ``monitor`` section that
    has checked and is healthy decides the verdict and the incidents shown.
    """
    status = status if isinstance(status, dict) else {}
    times = _Times(status)
    incidents = _open_incidents(status)
    ok, reason = _verdict(status)
    verdict = "OK" if ok else ("PROBLEM" if ok is False else "unknown")
    css_class = "ok" if ok else "bad"
    summary = "\n".join(
        f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in _summary_rows(status, incidents, times)
    )
    outbox_trouble = outbox_problem(_dict(_monitor(status).get("outbox")), times.now)
    banner = (
        f"<p class='bad banner'>⚠ Alert e-mails are not getting through: {_e(outbox_trouble)}.</p>"
        if outbox_trouble
        else ""
    )
    failure_stage = _dict(status.get("failure")).get("stage")

    def stage_row(s: dict) -> str:
        note = "failed here" if failure_stage and s.get("name") == failure_stage else ""
        if not note and s.get("name") and s.get("name") == status.get("active_stage"):
            note = "active"
        percentage = s.get("percentage") if _number(s.get("percentage")) else 0
        row_class = " class='active'" if note else ""
        return (
            f"<tr{row_class}><td>{_e(s.get('name'))}</td><td>{_percent(s.get('percentage'))}</td>"
            f"<td><progress max='100' value='{_e(percentage)}'></progress></td>"
            f"<td>{times.at(s.get('updated_at'))}</td><td>{times.at(s.get('completed_at'))}</td><td>{_e(note)}</td></tr>"
        )

    stage_rows = "\n".join(stage_row(s) for s in _dicts(status.get("stages")))
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
        f"<td>{_duration(b.get('duration_seconds'))}</td><td>{_on_time_text(b.get('on_time'))}</td></tr>"
        for b in _dicts(_dict(status.get("history")).get("recent"))
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
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta http-equiv="refresh" content="30">
<title>Batch completion: {_e(verdict)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }}
tr.active td {{ font-weight: bold; }}
time {{ text-decoration: underline dotted #999; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #b42318; }} .empty {{ color: #666; }}
.banner {{ font-weight: bold; border: 2px solid #b42318; padding: 0.5em 0.8em; background: #fef3f2; }}
svg.nights {{ max-width: 100%; height: auto; font-size: 12px; fill: #444; margin-bottom: 1.5em; }}
svg.nights .grid {{ stroke: #e4e7ec; }}
</style>
</head>
<body>
<h1>Batch completion: <span class="{css_class}">{_e(verdict)}</span></h1>
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
<h2>Recent alerts</h2>
{table(["at", "type", "kind", "subject"], alert_rows, "no alerts sent")}
<h2>Last {CHART_NIGHTS} nights</h2>
{render_chart(status, times)}
<h2>Last batches</h2>
{table(["batch", "state", "started", "duration", "on time"], history_rows, "no finished batches yet")}
<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a> · <a href="/healthz">/healthz</a></p>
</body>
</html>
"""
