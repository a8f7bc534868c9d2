"""One vocabulary per concept, and the metric labels derived from it."""

from __future__ import annotations

import pytest

from notifyq import metrics
from notifyq.models import OUTCOME_LABELS, OutcomeKind, QueueState
from notifyq.wakeup import WakeSource

pytestmark = pytest.mark.timeout(10)


def test_outcome_labels_are_every_kind_that_completes() -> None:
    assert set(OUTCOME_LABELS) == {k.value for k in OutcomeKind} - {"unstarted"}
    assert metrics.OUTCOMES == OUTCOME_LABELS
    # A job released at shutdown goes back to the queue: its label is not the admin's final state.
    assert "released" in OUTCOME_LABELS and "cancelled" not in OUTCOME_LABELS


def test_wake_source_labels_exclude_the_watchdog_tick() -> None:
    assert set(metrics.WAKE_SOURCES) == {s.value for s in WakeSource} - {"tick"}


def test_queue_states_are_the_gauge_labels() -> None:
    assert metrics.QUEUE_STATES == ("queued", "scheduled", "running", "failed")
    assert tuple(s.value for s in QueueState) == metrics.QUEUE_STATES


def test_preinitialised_label_values_come_from_the_vocabularies() -> None:
    m = metrics.Metrics(["default"], ["t"], "test")
    sources = {s.labels["source"] for s in next(iter(m.wakeups.collect())).samples}
    assert sources == set(metrics.WAKE_SOURCES)
