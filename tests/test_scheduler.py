"""The pure scheduling core, driven by a fake clock: no processes, no real time."""

from __future__ import annotations

import random

import pytest

from mppool import _map
from mppool import _scheduler as s
from mppool._map import ChunkPlanner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_ids = iter(range(1, 10**9))


def task(
    opts: s.TaskOptions | None = None, fn_id: int = 1, n_items: int = 0, not_before: float = 0.0
) -> s.Task:
    return s.Task(
        next(_ids), fn_id, 0, opts or s.TaskOptions(), b"", n_items=n_items, not_before=not_before
    )


def make(workers: int = 1, aging: float = 0.0) -> tuple[s.Scheduler, FakeClock]:
    clock = FakeClock()
    sched = s.Scheduler(workers, clock, aging_rate=aging, rng=random.Random(7))
    for w in range(workers):
        sched.worker_up(w)
    return sched, clock


def drain(sched: s.Scheduler, w: int = 0, duration: float = 0.0) -> list[s.Task]:
    """Run everything worker ``w`` is given, one assignment at a time."""
    order = []
    while True:
        batch = sched.assign(w)
        if not batch:
            return order
        for t in batch:
            order.append(t)
            sched.complete(w, t.id, t.attempt, duration)


def test_priority_order_then_fifo() -> None:
    sched, _ = make()
    prios = [0, 5, 0, 10, 5, 10, 0]
    tasks = [task(s.TaskOptions(priority=p)) for p in prios]
    for t in tasks:
        sched.submit(t)
    order = drain(sched)
    expected = sorted(tasks, key=lambda t: (-t.opts.priority, t.id))
    assert [t.id for t in order] == [t.id for t in expected]


def test_higher_priority_spills_deque_work_back() -> None:
    sched, _ = make()
    sched._per_item[1] = 1e-6  # a fast function: many tasks fit in the local deque
    low = [task(s.TaskOptions(priority=0)) for _ in range(5)]
    for t in low:
        sched.submit(t)
    first = sched.assign(0)
    assert first  # some went to the pipe, the rest sit in the local deque
    assert len(sched.local[0]) + len(first) == 5 or sched.queued + len(first) == 5
    high = task(s.TaskOptions(priority=9))
    sched.submit(high)
    for t in first:
        sched.complete(0, t.id, t.attempt, 1e-6)
    rest = drain(sched)
    assert rest[0] is high, "the high-priority task must come before queued low-priority work"


def test_aging_bounds_the_wait_of_low_priority_work() -> None:
    rate = 1.0  # one priority level per second
    sched, clock = make(aging=rate)
    low = task(s.TaskOptions(priority=0))
    sched.submit(low)
    # A constant stream of priority-5 work arrives every 0.1 s; each takes 0.1 s to run.
    waited = None
    for _ in range(200):
        sched.submit(task(s.TaskOptions(priority=5)))
        batch = sched.assign(0)
        assert len(batch) == 1
        t = batch[0]
        if t is low:
            waited = clock.now - low.submitted_at
            break
        clock.advance(0.1)
        sched.complete(0, t.id, t.attempt, 0.1)
    assert waited is not None, "the low-priority task starved"
    # Documented bound: (P - p) / rate seconds, plus one task of slack.
    assert waited <= (5 - 0) / rate + 0.1 + 1e-9


def test_without_aging_low_priority_starves_under_the_same_stream() -> None:
    sched, clock = make(aging=0.0)
    low = task(s.TaskOptions(priority=0))
    sched.submit(low)
    for _ in range(200):
        sched.submit(task(s.TaskOptions(priority=5)))
        (t,) = sched.assign(0)
        assert t is not low
        clock.advance(0.1)
        sched.complete(0, t.id, t.attempt, 0.1)


def test_backoff_schedule_on_fake_clock() -> None:
    sched, clock = make()
    opts = s.TaskOptions(max_attempts=4, initial_delay=1.0, factor=2.0, max_delay=60.0)
    t = task(opts)
    sched.submit(t)
    waits = []
    for _ in range(3):
        (sent,) = sched.assign(0)
        outcome = sched.fail(0, sent.id, sent.attempt, 0.0, retryable=True)
        assert isinstance(outcome, s.Retry)
        waits.append(outcome.at - clock.now)
        assert sched.assign(0) == []  # backing off: nothing runnable, no worker held
        clock.advance(outcome.at - clock.now - 0.001)
        assert sched.fire_timers() == [] and sched.assign(0) == []
        clock.advance(0.001)
        sched.fire_timers()
    assert waits == [1.0, 2.0, 4.0]
    (sent,) = sched.assign(0)
    outcome = sched.fail(0, sent.id, sent.attempt, 0.0, retryable=True)
    assert isinstance(outcome, s.Fail) and outcome.task.failures == 4


