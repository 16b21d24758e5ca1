"""Push the batch's metrics to a Prometheus Pushgateway from the tracker CLI.

For batches that run on hosts without a monitor: when ``BATCH_PUSHGATEWAY_URL`` is
set, every ``start``/``stage``/``end``/``fail``/``resume``/``cost`` hook call pushes
the same ``anthrasite_batch_*`` families the monitor serves (see
:mod:`utils.metrics`), except the monitor's own (alerts sent, open incidents, last
check, outbox), to ``<url>/metrics/job/<BATCH_NAME>/instance/<hostname>``.
``anthrasite_batch_source_info{source="push",batch,host}`` carries the same batch
name and host the monitor's ``source="monitor"`` series does, so the shipped rules
and dashboard count a batch once when both report it.

- The push replaces the whole group (HTTP PUT), so a stage that disappears from a
  new batch does not linger in the gateway.
- The completion-time histogram and the GPU counter are the tracker's own counters
  (``Snapshot.counters``, updated by the hook's write itself), so each batch is counted
  once however many hooks push, and the counter never drops at a new batch. Pushing
  writes no file.
- Timestamps that depend on "now" (``next_deadline_timestamp_seconds``) are as of
  the push; rules that need the current time use ``time()``.
- A failed push raises :class:`PushError` (one line: URL and reason); the CLI
  prints it as a warning and still exits 0: monitoring never fails the batch.

Only the CLI imports this module, and only when a URL is set, so hooks without a
Pushgateway never pay for importing prometheus_client.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, push_to_gateway

from utils.metrics import batch_metric_families, daily_deadline, host_name

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


def instance_name() -> str:
    """The ``instance`` grouping label: this host's name."""
    return host_name()


def build_registry(config, snapshot, now: float) -> CollectorRegistry:
    """A fresh registry holding the batch families for ``snapshot`` at ``now`` (reads and writes nothing)."""
    families = batch_metric_families(
        snapshot,
        now,
        daily_deadline(config),
        None,
        include_monitor=False,
        batch_name=config.batch_name,
        host=instance_name(),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(families))
    return registry


def push_batch_metrics(config, snapshot, now: float, event: str, *, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
    """Push the batch metrics for ``snapshot`` to ``config.pushgateway_url`` after ``event``.

    Groups by ``job=config.batch_name`` and ``instance=<hostname>``. Raises
    :class:`PushError` on any failure to deliver.
    """
    url = config.pushgateway_url
    if not url:
        return
    registry = build_registry(config, snapshot, now)
    grouping = {"instance": instance_name()}
    try:
        push_to_gateway(url, job=config.batch_name, grouping_key=grouping, registry=registry, timeout=timeout)
    except OSError as exc:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise PushError(f"{reason} (after '{event}')") from exc
    LOGGER.debug("pushed batch metrics to %s after %s (job=%s, %s)", url, event, config.batch_name, grouping)
