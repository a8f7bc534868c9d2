"""Refreshes the database gauges in the background (never on the scrape path).

Every `interval` seconds, in one statement (an idle daemon's refresh is one transaction): the jobs per
queue, task and state (counted through the partial indexes, by whichever daemon finds the shared reading
stale first: see notifyq.queue_counts in migration 0006), the live workers and the NOTIFY queue usage;
about once a minute, the schema ledger. The reading feeds the `notifyq_queue_*`
gauges, systemd's STATUS line and `/readyz` (schema still current). Its cost follows the queued, running
and failed jobs, not the finished ones retention keeps, nor the number of daemons.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from notifyq import logs, migrate
from notifyq.errors import DatabaseUnavailable, QueryError
from notifyq.metrics import Metrics
from notifyq.stats import Overview, summarize
from notifyq.store import Store

_SCHEMA_EVERY = 4


class GaugeRefresher:
    def __init__(
        self, store: Store, metrics: Metrics, interval: float, on_reading: Callable[[Overview], None]
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = interval
        self._on_reading = on_reading
        self.schema_problem: str | None = None
        self._readings = 0
        self._log = logs.get("gauges")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            try:
                await self.refresh()
                failures = 0
            except (DatabaseUnavailable, QueryError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    self._log.warning("gauges_refresh_failed", error=str(exc), failures=failures)
            await anyio.sleep(self._interval)

    async def refresh(self) -> Overview:
        # A reading another daemon took within most of an interval is recent enough: one counts for all.
        reading = await self._store.gauge_reading(max_age=self._interval * 0.9)
        self._readings += 1
        if self._readings % _SCHEMA_EVERY == 1:  # a migration is rare: look about once a minute
            async with self._store.connection() as conn:
                self.schema_problem = (await migrate.status(conn)).problem()
        overview = summarize(reading.queues.stats, (), reading.served)
        self._metrics.set_queue_stats(overview.counts(), overview.oldest(), overview.orphans_by_queue())
        self._metrics.workers_alive.set(reading.workers_alive)
        self._metrics.notification_queue_usage.set(reading.usage)
        self._metrics.dead_tuples.set(reading.dead_tuples)
        self._metrics.oldest_transaction_age.set(reading.oldest_xact_age)
        taken_at = reading.queues.taken_at
        self._metrics.stats_age.set(taken_at.timestamp() if taken_at else time.time())
        self._on_reading(overview)
        return overview
