"""Push the batch's metrics to a Prometheus Pushgateway from the tracker CLI.

For hosts without a monitor: with ``BATCH_PUSHGATEWAY_URL`` set, every write hook
pushes the ``anthrasite_batch_*`` families of :mod:`utils.metrics` except the
monitor's own, to ``<url>/metrics/job/<BATCH_NAME>/instance/<hostname>``, by HTTP PUT
(the whole group is replaced: a stage gone from a new batch does not linger).
``source_info{source="push"}`` carries the batch name and host the monitor's series
do, so rules and dashboard count a batch once when both report it. Totals are the
tracker's own counters (``Snapshot.counters``): pushing writes no file; values that
depend on now (``next_deadline_timestamp_seconds``) are as of the push. Only the CLI
imports this module, only when a URL is set (hooks without one never import
prometheus_client).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, push_to_gateway

from utils.metrics import batch_metric_families, host_name

LOGGER = logging.getLogger(__name__)
PUSH_TIMEOUT_SECONDS = 3.0


class PushError(Exception):
    """The Pushgateway could not be reached or refused the push."""


class _SnapshotCollector:
    """Serves the families of one snapshot (already taken), for one push."""

    def __init__(self, families: list):
        self._families = families

    def collect(self):
        return iter(self._families)


def build_registry(config, snapshot, now: float) -> CollectorRegistry:
    """A fresh registry holding the batch families for ``snapshot`` at ``now`` (reads and writes nothing)."""
    families = batch_metric_families(
        snapshot,
        now,
        config.deadline(),
        None,
        include_monitor=False,
        batch_name=config.batch_name,
        host=host_name(),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(families))
    return registry


def push_batch_metrics(config, snapshot, now: float, event: str, *, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
    """Push the batch metrics for ``snapshot`` to ``config.pushgateway_url`` after ``event``.

    Groups by ``job=config.batch_name`` and ``instance=<hostname>``. Raises :class:`PushError`
    (one line: the reason and the event) on any failure to deliver; does nothing without a URL.
    """
    url = config.pushgateway_url
    if not url:
        return
    registry = build_registry(config, snapshot, now)
    grouping = {"instance": host_name()}
    try:
        push_to_gateway(url, job=config.batch_name, grouping_key=grouping, registry=registry, timeout=timeout)
    except OSError as exc:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise PushError(f"{reason} (after '{event}')") from exc
    LOGGER.debug("pushed batch metrics to %s after %s (job=%s, %s)", url, event, config.batch_name, grouping)