def test_backoff_caps_and_jitter_stays_in_range() -> None:
    opts = s.TaskOptions(initial_delay=1.0, factor=10.0, max_delay=5.0, jitter=0.5)
    rng = random.Random(1)
    for failures in range(1, 6):
        base = min(5.0, 10.0 ** (failures - 1))
        d = opts.backoff(failures, rng)
        assert base * 0.5 <= d <= base * 1.5


def test_non_retryable_error_fails_at_once() -> None:
    sched, _ = make()
    t = task(s.TaskOptions(max_attempts=5))
    sched.submit(t)
    (sent,) = sched.assign(0)
    assert isinstance(sched.fail(0, sent.id, sent.attempt, 0.0, retryable=False), s.Fail)
    assert sched.idle()


def test_stale_result_is_dropped_after_a_crash() -> None:
    sched, _ = make(workers=2)
    t = task()
    sched.submit(t)
    (sent,) = sched.assign(0)
    old_attempt = sent.attempt
    culprit, outcome = sched.worker_lost(0, blame=True)
    assert culprit is t and isinstance(outcome, s.Retry)
    assert sched.complete(0, t.id, old_attempt, 0.0) is None  # stale
    (again,) = sched.assign(1)
    assert again is t and t.attempt == old_attempt + 1
    assert sched.complete(1, t.id, t.attempt, 0.0) is t
    assert sched.idle()


def test_crash_blame_limit() -> None:
    sched, _ = make()
    t = task(s.TaskOptions(crash_retries=2))
    sched.submit(t)
    outcomes = []
    for _ in range(3):
        sched.worker_up(0)
        sched.assign(0)
        outcomes.append(sched.worker_lost(0, blame=True)[1])
    assert [type(o) for o in outcomes] == [s.Retry, s.Retry, s.Fail]
    assert t.crashes == 3


def test_a_crash_with_a_batch_in_the_pipe_blames_nobody_and_isolates_the_batch() -> None:
    sched, _ = make()
    sched._per_item[1] = 1e-6
    tasks = [task() for _ in range(3)]
    for t in tasks:
        sched.submit(t)
    sent = sched.assign(0)
    assert len(sent) == 3
    # The worker may have finished the first tasks without writing their results yet: the
    # culprit is unknown, so nobody is blamed ...
    culprit, outcome = sched.worker_lost(0, blame=True)
    assert culprit is None and outcome is None
    assert [t.crashes for t in tasks] == [0, 0, 0]
    # ... and each suspect now travels alone, so a second crash names its culprit exactly.
    sched.worker_up(0)
    assert sched.assign(0) == [tasks[0]]
    culprit, outcome = sched.worker_lost(0, blame=True)
    assert culprit is tasks[0] and isinstance(outcome, s.Retry)
    sched.worker_up(0)
    assert [t.id for t in drain(sched)] == [t.id for t in tasks]  # each keeps its place


def test_timeout_fires_only_after_start_and_kills() -> None:
    sched, clock = make()
    t = task(s.TaskOptions(timeout=2.0))
    sched.submit(t)
    assert sched.assign(0) == [t]
    clock.advance(5.0)  # queued/in-pipe time does not count
    assert sched.fire_timers() == []
    sched.started(0, t.id, t.attempt)
    clock.advance(1.9)
    assert sched.fire_timers() == []
    clock.advance(0.2)
    (event,) = sched.fire_timers()
    assert event.worker == 0 and isinstance(event.outcome, s.Fail)
    assert sched.idle()


def test_timeout_retried_when_policy_says_so() -> None:
    sched, clock = make()
    t = task(s.TaskOptions(timeout=1.0, max_attempts=2, initial_delay=0.5, retry_timeouts=True))
    sched.submit(t)
    sched.assign(0)
    sched.started(0, t.id, t.attempt)
    clock.advance(1.5)
    (event,) = sched.fire_timers()
    assert isinstance(event.outcome, s.Retry) and event.outcome.at == pytest.approx(clock.now + 0.5)


def test_delayed_task_waits_for_its_time() -> None:
    sched, clock = make()
    t = task(not_before=clock.now + 3.0)
    sched.submit(t)
    assert sched.assign(0) == [] and sched.queued == 1
    assert sched.next_timer() == pytest.approx(clock.now + 3.0)
    clock.advance(3.0)
    sched.fire_timers()
    assert sched.assign(0) == [t]


def test_cancel_removes_queued_local_and_delayed_but_not_sent() -> None:
    sched, clock = make(workers=1)
    sched._per_item[1] = 1.0  # slow: one in the pipe, one in the deque, rest in the heap
    a, b, c = task(), task(), task()
    d = task(not_before=clock.now + 10)
    for t in (a, b, c, d):
        sched.submit(t)
    assert sched.assign(0) == [a]
    assert b.state == s.LOCAL
    assert sched.cancel(a.id) is None  # in the pipe: not cancellable here
    assert sched.cancel(b.id) is b and sched.cancel(c.id) is c and sched.cancel(d.id) is d
    sched.complete(0, a.id, a.attempt, 1.0)
    assert sched.assign(0) == [] and sched.idle()


