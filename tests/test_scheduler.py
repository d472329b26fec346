"""The pure scheduling core, driven by a fake clock and fake claim counters.

No processes, no real time: the tests play the workers, taking claim tokens and reporting
results in whatever order a case needs, including orders that real timing makes rare.
"""

from __future__ import annotations

import itertools
import pickle
import random

import pytest

from mppool import _protocol as p
from mppool._client import _planner
from mppool._client._planner import ChunkPlanner
from mppool._dispatcher import _scheduler as s
from mppool._dispatcher._stealing import WAKE_SECONDS
from mppool._dispatcher._tasks import (
    BACKOFF,
    QUEUED,
    Batch,
    Fail,
    JobDone,
    Retry,
    Task,
    TaskOptions,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeClaims:
    """Claim counters whose worker side is played by the test (``claim``)."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[int, int], int] = {}
        self.taken: dict[int, int] = {}  # batch id -> tokens the (simulated) worker took

    def arm(self, worker: int, slot: int, tokens: int) -> None:
        assert self.tokens.get((worker, slot), 0) == 0, "a slot reused before it was empty"
        self.tokens[(worker, slot)] = tokens

    def take(self, worker: int, slot: int, want: int) -> int:
        got = min(want, self.tokens.get((worker, slot), 0))
        self.tokens[(worker, slot)] = self.tokens.get((worker, slot), 0) - got
        return got

    def drain(self, worker: int, slot: int) -> int:
        return self.take(worker, slot, 1 << 30)

    def unclaimed(self, worker: int, slot: int) -> int | None:
        return self.tokens.get((worker, slot), 0)

    def claim(self, batch: Batch) -> bool:
        """The worker takes its next token of ``batch``."""
        return self.take(batch.worker, batch.slot, 1) == 1


TRIALS = 60
_ids = itertools.count(1)


def task(
    opts: TaskOptions | None = None, fn_id: int = 1, n_items: int = 0, not_before: float = 0.0
) -> Task:
    return Task(
        next(_ids), fn_id, 0, opts or TaskOptions(), b"", n_items=n_items, not_before=not_before
    )


def make(workers: int = 1, aging: float = 0.0) -> tuple[s.Scheduler, FakeClock, FakeClaims]:
    clock = FakeClock()
    claims = FakeClaims()
    sched = s.Scheduler(workers, clock, claims, aging_rate=aging, rng=random.Random(7))
    for w in range(workers):
        sched.worker_up(w)
    return sched, clock, claims


def finish(
    sched: s.Scheduler, claims: FakeClaims, batch: Batch, duration: float = 0.0
) -> list[Task]:
    """Worker ``batch.worker`` runs the batch to its end (or its cut) and reports."""
    ran = []
    for t in list(batch.tasks):
        if t.job is None:
            if not claims.claim(batch):
                sched.cut(batch.worker, batch.id)
                break
            ran.append(t)
            sched.outcomes.complete(batch.worker, t.id, t.attempt, duration)
        else:
            start, stop, n, cut = t.start, t.stop, 0, False
            for _ in range(t.tokens()):
                if not claims.claim(batch):
                    cut = True
                    break
                n += t.block
            n = min(n, stop - start)
            ran.append(t)
            msg = p.PartResult.view(
                p.part_result(
                    t.id,
                    t.attempt,
                    duration,
                    n,
                    pickle.dumps(list(range(start, start + n))),
                    p.OK,
                    b"",
                )
            )
            sched.outcomes.part_done(batch.worker, msg)
            if cut:
                sched.cut(batch.worker, batch.id)
                break
    return ran


def drain(sched: s.Scheduler, claims: FakeClaims, w: int = 0, duration: float = 0.0) -> list[Task]:
    """Run everything worker ``w`` is given, one batch at a time."""
    order: list[Task] = []
    while True:
        batch = sched.assign(w)
        if batch is None:
            return order
        order.extend(finish(sched, claims, batch, duration))


# --- order ---------------------------------------------------------------------------------------
def test_priority_order_then_fifo() -> None:
    sched, _, claims = make()
    prios = [0, 5, 0, 10, 5, 10, 0]
    tasks = [task(TaskOptions(priority=p)) for p in prios]
    for t in tasks:
        sched.submit(t)
    order = drain(sched, claims)
    expected = sorted(tasks, key=lambda t: (-t.opts.priority, t.id))
    assert [t.id for t in order] == [t.id for t in expected]


def test_more_urgent_work_takes_back_a_prefetched_task() -> None:
    sched, _, claims = make()
    sched.estimates.per_item[1] = 0.002  # short: one task is prefetched behind the running one
    low = [task() for _ in range(3)]
    for t in low:
        sched.submit(t)
    first = sched.assign(0)
    prefetched = sched.assign(0)
    assert first is not None and prefetched is not None
    assert [t.id for t in prefetched.tasks] == [low[1].id]
    assert claims.claim(first)  # the worker runs low[0]; low[1] waits in its pipe
    high = task(TaskOptions(priority=9))
    sched.submit(high)
    assert low[1].state == QUEUED, "the prefetched task must go back to the heap"
    sched.outcomes.complete(0, low[0].id, low[0].attempt, 0.002)
    assert not claims.claim(prefetched)  # its token was taken back: the worker skips it
    sched.cut(0, prefetched.id)
    assert [t.id for t in drain(sched, claims)] == [high.id, low[1].id, low[2].id]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("measured", [None, 1e-5, 0.003])
@pytest.mark.parametrize("stall", [1, 3, 12])
def test_gated_start_order_holds_across_workers(
    workers: int, measured: float | None, stall: int
) -> None:
    """Every worker busy; tasks of mixed priorities queue; then workers free up in random
    orders, finishing and starting at random moments, a worker with work in hand waiting at
    most ``stall`` rounds of a quarter of ``WAKE_SECONDS`` each (the OS may leave a worker
    unscheduled for a while: 12 rounds is past the point where its work is taken). On each
    worker tasks start in priority order, and no task starts after the task ``workers``
    places behind it has started."""
    rng = random.Random(workers * 1000 + int((measured or 0) * 1e6) + stall)
    for _trial in range(TRIALS):
        sched, clock, claims = make(workers)
        if measured is not None:
            sched.estimates.per_item[2] = measured
        gates = [task(fn_id=1) for _ in range(workers)]  # never measured: nothing waits behind
        for g in gates:
            sched.submit(g)
        for w in range(workers):
            sched.tick()
            b = sched.assign(w)
            assert b is not None and claims.claim(b)
        prios = [rng.choice([0, 1, 5, 9]) for _ in range(rng.randint(3, 12))]
        work = [task(TaskOptions(priority=pr), fn_id=2) for pr in prios]
        for t in work:
            sched.tick()
            sched.submit(t)
            _offer(sched, workers)
        expected = sorted(work, key=lambda t: (-t.opts.priority, t.id))
        position = {t.id: i for i, t in enumerate(expected)}
        started = _run_gated(sched, clock, claims, gates, work, rng, stall, measured or 0.0)
        _check_order([(w, position[t]) for t, w in started], workers)


def _offer(sched: s.Scheduler, workers: int) -> None:
    """The dispatcher's send pass: every worker is offered work until it takes no more."""
    for w in range(workers):
        while sched.assign(w) is not None:
            pass


def _run_gated(
    sched: s.Scheduler,
    clock: FakeClock,
    claims: FakeClaims,
    gates: list[Task],
    work: list[Task],
    rng: random.Random,
    stall: int,
    duration: float,
) -> list[tuple[int, int]]:
    """Play the workers until all ``work`` has started: (task id, worker) in start order."""
    workers = len(gates)
    started: list[tuple[int, int]] = []
    running: dict[int, Task | None] = dict(enumerate(gates))
    waiting = dict.fromkeys(range(workers), 0)  # rounds each idle worker has let pass
    for _step in range(100_000):
        if len(started) == len(work):
            break
        sched.tick()  # every step is a round of the dispatcher's loop
        clock.advance(WAKE_SECONDS / 4)
        overdue = [w for w in range(workers) if waiting[w] >= stall]
        w = overdue[0] if overdue else rng.randrange(workers)
        for v in range(workers):
            waiting[v] += v != w and running[v] is None
        waiting[w] = 0
        current = running[w]
        if current is not None:  # finish what it runs; the result offers it work
            sched.outcomes.complete(w, current.id, current.attempt, duration)
            running[w] = None
        else:
            nxt = _claim_next(sched, claims, w)
            if nxt is not None:
                running[w] = nxt
                started.append((nxt.id, w))
        _offer(sched, workers)
    else:
        raise AssertionError(f"stuck: {len(started)} of {len(work)} started")
    return started


def _claim_next(sched: s.Scheduler, claims: FakeClaims, w: int) -> Task | None:
    """Worker ``w`` takes its next unit, skipping (and reporting) batches that were cut."""
    for batch in list(sched.pipes.batches[w]):
        if batch.closed:
            continue
        done = claims.taken.get(batch.id, 0)
        if done >= len(batch.tasks):
            continue  # everything claimed: the worker is past this batch
        if not claims.claim(batch):
            sched.cut(w, batch.id)
            continue
        claims.taken[batch.id] = done + 1
        return batch.tasks[done]
    return None


def _check_order(starts: list[tuple[int, int]], workers: int) -> None:
    """``starts``: (worker, priority rank of the task) for each start, in start order."""
    positions = [pos for _, pos in starts]
    per_worker: dict[int, list[int]] = {}
    for w, pos in starts:
        per_worker.setdefault(w, []).append(pos)
    for w, seq in per_worker.items():
        assert seq == sorted(seq), f"worker {w} started out of order: {seq}"
    start_index = {pos: i for i, pos in enumerate(positions)}
    for pos, at in start_index.items():
        later = start_index.get(pos + workers)
        assert later is None or later > at, f"#{pos} started after #{pos + workers}: {positions}"


# --- aging ---------------------------------------------------------------------------------------
def test_aging_bounds_the_wait_of_low_priority_work() -> None:
    rate = 1.0  # one priority level per second
    sched, clock, claims = make(aging=rate)
    low = task(TaskOptions(priority=0))
    sched.submit(low)
    waited = None
    for _ in range(200):
        sched.submit(task(TaskOptions(priority=5)))
        batch = sched.assign(0)
        assert batch is not None and len(batch.tasks) == 1
        t = batch.tasks[0]
        if t is low:
            waited = clock.now - low.submitted_at
            break
        clock.advance(0.1)
        finish(sched, claims, batch, 0.1)
    assert waited is not None, "the low-priority task starved"
    # Documented bound: (P - p) / rate seconds, plus one task of slack.
    assert waited <= (5 - 0) / rate + 0.1 + 1e-9


def test_without_aging_low_priority_starves_under_the_same_stream() -> None:
    sched, clock, claims = make(aging=0.0)
    low = task(TaskOptions(priority=0))
    sched.submit(low)
    for _ in range(200):
        sched.submit(task(TaskOptions(priority=5)))
        batch = sched.assign(0)
        assert batch is not None and low not in batch.tasks
        clock.advance(0.1)
        finish(sched, claims, batch, 0.1)


# --- retries, crashes, timeouts ------------------------------------------------------------------
def _run_one(sched: s.Scheduler, claims: FakeClaims, w: int = 0) -> Task:
    batch = sched.assign(w)
    assert batch is not None and len(batch.tasks) == 1 and claims.claim(batch)
    return batch.tasks[0]


def test_backoff_schedule_on_fake_clock() -> None:
    sched, clock, claims = make()
    opts = TaskOptions(max_attempts=4, initial_delay=1.0, factor=2.0, max_delay=60.0)
    sched.submit(task(opts))
    waits = []
    for _ in range(3):
        sent = _run_one(sched, claims)
        outcome = sched.outcomes.fail(0, sent.id, sent.attempt, 0.0, retryable=True)
        assert isinstance(outcome, Retry)
        waits.append(outcome.at - clock.now)
        assert sched.assign(0) is None  # backing off: nothing runnable, no worker held
        clock.advance(outcome.at - clock.now - 0.001)
        assert sched.fire_timers() == [] and sched.assign(0) is None
        clock.advance(0.001)
        sched.fire_timers()
    assert waits == [1.0, 2.0, 4.0]
    sent = _run_one(sched, claims)
    outcome = sched.outcomes.fail(0, sent.id, sent.attempt, 0.0, retryable=True)
    assert isinstance(outcome, Fail) and outcome.task.failures == 4


def test_backoff_caps_and_jitter_stays_in_range() -> None:
    opts = TaskOptions(initial_delay=1.0, factor=10.0, max_delay=5.0, jitter=0.5)
    rng = random.Random(1)
    for failures in range(1, 6):
        base = min(5.0, 10.0 ** (failures - 1))
        d = opts.backoff(failures, rng)
        assert base * 0.5 <= d <= base * 1.5


def test_non_retryable_error_fails_at_once() -> None:
    sched, _, claims = make()
    sched.submit(task(TaskOptions(max_attempts=5)))
    sent = _run_one(sched, claims)
    assert isinstance(sched.outcomes.fail(0, sent.id, sent.attempt, 0.0, retryable=False), Fail)
    assert sched.empty()


def test_stale_result_is_dropped_after_a_crash() -> None:
    sched, _, claims = make(workers=2)
    t = task()
    sched.submit(t)
    sent = _run_one(sched, claims)
    old_attempt = sent.attempt
    ((culprit, outcome),) = sched.outcomes.worker_lost(0, blame=True)
    assert culprit is t and isinstance(outcome, Retry)
    assert sched.outcomes.complete(0, t.id, old_attempt, 0.0) is None  # stale
    again = _run_one(sched, claims, 1)
    assert again is t and t.attempt > old_attempt
    assert sched.outcomes.complete(1, t.id, t.attempt, 0.0) is t
    assert sched.empty()


def test_crash_blame_limit() -> None:
    sched, _, claims = make()
    t = task(TaskOptions(crash_retries=2))
    sched.submit(t)
    outcomes = []
    for _ in range(3):
        sched.worker_up(0)
        _run_one(sched, claims)
        outcomes.extend(o for _, o in sched.outcomes.worker_lost(0, blame=True))
    assert [type(o) for o in outcomes] == [Retry, Retry, Fail]
    assert t.crashes == 3


def test_a_crash_blames_exactly_the_unit_that_was_running() -> None:
    sched, _, claims = make()
    sched.estimates.per_item[1] = 1e-6  # tiny: batched
    tasks = [task() for _ in range(4)]
    for t in tasks:
        sched.submit(t)
    batch = sched.assign(0)
    assert batch is not None and batch.tasks == tasks
    for _ in range(3):  # it ran tasks 0 and 1 (results not written yet) and started task 2
        assert claims.claim(batch)
    events = sched.outcomes.worker_lost(0, blame=True)
    assert [(t, type(o)) for t, o in events] == [(tasks[2], Retry)]
    assert [t.crashes for t in tasks] == [0, 0, 1, 0]
    sched.worker_up(0)
    assert {t.id for t in drain(sched, claims)} == {t.id for t in tasks}  # all run again


def test_timeout_fires_only_after_start_and_kills() -> None:
    sched, clock, claims = make()
    t = task(TaskOptions(timeout=2.0))
    sched.submit(t)
    _run_one(sched, claims)
    clock.advance(5.0)  # queued/in-pipe time does not count
    assert sched.fire_timers() == []
    sched.started(0, t.id, t.attempt, 0)
    clock.advance(1.9)
    assert sched.fire_timers() == []
    clock.advance(0.2)
    (event,) = sched.fire_timers()
    assert event.worker == 0 and isinstance(event.outcome, Fail)
    assert sched.empty()


def test_timeout_retried_when_policy_says_so() -> None:
    sched, clock, claims = make()
    t = task(TaskOptions(timeout=1.0, max_attempts=2, initial_delay=0.5, retry_timeouts=True))
    sched.submit(t)
    _run_one(sched, claims)
    sched.started(0, t.id, t.attempt, 0)
    clock.advance(1.5)
    (event,) = sched.fire_timers()
    assert isinstance(event.outcome, Retry) and event.outcome.at == pytest.approx(clock.now + 0.5)


def test_delayed_task_waits_for_its_time() -> None:
    sched, clock, claims = make()
    t = task(not_before=clock.now + 3.0)
    sched.submit(t)
    assert sched.assign(0) is None and sched.queued == 1
    assert sched.next_timer() == pytest.approx(clock.now + 3.0)
    clock.advance(3.0)
    sched.fire_timers()
    assert _run_one(sched, claims) is t


# --- cancelling ----------------------------------------------------------------------------------
def test_cancel_removes_queued_delayed_and_unstarted_pipe_work() -> None:
    sched, clock, claims = make(workers=1)
    sched.estimates.per_item[1] = 0.002
    a, b, c = task(), task(), task()
    d = task(not_before=clock.now + 10)
    for t in (a, b, c, d):
        sched.submit(t)
    first = sched.assign(0)
    second = sched.assign(0)
    assert first is not None and second is not None and second.tasks == [b]
    assert claims.claim(first)  # a runs
    assert sched.cancel(b.id, kill=False) == (True, [])  # in the pipe, not started: taken back
    assert sched.cancel(c.id, kill=False) == (True, [])
    assert sched.cancel(d.id, kill=False) == (True, [])
    assert sched.cancel(a.id, kill=True) == (True, [0])  # running: its worker must be killed
    assert sched.outcomes.complete(0, a.id, a.attempt, 0.002) is None  # forgotten: result dropped
    assert not claims.claim(second)
    sched.cut(0, second.id)
    assert sched.assign(0) is None and sched.empty()


# --- stealing ------------------------------------------------------------------------------------
def test_idle_worker_takes_urgent_work_prefetched_behind_a_busy_peer() -> None:
    sched, _, claims = make(workers=2)
    sched.estimates.per_item[1] = 0.002
    sched.worker_down(1)
    low = task()
    high_a, high_b = task(TaskOptions(priority=5)), task(TaskOptions(priority=5))
    for t in (high_a, high_b, low):
        sched.submit(t)
    first = sched.assign(0)
    second = sched.assign(0)
    assert first is not None and second is not None and second.tasks == [high_b]
    assert claims.claim(first)  # worker 0 runs high_a (it turns out long), high_b waits
    sched.worker_up(1)
    got = sched.assign(1)
    assert got is not None and got.tasks == [high_b], "must take the urgent task, not low"
    assert sched.pipes.steals == 1


def test_idle_worker_takes_half_of_a_running_chunks_unstarted_items() -> None:
    sched, _, claims = make(workers=2)
    sched.estimates.per_item[1] = 0.01  # 10 ms per item: a block per item
    sched.worker_down(1)
    chunk = task(n_items=8)
    sched.submit(chunk)
    batch = sched.assign(0)
    assert batch is not None and batch.tasks == [chunk] and chunk.block == 1
    assert claims.claim(batch)  # item 0 runs; 7 are unstarted
    sched.worker_up(1)
    stolen = sched.assign(1)
    assert stolen is not None
    (part,) = stolen.tasks
    assert (part.start, part.stop) == (4, 8) and (chunk.start, chunk.stop) == (0, 4)
    # Both report; the chunk's result has every item, in order, once.
    done = [finish(sched, claims, stolen)]
    for _ in range(3):
        assert claims.claim(batch)
    msg = p.PartResult.view(
        p.part_result(chunk.id, chunk.attempt, 0.04, 4, pickle.dumps([0, 1, 2, 3]), p.OK, b"")
    )
    outcome = sched.outcomes.part_done(0, msg)
    assert done and isinstance(outcome, JobDone)
    view = p.ChunkResult.view(outcome.job.message())
    assert [x for piece in view.pieces for x in pickle.loads(piece)] == list(range(8))


# --- batching and prefetch -----------------------------------------------------------------------
def test_unknown_duration_tasks_travel_alone() -> None:
    sched, _, _ = make()
    for _ in range(5):
        sched.submit(task(fn_id=99))
    batch = sched.assign(0)
    assert batch is not None and len(batch.tasks) == 1
    assert sched.assign(0) is None  # and nothing is prefetched behind unknown work


def test_tiny_tasks_are_batched_up_to_the_window() -> None:
    sched, _, _ = make()
    sched.estimates.per_item[1] = 1e-6
    for _ in range(1000):
        sched.submit(task())
    batch = sched.assign(0)
    assert batch is not None and 1 < len(batch.tasks) <= s.MAX_IN_PIPE


def test_a_short_queue_is_shared_not_batched() -> None:
    sched, _, _ = make(workers=2)
    sched.estimates.per_item[1] = 1e-6
    for _ in range(2):
        sched.submit(task())
    batch = sched.assign(0)
    assert batch is not None and len(batch.tasks) == 1  # the other is worker 1's


def test_one_medium_task_is_prefetched_but_not_more() -> None:
    sched, _, _ = make()
    sched.estimates.per_item[1] = 0.002
    for _ in range(5):
        sched.submit(task())
    assert sched.assign(0) is not None and sched.assign(0) is not None
    assert sched.assign(0) is None


def test_long_tasks_are_never_prefetched() -> None:
    sched, _, _ = make()
    sched.estimates.per_item[1] = 0.5
    for _ in range(5):
        sched.submit(task())
    assert sched.assign(0) is not None
    assert sched.assign(0) is None


def test_estimates_follow_measured_durations() -> None:
    sched, _, claims = make()
    t = task()
    sched.submit(t)
    assert sched.estimates.of(t) is None
    sent = _run_one(sched, claims)
    sched.outcomes.complete(0, sent.id, sent.attempt, 0.02)
    assert sched.estimates.of(task(n_items=5)) == pytest.approx(0.1)


def test_abort_all_forgets_everything() -> None:
    sched, clock, _ = make(workers=2)
    for _ in range(4):
        sched.submit(task())
    sched.submit(task(not_before=clock.now + 5))
    sched.assign(0)
    assert len(sched.abort_all()) == 5
    assert sched.empty() and sched.queued == 0


# --- map chunks ----------------------------------------------------------------------------------
def test_a_retryable_item_failure_retries_that_item_only() -> None:
    sched, clock, claims = make()
    sched.estimates.per_item[1] = 0.001
    chunk = task(TaskOptions(max_attempts=3, initial_delay=0.5), n_items=10)
    sched.submit(chunk)
    batch = sched.assign(0)
    assert batch is not None
    while claims.claim(batch):
        pass
    # Items 0-3 ran; item 4 raised a retryable error; the worker stopped the part there.
    msg = p.part_result(
        chunk.id, chunk.attempt, 0.005, 4, pickle.dumps([0, 1, 2, 3]), p.ERROR_RETRYABLE, b"e"
    )
    assert sched.outcomes.part_done(0, p.PartResult.view(msg)) is None
    rest = drain(sched, claims)
    assert [(t.start, t.stop) for t in rest] == [(5, 10)]  # the others do not wait
    clock.advance(0.5)
    sched.fire_timers()
    retried = drain(sched, claims)
    assert [(t.start, t.stop) for t in retried] == [(4, 5)]
    assert sched.empty()


def test_a_crash_in_a_chunk_blames_one_block_and_reruns_the_rest() -> None:
    sched, _, claims = make()
    sched.estimates.per_item[1] = 0.01
    chunk = task(n_items=6)
    sched.submit(chunk)
    batch = sched.assign(0)
    assert batch is not None and chunk.block == 1
    for _ in range(3):  # items 0, 1 ran; item 2 was running when the worker died
        assert claims.claim(batch)
    ((blamed, outcome),) = sched.outcomes.worker_lost(0, blame=True)
    assert (blamed.start, blamed.stop) == (2, 3) and isinstance(outcome, Retry)
    assert blamed.crashes == 1
    sched.worker_up(0)
    parts = drain(sched, claims)
    assert sorted((t.start, t.stop) for t in parts) == [(0, 2), (2, 3), (3, 6)]
    assert sched.empty()


# --- the chunk planner (client side, pure) -------------------------------------------------------
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
    floor = int(_planner.CHUNK_TARGET_SECONDS / 4 / 0.001)
    assert tail <= max(1, -(-40 // (_planner.TAIL_SPLIT * workers)), floor) < full


def test_chunk_planner_fixed_size() -> None:
    assert ChunkPlanner(2, fixed=7).next_size(3) == 7
    with pytest.raises(ValueError):
        ChunkPlanner(2, fixed=0)


_ = BACKOFF
