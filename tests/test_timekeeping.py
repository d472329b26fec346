"""The dispatcher's pure timekeeping on a fake clock: token buckets, recurring schedules,
the timer heap, and the task table's times (no processes, no real time)."""

from __future__ import annotations

import datetime
import random

import pytest

from mppool._dispatcher._recurring import Recurring
from mppool._dispatcher._scheduler import Scheduler
from mppool._dispatcher._tasklist import TaskTable
from mppool._dispatcher._tasks import BACKOFF, DELAYED, QUEUED, SENT, Task, TaskOptions
from mppool._dispatcher._waiting import BUCKET, RELEASE, TIMEOUT, Waiting
from mppool._ratelimit import MIN_WAIT_SECONDS, TokenBucket

from .test_scheduler import FakeClaims, FakeClock


def _task(task_id: int, **opts: object) -> Task:
    return Task(task_id, 1, 0, TaskOptions(**opts), b"")  # type: ignore[arg-type]


# --- token buckets ----------------------------------------------------------------------------
def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, per=1.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_token_at(100.0) == pytest.approx(100.1)
    assert not bucket.take(100.09)
    assert bucket.take(100.1)
    # A long pause refills up to the burst, not beyond.
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]


def test_rate_per_minute_and_a_token_never_due_now() -> None:
    bucket = TokenBucket(rate=6, per=60.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert bucket.next_token_at(0.0) == pytest.approx(10.0)
    assert bucket.next_token_at(10.0 - 1e-12) >= 10.0 - 1e-12 + MIN_WAIT_SECONDS


# --- recurring schedules ----------------------------------------------------------------------
def test_every_runs_at_a_fixed_rate_and_skips_missed_runs() -> None:
    rec = Recurring(1, 1, 0, b"", interval=10.0)
    rec.first(now=500.0, wall_now=1_000_000.0)
    assert rec.next_at == 510.0
    rec.advance(now=510.0, wall_now=1_000_010.0)
    assert rec.next_at == 520.0
    rec.advance(now=547.0, wall_now=1_000_047.0)  # late: the runs at 530 and 540 are not made up
    assert rec.next_at == 550.0
    assert rec.next_wall(now=547.0, wall_now=1_000_047.0) == 1_000_050.0


def test_cron_follows_the_wall_clock_far_ahead() -> None:
    # Local time, as cron is: midnight of the first of January, a year away at most.
    start = datetime.datetime(2026, 3, 5, 12, 0, 0).timestamp()
    rec = Recurring(1, 1, 0, b"", cron="0 0 1 1 *")
    rec.first(now=10.0, wall_now=start)
    target = datetime.datetime(2027, 1, 1, 0, 0, 0).timestamp()
    assert rec.next_wall(10.0, start) == pytest.approx(target)
    assert rec.next_at == pytest.approx(10.0 + (target - start))
    fired_at = rec.next_at
    rec.advance(now=fired_at, wall_now=target)
    following = datetime.datetime(2028, 1, 1, 0, 0, 0).timestamp()
    assert rec.next_wall(fired_at, target) == pytest.approx(following)


# --- the timer heap ---------------------------------------------------------------------------
def test_timers_fire_in_time_order_and_stale_ones_are_skipped() -> None:
    waiting = Waiting({}, now=0.0)
    late, early, moved_on = _task(1), _task(2), _task(3)
    waiting.hold(late, 30.0, DELAYED)
    waiting.hold(early, 10.0, BACKOFF)
    waiting.hold(moved_on, 20.0, DELAYED)
    moved_on.attempt += 1  # it was retried since: its timer is stale
    assert waiting.delayed == 3
    assert waiting.next_timer() == 10.0
    assert list(waiting.due(25.0)) == [(RELEASE, early)]
    assert waiting.next_timer() == 30.0  # the stale one at 20 is dropped on the way
    assert list(waiting.due(1e12)) == [(RELEASE, late)]
    assert waiting.next_timer() is None


def test_a_timeout_fires_only_for_the_attempt_still_running() -> None:
    waiting = Waiting({}, now=0.0)
    running, finished = _task(1), _task(2)
    for t in (running, finished):
        t.state = SENT
        waiting.arm_timeout(t, 5.0)
    finished.state = QUEUED  # it ended before its timeout
    assert list(waiting.due(5.0)) == [(TIMEOUT, running)]


def test_a_rate_limited_kind_releases_in_priority_order_as_tokens_come() -> None:
    waiting = Waiting({"io": (1.0, 1.0, 1)}, now=0.0)
    low, high = _task(1, kind="io", priority=0), _task(2, kind="io", priority=5)
    for t, rank in ((low, (0.0, 1)), (high, (-5.0, 2))):
        assert waiting.needs_token(t)
        waiting.park(t, rank)
    assert waiting.release("io", 0.0) == [high]  # the bucket's one token
    assert waiting.release("io", 0.5) == []  # none yet; a bucket timer is armed for 1.0
    assert waiting.rate_limited_waits == 2
    assert list(waiting.due(1.0)) == [(BUCKET, "io")]
    assert waiting.release("io", 1.0) == [low]
    assert waiting.limited == 0


# --- the task table ---------------------------------------------------------------------------
def test_the_task_table_shows_dispatcher_times_on_the_wall_clock() -> None:
    clock = FakeClock()
    sched = Scheduler(1, clock, FakeClaims(), aging_rate=0.0, rng=random.Random(1))  # type: ignore[arg-type]
    sched.worker_up(0)
    table = TaskTable(size=2)
    t = _task(7, kind="k", priority=3)
    sched.submit(t)
    clock.advance(2.0)
    wall_now = 1_700_000_000.0
    (row,) = table.listing(sched, [4242], clock(), wall_now)
    assert (row["id"], row["state"], row["kind"], row["priority"]) == (7, "queued", "k", 3)
    assert row["submitted_at"] == pytest.approx(wall_now - 2.0)
    batch = sched.assign(0)
    assert batch is not None
    clock.advance(0.5)
    (row,) = table.listing(sched, [4242], clock(), wall_now + 0.5)
    assert (row["state"], row["pid"]) == ("running", 4242)
    assert row["started_at"] == pytest.approx(wall_now)
    sched.outcomes.complete(0, 7, t.attempt, 0.5)
    table.finished(t, "done", clock(), 0.5, 4242)
    for i in (8, 9):  # the history keeps the last two
        table.cancelled(i, clock())
    assert [r["id"] for r in table.listing(sched, [4242], clock(), wall_now + 0.5)] == [9, 8]
    assert table.listing(sched, [4242], clock(), wall_now + 0.5, task_id=7) == []