def test_idle_worker_steals_the_front_half_of_a_busy_peers_deque() -> None:
    sched, _ = make(workers=2)
    sched._per_item[1] = 0.001  # 1 ms each: one runs, one is prefetched, four wait locally
    tasks = [task() for _ in range(6)]
    for t in tasks:
        sched.submit(t)
    sched.up[1] = False  # worker 1 still starting: worker 0 takes everything
    assert sched.assign(0) == tasks[:2]
    assert list(sched.local[0]) == tasks[2:] and sched._heap_live == 0
    sched.worker_up(1)
    assert sched.assign(1) == tasks[2:4]  # the front (most urgent) half of worker 0's deque
    assert list(sched.local[0]) == tasks[4:]
    assert sched.steals == 1 and sched.stolen_tasks == 2


def test_steal_takes_front_half_in_order() -> None:
    sched, _ = make(workers=2)
    sched._per_item[1] = 0.0005
    tasks = [task() for _ in range(6)]
    for t in tasks:
        sched.submit(t)
    s.LOCAL_TARGET_SECONDS, old = 1.0, s.LOCAL_TARGET_SECONDS
    try:
        sched._refill(0)
    finally:
        s.LOCAL_TARGET_SECONDS = old
    assert list(sched.local[0]) == tasks
    sched.sent[0].append(task())  # worker 0 is busy
    sched.sent_cost[0] = 1.0
    assert sched._steal_candidate(1) == 0
    sched._steal(1, 0)
    assert list(sched.local[1]) == tasks[:3]
    assert list(sched.local[0]) == tasks[3:]
    assert sched.steals == 1 and sched.stolen_tasks == 3


def test_unknown_duration_tasks_are_not_batched_behind_each_other() -> None:
    sched, _ = make()
    for _ in range(5):
        sched.submit(task(fn_id=99))
    assert len(sched.assign(0)) == 1


def test_tiny_tasks_are_batched_into_the_pipe() -> None:
    sched, _ = make()
    sched._per_item[1] = 1e-6
    for _ in range(1000):
        sched.submit(task())
    batch = sched.assign(0)
    assert 1 < len(batch) <= s.MAX_IN_PIPE


def test_one_medium_task_is_prefetched_but_not_more() -> None:
    sched, _ = make()
    sched._per_item[1] = 0.002
    for _ in range(5):
        sched.submit(task())
    assert len(sched.assign(0)) == 2


def test_long_tasks_are_never_prefetched() -> None:
    sched, _ = make()
    sched._per_item[1] = 0.5
    for _ in range(5):
        sched.submit(task())
    assert len(sched.assign(0)) == 1
    assert sched.assign(0) == []


def test_estimates_follow_measured_durations() -> None:
    sched, _ = make()
    t = task(n_items=10)
    sched.submit(t)
    assert sched.estimate(t) is None
    (sent,) = sched.assign(0)
    sched.complete(0, sent.id, sent.attempt, 0.02)
    assert sched.estimate(task(n_items=5)) == pytest.approx(0.01)


def test_abort_all_forgets_everything() -> None:
    sched, clock = make(workers=2)
    for _ in range(4):
        sched.submit(task())
    sched.submit(task(not_before=clock.now + 5))
    sched.assign(0)
    assert len(sched.abort_all()) == 5
    assert sched.idle() and sched.queued == 0 and sched.in_pipes == 0


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_chunk_planner_grows_to_target_and_splits_the_tail(workers: int) -> None:
    planner = ChunkPlanner(workers)
    assert planner.next_size(None) == 1  # nothing measured: probe with one item
    planner.observe(1, 1e-6)
    sizes = [planner.next_size(None) for _ in range(6)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    # Near the end of a known-length input chunks shrink so every worker gets a share.
    planner.observe(100_000, 100.0)  # 1 ms per item
    full = planner.next_size(None)
    tail = planner.next_size(40)
    # Near the end: at most remaining / (TAIL_SPLIT * workers), but never below a quarter of
    # the target duration (splitting work that short only adds messages).
    floor = int(_map.CHUNK_TARGET_SECONDS / 4 / 0.001)
    assert tail <= max(1, -(-40 // (_map.TAIL_SPLIT * workers)), floor) < full


def test_chunk_planner_fixed_size() -> None:
    assert ChunkPlanner(2, fixed=7).next_size(3) == 7
    with pytest.raises(ValueError):
        ChunkPlanner(2, fixed=0)
