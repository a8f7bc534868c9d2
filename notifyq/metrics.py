"""Every Prometheus metric notifyq exports. Names and labels are public API.

Label values never come straight from row data. `task` is one of this daemon's registered task names,
else `other`. `queue` on job metrics is one of the served queues (validated config), else `other`. The
database gauges (`notifyq_queue_*`) report every queue that has jobs, because an operator wants to see
queues no daemon serves; queue names are already constrained by the jobs table's CHECK, and their number
is capped at MAX_QUEUE_LABELS (served queues first, then the busiest), the rest folded into `other`.
`schedule` is a schedule's name (checked by the schedules table's guard: 1 to 200 characters, no control
characters): the code's own schedules, then the first others seen, MAX_SCHEDULE_LABELS in all; the rest
are `other` (a schedule named `other` shares that series). The label of a schedule that no longer exists
is released at the next pass, with its series.
"""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from notifyq.models import OUTCOME_LABELS, QueueState, ResultDropped, TickResult
from notifyq.wakeup import WakeSource

OTHER = "other"
MAX_QUEUE_LABELS = 50
MAX_SCHEDULE_LABELS = 100
MAX_CALLBACK_HOSTS = 50
_HOST_LABEL = re.compile(r"[a-z0-9.:-]{1,253}")  # a host name or an address, as a URL's host may be
# What became of a callback: the `outcome` label of notifyq_callbacks_total.
CALLBACK_OUTCOMES = ("succeeded", "retried", "waited", "failed", "refused")
# Label values, each from its one vocabulary.
QUEUE_STATES = tuple(state.value for state in QueueState)
OUTCOMES = OUTCOME_LABELS
WAKE_SOURCES = tuple(source.value for source in WakeSource if source is not WakeSource.TICK)
RESULT_DROP_REASONS = tuple(reason.value for reason in ResultDropped)
TICK_RESULTS = tuple(result.value for result in TickResult)

# 5 ms to 30 min.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# 0.25 ms to 10 s: a claim or a batch of outcomes takes about a millisecond on a healthy server.
_STATEMENT_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_NAME_CACHE = 1000  # raw (queue, task) names remembered; beyond that each lookup folds labels again


class Buckets:
    """A histogram's counts as plain numbers: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class JobSeries:
    """The per-job series of one (queue, task) label pair. Plain numbers, exported at scrape time by
    `_JobCollector`: prometheus-client's locked counters and `labels()` cost more per job than a no-op
    job's own work (a CPU profile of the drain benchmark put them at a fifth of the daemon's time).
    Only the event loop's thread writes them."""

    __slots__ = ("completed", "duration", "running", "started", "waited")

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.completed = dict.fromkeys(OUTCOMES, 0)
        self.waited = Buckets(_WAIT_BUCKETS)
        self.duration = Buckets(_DURATION_BUCKETS)


class _JobCollector:
    """Renders every JobSeries as the public job metrics."""

    def __init__(self, series: dict[tuple[str, str], JobSeries]) -> None:
        self._series = series

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._series))

    @staticmethod
    def _families(series: Mapping[tuple[str, str], JobSeries] | None = None) -> list[Metric]:
        qt = ["queue", "task"]
        started = CounterMetricFamily("notifyq_jobs_started", "Jobs whose handler started.", labels=qt)
        completed = CounterMetricFamily(
            "notifyq_jobs_completed", "Attempts finished, by outcome.", labels=[*qt, "outcome"]
        )
        duration = HistogramMetricFamily("notifyq_job_duration_seconds", "Handler run time.", labels=qt)
        waited = HistogramMetricFamily(
            "notifyq_job_wait_seconds",
            "From the moment a job became runnable (its run_at) to its start.",
            labels=qt,
        )
        running = GaugeMetricFamily("notifyq_jobs_running", "Handlers running now.", labels=["queue"])
        per_queue: dict[str, int] = {}
        for (queue, task), s in (series or {}).items():
            started.add_metric([queue, task], s.started)
            for outcome, n in s.completed.items():
                completed.add_metric([queue, task, outcome], n)
            duration.add_metric([queue, task], s.duration.cumulative(), s.duration.total)
            waited.add_metric([queue, task], s.waited.cumulative(), s.waited.total)
            per_queue[queue] = per_queue.get(queue, 0) + s.running
        for queue, n in per_queue.items():
            running.add_metric([queue], n)
        return [started, completed, duration, waited, running]


