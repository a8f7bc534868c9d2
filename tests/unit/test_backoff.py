"""The retry backoff's jitter: only ever added to the floor, and spread over the whole of its range."""

from __future__ import annotations

import random
import statistics

import pytest

from notifyq.retry import Backoff

pytestmark = pytest.mark.timeout(10)

DRAWS = 5000
POLICY = Backoff(base_seconds=1, factor=2, cap_seconds=60, jitter=0.5)


def draws(policy: Backoff, attempt: int, seed: int, n: int = DRAWS) -> list[float]:
    rng = random.Random(seed)
    return [policy.delay(attempt, rng) for _ in range(n)]


def test_floor_grows_by_the_factor_and_stops_at_the_cap() -> None:
    assert [POLICY.floor(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 60]
    assert POLICY.floor(0) == 1  # before any failed attempt: the base
    assert POLICY.floor(100) == 60 and POLICY.floor(10**9) == 60


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 6, 7, 40])
def test_jitter_only_adds_and_covers_its_whole_range(attempt: int) -> None:
    floor = POLICY.floor(attempt)
    top = floor * 1.5
    got = draws(POLICY, attempt, seed=attempt)

    # Never before the floor, never beyond floor * (1 + jitter).
    assert min(got) >= floor
    assert max(got) <= top
    # Spread over the whole range, not bunched at either end: both the lowest and the highest tenth are
    # hit, every tenth holds roughly its share, and the mean is the middle of the range.
    width = top - floor
    tenths = [0] * 10
    for d in got:
        tenths[min(int((d - floor) / width * 10), 9)] += 1
    assert tenths[0] > 0 and tenths[9] > 0, tenths
    assert all(DRAWS / 10 * 0.7 < count < DRAWS / 10 * 1.3 for count in tenths), tenths
    assert statistics.fmean(got) == pytest.approx(floor * 1.25, rel=0.01)
    assert statistics.pstdev(got) == pytest.approx(width / 12**0.5, rel=0.05)  # uniform's spread


def test_the_rng_decides_the_draw() -> None:
    # The same seed gives the same delays; different seeds give different ones.
    assert draws(POLICY, 3, seed=1, n=20) == draws(POLICY, 3, seed=1, n=20)
    assert draws(POLICY, 3, seed=1, n=20) != draws(POLICY, 3, seed=2, n=20)
    assert len(set(draws(POLICY, 3, seed=1, n=200))) == 200


def test_without_rng_the_module_random_is_used() -> None:
    got = [POLICY.delay(4) for _ in range(500)]
    assert all(8 <= d <= 12 for d in got)
    assert len(set(got)) > 400


@pytest.mark.parametrize("attempt", [1, 4, 7, 50])
def test_no_jitter_gives_exactly_the_floor(attempt: int) -> None:
    exact = Backoff(base_seconds=1, factor=2, cap_seconds=60, jitter=0)
    assert set(draws(exact, attempt, seed=attempt, n=200)) == {exact.floor(attempt)}


def test_full_jitter_may_double_but_never_more() -> None:
    doubling = Backoff(base_seconds=1, factor=2, cap_seconds=60, jitter=1)
    got = draws(doubling, 3, seed=3)
    assert 4 <= min(got) < 4.1 and 7.9 < max(got) <= 8


def test_the_jitter_scales_with_the_floor_at_the_cap() -> None:
    capped = draws(POLICY, 30, seed=30)
    assert 60 <= min(capped) < 61.5 and 88.5 < max(capped) <= 90
