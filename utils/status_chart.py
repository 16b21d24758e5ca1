"""The status page's chart: the last nights' finish times against their deadlines, as inline SVG.

One ``.point`` per batch (``data-batch`` = its id, a ``<title>`` saying when it finished), a dashed
``.deadline`` line, late, failed and unfinished batches marked by shape and colour; no JavaScript.
"""

from __future__ import annotations

import datetime as dt
import math

from utils.deadline import format_duration
from utils.page_format import PageTimes, as_dict, as_dicts, escape, instant

CHART_NIGHTS = 30
HOUR = 3600

CHART_WIDTH, CHART_HEIGHT = 760, 300
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 88, 24, 34, 44
COLOURS = {"on-time": "#1a7f37", "late": "#b42318", "failed": "#7a0e0e", "unfinished": "#667085", "running": "#175cd3"}
TITLES = {"on-time": "finished", "late": "finished LATE", "failed": "FAILED", "running": "still running"}
LEGEND = {"on-time": "on time", "late": "late", "failed": "failed", "unfinished": "abandoned", "running": "running"}


def _nights(status: dict) -> list[dict]:
    """The last :data:`CHART_NIGHTS` batches, oldest first, the current one included."""
    history = as_dict(status.get("history"))
    batches = as_dicts(history.get("nights")) or as_dicts(history.get("recent"))
    current = status.get("id")
    if current is not None and all(b.get("id") != current for b in batches):
        record = {key: status.get(key) for key in ("id", "state", "started_at", "ended_at", "on_time")}
        batches = [dict(record, deadline_utc=as_dict(status.get("deadline")).get("utc")), *batches]
    return batches[:CHART_NIGHTS][::-1]


def _point(batch: dict, now: float | None) -> tuple[str, float | None, float | None]:
    """``(kind, deadline, finish)`` of a batch: finish is when it ended (or now, while it runs)."""
    due, ended = instant(batch.get("deadline_utc")), instant(batch.get("ended_at"))
    state = batch.get("state")
    if state == "running":
        return "running", due, now
    if state == "completed":
        late = batch.get("on_time") is False or (ended is not None and due is not None and ended > due)
        return ("late" if late else "on-time"), due, ended
    return ("failed" if state == "failed" else "unfinished"), due, ended


def _marker(kind: str, x: float, y: float, title: str, batch_id: object) -> str:
    colour = COLOURS[kind]
    attributes = f"class='point {kind}' data-batch='{escape(batch_id)}'"
    if kind == "late":  # a bigger diamond: the eye finds the misses first
        tag, shape = "path", f"d='M{x:.1f},{y - 8:.1f} l8,8 l-8,8 l-8,-8 z' fill='{colour}'"
    elif kind == "failed":
        cross = f"M{x - 6:.1f},{y - 6:.1f} l12,12 m0,-12 l-12,12"
        tag, shape = "path", f"d='{cross}' stroke='{colour}' stroke-width='3' fill='none'"
    elif kind in ("unfinished", "running"):
        tag, shape = "circle", f"cx='{x:.1f}' cy='{y:.1f}' r='5.5' fill='#fff' stroke='{colour}' stroke-width='2.5'"
    else:
        tag, shape = "circle", f"cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{colour}'"
    return f"<{tag} {attributes} {shape}><title>{escape(title)}</title></{tag}>"


def render_chart(status: dict, times: PageTimes | None = None) -> str:
    """One ``<svg>`` from ``history.nights`` (else ``history.recent``, newest first) plus the current batch.

    x: the local date of each batch's deadline; y: when it ended (a running one: now) relative to its deadline,
    labelled with the local clock time. A batch without a known deadline is left out.
    """
    times = times or PageTimes(status)
    points = ((batch, *_point(batch, times.now)) for batch in _nights(status))
    nights = [(batch, kind, due, finish) for batch, kind, due, finish in points if due is not None]
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
    y0 = y_of(0)
    parts = [f"<rect x='{CHART_LEFT}' y='{CHART_TOP}' width='{plot_w}' height='{y0 - CHART_TOP:.1f}' fill='#fef3f2'/>"]
    for hours in range(low, high + 1, 1 if high - low <= 8 else 2):
        y = y_of(hours * HOUR)
        clock = (latest_due + dt.timedelta(hours=hours)).strftime("%H:%M")
        parts += [
            f"<line class='grid' x1='{CHART_LEFT}' x2='{CHART_WIDTH - CHART_RIGHT}' y1='{y:.1f}' y2='{y:.1f}'/>",
            f"<text x='{CHART_LEFT - 8}' y='{y + 4:.1f}' text-anchor='end'>{escape(clock)}</text>",
        ]
    parts += [
        f"<line class='deadline' x1='{CHART_LEFT}' x2='{CHART_WIDTH - CHART_RIGHT}' y1='{y0:.1f}' y2='{y0:.1f}' "
        "stroke='#b42318' stroke-width='2' stroke-dasharray='6 4'/>",
        f"<text class='deadline-label' x='{CHART_WIDTH - CHART_RIGHT - 4}' y='{y0 - 6:.1f}' text-anchor='end' "
        f"fill='#b42318'>deadline {latest_due:%H:%M} {escape(latest_due.tzname())}</text>",
    ]
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
        if finish is None:  # an old record without an end time: put it on the deadline line
            y, when = y0, "end time unknown"
        else:
            y = y_of(finish - due)
            side = "after" if finish > due else "before"
            when = f"{times.text(finish)}, {format_duration(finish - due)} {side} the deadline"
        title = f"{batch.get('id')}: {TITLES.get(kind, str(batch.get('state')))} {when}"
        parts.append(_marker(kind, x_of(due), y, title, batch.get("id")))
    legend_x = CHART_LEFT
    for kind, text in LEGEND.items():
        parts.append(_marker(kind, legend_x + 6, 16, text, "legend").replace("class='point ", "class='key "))
        parts.append(f"<text x='{legend_x + 16}' y='20'>{escape(text)}</text>")
        legend_x += 24 + 8 * len(text)
    late = sum(1 for _, kind, _, _ in nights if kind in ("late", "failed", "unfinished"))
    summary = f"finish times of the last {len(nights)} batches against the deadline; {late} late or not finished"
    return (
        f"<svg class='nights' role='img' aria-label='{escape(summary)}' viewBox='0 0 {CHART_WIDTH} {CHART_HEIGHT}' "
        f"width='{CHART_WIDTH}' height='{CHART_HEIGHT}'>"
        f"<title>{escape(summary)}</title>\n" + "\n".join(parts) + "\n</svg>"
    )