class Metrics:
    """One daemon's metrics, in a registry of its own."""

    def __init__(
        self, queues: Iterable[str], tasks: Iterable[str], version: str, schedules: Iterable[str] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._code_schedules = frozenset(schedules)
        self._schedule_labels = dict.fromkeys(list(schedules)[:MAX_SCHEDULE_LABELS])
        self._queues = tuple(dict.fromkeys(queues))
        self._served = frozenset(self._queues)
        self._tasks = frozenset(tasks)
        r = self.registry
        self._series: dict[tuple[str, str], JobSeries] = {}
        self._by_name: dict[tuple[str, str], JobSeries] = {}
        r.register(_JobCollector(self._series))
        self.worker_slots = Gauge("notifyq_worker_slots", "Jobs this daemon runs at once.", registry=r)
        self.prefetch = Gauge(
            "notifyq_prefetch_jobs",
            "Target size of the prefetch buffer (it grows while a backlog drains).",
            registry=r,
        )
        self.claims = Counter("notifyq_claims", "Claim statements run.", registry=r)
        # Labelled by the statement's name in sql/queries/: a fixed set, never row data.
        self.statement_seconds = Histogram(
            "notifyq_statement_duration_seconds",
            "Round trip of the daemon's database statements (claims, begins, outcomes, heartbeats...).",
            ["statement"],
            buckets=_STATEMENT_BUCKETS,
            registry=r,
        )
        self.claim_batch = Histogram(
            "notifyq_claim_batch_size", "Jobs returned per claim.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.wakeups = Counter("notifyq_wakeups", "Dispatcher wake-ups, by source.", ["source"], registry=r)
        self.listener_connected = Gauge(
            "notifyq_listener_connected", "1 while the LISTEN connection is up.", registry=r
        )
        self.listener_reconnects = Counter(
            "notifyq_listener_reconnects", "LISTEN connections re-established.", registry=r
        )
        self.leases_lost = Counter(
            "notifyq_leases_lost", "Leases found lost; their handlers were cancelled.", registry=r
        )
        self.results_dropped = Counter(
            "notifyq_results_dropped",
            "Handler return values not stored (the job's outcome was), by reason.",
            ["reason"],
            registry=r,
        )
        self.runner_interruptions = Counter(
            "notifyq_runner_interruptions",
            "Runner loops restarted after a job broke out of them (a handler cancelling its own task).",
            registry=r,
        )
        self.build_info = Info("notifyq_build", "notifyq version.", registry=r)
        self.build_info.info({"version": version})
        # From the database, refreshed in the background (never on the scrape path).
        self.queue_jobs = Gauge(
            "notifyq_queue_jobs",
            "Jobs by queue and state; 'scheduled' is queued with run_at in the future.",
            ["queue", "state"],
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "notifyq_queue_oldest_job_age_seconds",
            "Age of the oldest runnable queued job (now - run_at); 0 when none.",
            ["queue"],
            registry=r,
        )
        self.jobs_without_handler = Gauge(
            "notifyq_jobs_without_handler",
            "Queued jobs whose task no live worker serving their queue handles.",
            ["queue"],
            registry=r,
        )
        self.workers_alive = Gauge("notifyq_workers_alive", "Daemons seen recently.", registry=r)
        self.notification_queue_usage = Gauge(
            "notifyq_notification_queue_usage_ratio",
            "pg_notification_queue_usage(): fraction of the NOTIFY queue in use.",
            registry=r,
        )
        self.dead_tuples = Gauge(
            "notifyq_jobs_dead_tuples",
            "Dead row versions in notifyq.jobs (pg_stat_user_tables.n_dead_tup).",
            registry=r,
        )
        self.oldest_transaction_age = Gauge(
            "notifyq_oldest_transaction_age_seconds",
            "Age of the oldest open transaction in the database; a long one holds back vacuum.",
            registry=r,
        )
        self.stats_age = Gauge(
            "notifyq_stats_last_refresh_timestamp_seconds",
            "When the database gauges were last refreshed (Unix time).",
            registry=r,
        )
        self.schedule_ticks_total = Counter(
            "notifyq_schedule_ticks",
            "Schedule ticks this daemon handled, by result (enqueued, backfilled, skipped, missed, failed).",
            ["schedule", "result"],
            registry=r,
        )
        self.schedule_lag = Gauge(
            "notifyq_schedule_lag_seconds",
            "How long the oldest due tick of a schedule has waited for its job (0 while it keeps up).",
            ["schedule"],
            registry=r,
        )
        self.schedules_broken = Gauge(
            "notifyq_schedules_broken",
            "Enabled schedules whose cron or time zone the parser refuses (see notifyq.schedules.error).",
            registry=r,
        )
        self._callback_hosts: dict[str, None] = {}
        self.callbacks_total = Counter(
            "notifyq_callbacks",
            "Callbacks by destination host and outcome: succeeded, retried, waited, failed, refused.",
            ["host", "outcome"],
            registry=r,
        )
        self.callback_seconds = Histogram(
            "notifyq_callback_duration_seconds",
            "Time from a callback's request to the end of its answer, by destination host.",
            ["host"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self._prefill()

    def callback_host(self, host: str, *, new: bool = True) -> str:
        """The label for a destination host: the configured endpoints' hosts and the first others seen
        (with `new`: only hosts that answered get one), MAX_CALLBACK_HOSTS in all; hosts come from job
        payloads, so the rest are folded into `other`."""
        host = host.lower()
        if not _HOST_LABEL.fullmatch(host):
            return OTHER
        if new and host not in self._callback_hosts and len(self._callback_hosts) < MAX_CALLBACK_HOSTS:
            self._callback_hosts[host] = None
        return host if host in self._callback_hosts else OTHER

    def known_callback_hosts(self, hosts: Iterable[str]) -> None:
        for host in hosts:
            label = self.callback_host(host)
            for outcome in CALLBACK_OUTCOMES:
                self.callbacks_total.labels(label, outcome)

    def schedule_label(self, name: str) -> str:
        if name not in self._schedule_labels and len(self._schedule_labels) < MAX_SCHEDULE_LABELS:
            self._schedule_labels[name] = None
        return name if name in self._schedule_labels else OTHER

    def schedule_ticks(self, name: str, result: TickResult, n: int) -> None:
        self.schedule_ticks_total.labels(self.schedule_label(name), result.value).inc(n)

    def set_schedule_state(self, lag: Mapping[str, float], broken: int, existing: Iterable[str] = ()) -> None:
        """After a scheduler pass: each schedule's lag (the worst of those folded into `other`). The labels
        of schedules not in `existing` (deleted ones) are released, so that new ones get a series."""
        still = set(existing) | self._code_schedules | {OTHER}
        for name in [n for n in self._schedule_labels if n not in still]:
            del self._schedule_labels[name]
            for result in TICK_RESULTS:
                with contextlib.suppress(KeyError):
                    self.schedule_ticks_total.remove(name, result)
        folded: dict[str, float] = {}
        for name, seconds in lag.items():
            label = self.schedule_label(name)
            folded[label] = max(folded.get(label, 0.0), seconds)
        self.schedule_lag.clear()
        for label, seconds in folded.items():
            self.schedule_lag.labels(label).set(seconds)
        self.schedules_broken.set(broken)

    def observe_statement(self, name: str, seconds: float) -> None:
        self.statement_seconds.labels(name).observe(seconds)

    def _prefill(self) -> None:
        """Create the label sets known up front, so dashboards see zeros rather than gaps."""
        for queue in self._queues:
            for task in self._tasks:
                self.for_job(queue, task)
        for source in WAKE_SOURCES:
            self.wakeups.labels(source)
        for reason in RESULT_DROP_REASONS:
            self.results_dropped.labels(reason)
        for name in self._schedule_labels:
            for result in TICK_RESULTS:
                self.schedule_ticks_total.labels(name, result)
        for outcome in CALLBACK_OUTCOMES:
            self.callbacks_total.labels(OTHER, outcome)
        self.callback_seconds.labels(OTHER)

    def for_job(self, queue: str, task: str) -> JobSeries:
        """The series for a job of this queue and task. Keyed by label, so their number stays bounded;
        the lookup by raw names is a cache, bounded too."""
        found = self._by_name.get((queue, task))
        if found is None:
            key = (self.queue_label(queue), self.task_label(task))
            found = self._series.get(key)
            if found is None:
                found = self._series[key] = JobSeries()
            if len(self._by_name) < _NAME_CACHE:
                self._by_name[(queue, task)] = found
        return found

    def queue_label(self, queue: str) -> str:
        return queue if queue in self._served else OTHER

    def task_label(self, task: str) -> str:
        return task if task in self._tasks else OTHER

    def set_queue_stats(
        self,
        counts: Mapping[tuple[str, str], int],
        oldest: Mapping[str, float],
        orphans: Mapping[str, int],
    ) -> None:
        """Replace the database gauges with a fresh reading, capping the number of queue labels."""
        label = self._row_queue_labels({q for q, _ in counts} | set(oldest) | set(orphans), counts)
        folded: dict[tuple[str, str], int] = {}
        for (queue, state), n in counts.items():
            key = (label[queue], state)
            folded[key] = folded.get(key, 0) + n
        ages: dict[str, float] = {}
        for queue, age in oldest.items():
            ages[label[queue]] = max(ages.get(label[queue], 0.0), age)
        without: dict[str, int] = {}
        for queue, n in orphans.items():
            without[label[queue]] = without.get(label[queue], 0) + n
        shown = set(label.values()) | set(self._queues)
        self.queue_jobs.clear()
        self.queue_oldest_age.clear()
        self.jobs_without_handler.clear()
        for queue in shown:
            for state in QUEUE_STATES:
                self.queue_jobs.labels(queue, state).set(folded.get((queue, state), 0))
            self.queue_oldest_age.labels(queue).set(ages.get(queue, 0.0))
            self.jobs_without_handler.labels(queue).set(without.get(queue, 0))

    def _row_queue_labels(self, queues: set[str], counts: Mapping[tuple[str, str], int]) -> dict[str, str]:
        size: dict[str, int] = {}
        for (queue, _), n in counts.items():
            size[queue] = size.get(queue, 0) + n
        ranked = sorted(queues, key=lambda q: (q not in self._served, -size.get(q, 0), q))
        keep = set(ranked[:MAX_QUEUE_LABELS])
        return {q: q if q in keep else OTHER for q in queues}
