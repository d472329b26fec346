"""Scheduling policies on the pure core, with a fake clock: deadlines (earliest deadline
first, and failing instead of starting late), weighted fair share between kinds, and circuit
breakers per kind.

The tests play the workers, as in ``test_scheduler``: they take claim tokens and report
results in whatever order a case needs.
"""

from __future__ import annotations

import itertools
import math
import pickle

import pytest

from mppool import _deps
from mppool import _protocol as p
from mppool._breaker import CircuitBreaker
from mppool._dispatcher import _scheduler as s
from mppool._dispatcher._tasks import QUEUED, Batch, Fail, JobDone, Retry, Task, TaskOptions

from .test_scheduler import FakeClaims, FakeClock, drain, finish, make

_ids = itertools.count(10_000)


def complete(sched: s.Scheduler, batch: Batch, duration: float = 0.0) -> None:
    """The worker, which has claimed ``batch``'s single task, reports it done."""
    (t,) = batch.tasks
    assert sched.outcomes.complete(batch.worker, t.id, t.attempt, duration) is t


def dl_task(
    deadline: float = math.inf,
    priority: float = 0.0,
    run_late: bool = False,
    n_items: int = 0,
    kind: str = "",
) -> Task:
    opts = TaskOptions(priority=priority, run_late=run_late, kind=kind)
    return Task(next(_ids), 1, 0, opts, b"", n_items=n_items, deadline=deadline)


# --- deadlines -----------------------------------------------------------------------------------
def test_earliest_deadline_first_within_a_priority_then_fifo() -> None:
    sched, clock, claims = make()
    now = clock.now
    busy = dl_task()
    sched.submit(busy)
    running = sched.assign(0)  # the worker is busy: everything below queues up
    assert running is not None and claims.claim(running)
    tasks = [
        dl_task(),  # no deadline: after every task of its level that has one
        dl_task(now + 30),
        dl_task(now + 10),
        dl_task(now + 20, priority=5),  # a higher priority still goes first
        dl_task(now + 10),  # equal deadlines: arrival order
        dl_task(now + 5, priority=-1),
    ]
    for t in tasks:
        sched.submit(t)
    complete(sched, running)
    order = [t.id for t in drain(sched, claims)]
    expected = [tasks[i].id for i in (3, 2, 4, 1, 0, 5)]
    assert order == expected


def test_with_aging_a_deadline_takes_the_oldest_place_of_its_level() -> None:
    sched, clock, claims = make(aging=1.0)  # one priority level per second
    old = dl_task()
    sched.submit(old)  # the worker is idle: it starts at once
    first = sched.assign(0)
    assert first is not None and claims.claim(first)
    waiting = dl_task()
    sched.submit(waiting)
    clock.advance(3.0)  # 3 s later, tasks of the same level arrive with deadlines
    urgent = dl_task(clock.now + 1)
    later = dl_task(clock.now + 50)
    high = dl_task(priority=2)  # 2 levels up, but 3 s younger than `waiting`
    for t in (later, high, urgent):
        sched.submit(t)
    complete(sched, first)
    order = [t.id for t in drain(sched, claims)]
    # The level's oldest place (older than `high`'s, by aging) goes to the earliest
    # deadline; the rest of the level keeps deadline order, and no deadline comes last.
    assert order == [urgent.id, later.id, waiting.id, high.id]


def test_a_task_that_cannot_start_by_its_deadline_fails_instead() -> None:
    sched, clock, claims = make()
    blocker = dl_task()
    sched.submit(blocker)
    running = sched.assign(0)
    assert running is not None and claims.claim(running)
    late = dl_task(clock.now + 2.0)
    relaxed = dl_task(clock.now + 2.0, run_late=True)
    sched.submit(late)
    sched.submit(relaxed)
    clock.advance(1.9)
    sched.fire_timers()
    assert sched.unstarted == []
    clock.advance(0.2)
    sched.fire_timers()
    (expired,) = sched.unstarted
    assert expired.task is late and isinstance(expired.outcome, Fail)
    waited, failures = pickle.loads(expired.payload)
    assert abs(waited - 2.1) < 1e-6 and failures == 0
    assert sched.counts["expired"] == 1 and sched.counts["failed"] == 1
    sched.unstarted.clear()
    complete(sched, running)
    assert [t.id for t in drain(sched, claims)] == [relaxed.id]  # late, but it asked for that
    assert sched.empty()


def test_a_deadline_takes_back_unstarted_pipe_work_but_never_a_running_task() -> None:
    sched, clock, claims = make()
    sched.estimates.per_item[1] = 0.002  # short: the next task is prefetched into the pipe
    a = dl_task(clock.now + 1.0)
    b = dl_task(clock.now + 1.0)
    sched.submit(a)
    sched.submit(b)
    first = sched.assign(0)
    second = sched.assign(0)
    assert first is not None and second is not None and second.tasks == [b]
    assert claims.claim(first)  # a starts in time; b waits in the pipe
    clock.advance(1.5)
    sched.fire_timers()
    assert [e.task for e in sched.unstarted] == [b]  # taken back from the pipe, failed
    assert not claims.claim(second)  # the worker finds its token gone: b never starts
    sched.cut(0, second.id)
    assert sched.outcomes.complete(0, a.id, a.attempt, 1.5) is a  # a ran to its end
    assert sched.empty()


def test_a_retry_that_would_start_after_the_deadline_fails_with_it() -> None:
    sched, clock, claims = make()
    opts = TaskOptions(max_attempts=3, initial_delay=5.0)
    t = Task(next(_ids), 1, 0, opts, b"", deadline=clock.now + 2.0)
    sched.submit(t)
    batch = sched.assign(0)
    assert batch is not None and claims.claim(batch)
    sched.outcomes.fail(0, t.id, t.attempt, 0.1, retryable=True)
    assert sched.counts["retried"] == 1  # backing off for 5 s, past the deadline
    clock.advance(2.0)
    sched.fire_timers()
    (expired,) = sched.unstarted
    assert expired.task is t and pickle.loads(expired.payload)[1] == 1  # one failure before
    assert sched.empty()


def test_a_chunk_past_its_deadline_ends_at_its_first_unstarted_item() -> None:
    sched, clock, claims = make(workers=2)
    sched.estimates.per_item[1] = 0.01
    chunk = dl_task(clock.now + 1.0, n_items=8)
    sched.submit(chunk)
    batch = sched.assign(0)
    assert batch is not None and chunk.block == 1
    for _ in range(3):  # the worker starts three items
        assert claims.claim(batch)
    started_items = 3
    clock.advance(2.0)
    sched.fire_timers()
    assert sched.unstarted == []  # its first part is running: the chunk waits for it
    msg = p.PartResult.view(
        p.part_result(chunk.id, chunk.attempt, 0.03, started_items, pickle.dumps([]), p.OK, b"")
    )
    done = sched.outcomes.part_done(0, msg)
    assert isinstance(done, JobDone)
    assert done.job.err is not None and done.job.err[0] == started_items
    assert done.job.err[1] == p.EXPIRED
    assert sched.empty()


# --- circuit breakers ----------------------------------------------------------------------------
def breaker_sched(
    wait: bool = False, failures: int = 3, reset_after: float = 60
) -> tuple[s.Scheduler, FakeClock, FakeClaims]:
    clock, claims = FakeClock(), FakeClaims()
    knobs = CircuitBreaker(failures, within=10, reset_after=reset_after, wait=wait).knobs()
    sched = s.Scheduler(1, clock, claims, aging_rate=0.0, circuit_breakers={"io": knobs})
    sched.worker_up(0)
    return sched, clock, claims


def run_next(sched: s.Scheduler, claims: FakeClaims, ok: bool) -> Task:
    """The worker runs the next task and reports success or a (non-retryable) error."""
    batch = sched.assign(0)
    assert batch is not None and claims.claim(batch)
    (t,) = batch.tasks
    if ok:
        assert sched.outcomes.complete(0, t.id, t.attempt, 0.01) is t
    else:
        assert isinstance(sched.outcomes.fail(0, t.id, t.attempt, 0.01, retryable=False), Fail)
    sched.tick()  # the dispatcher's next round applies what the circuit judges
    return t


def refused(sched: s.Scheduler) -> list[Task]:
    out = [u.task for u in sched.unstarted if u.status == p.CIRCUIT_OPEN]
    sched.unstarted.clear()
    return out


def test_a_circuit_opens_fails_its_kind_fast_then_probes_and_closes() -> None:
    sched, clock, claims = breaker_sched()
    io = [dl_task(kind="io") for _ in range(6)]
    other = dl_task(kind="cpu")
    for t in (*io, other):
        sched.submit(t)
    run_next(sched, claims, ok=False)
    clock.advance(11)  # the first failure leaves the 10 s window
    run_next(sched, claims, ok=False)
    run_next(sched, claims, ok=False)
    assert sched.circuits.by_kind["io"].state == "closed"  # two within the window
    run_next(sched, claims, ok=False)  # the third within 10 s: open
    assert sched.circuits.by_kind["io"].state == "open"
    refusals = list(sched.unstarted)
    assert refused(sched) == io[4:]  # queued tasks of the kind fail fast...
    assert pickle.loads(refusals[0].payload) == ("io", 60.0)
    late = dl_task(kind="io")
    sched.submit(late)
    assert refused(sched) == [late]  # ... and so do new ones
    assert run_next(sched, claims, ok=True) is other  # other kinds run on
    clock.advance(60)
    assert sched.fire_timers() == []  # the circuit's wait ends: half-open
    probe, second = dl_task(kind="io"), dl_task(kind="io")
    sched.submit(probe)
    sched.submit(second)
    assert refused(sched) == [second]  # one probe at a time
    assert run_next(sched, claims, ok=True) is probe
    assert sched.circuits.by_kind["io"].state == "closed"
    after = dl_task(kind="io")
    sched.submit(after)
    assert refused(sched) == [] and run_next(sched, claims, ok=True) is after
    assert sched.counts["refused"] == 4 and sched.circuits.by_kind["io"].opened == 1


def test_a_failed_probe_opens_the_circuit_again() -> None:
    sched, clock, claims = breaker_sched()
    for _ in range(3):
        sched.submit(dl_task(kind="io"))
        run_next(sched, claims, ok=False)
    assert sched.circuits.by_kind["io"].state == "open"
    clock.advance(60)
    sched.fire_timers()
    sched.submit(dl_task(kind="io"))
    run_next(sched, claims, ok=False)  # the probe fails
    circuit = sched.circuits.by_kind["io"]
    assert circuit.state == "open" and circuit.opened == 2
    assert circuit.half_open_at == clock.now + 60
    clock.advance(59)
    sched.submit(dl_task(kind="io"))
    assert len(refused(sched)) == 1  # still open


def test_a_waiting_breaker_holds_its_kind_and_releases_it_in_priority_order() -> None:
    sched, clock, claims = breaker_sched(wait=True)
    for _ in range(3):
        sched.submit(dl_task(kind="io", priority=10))  # these run (and fail) first
    held = [dl_task(kind="io", priority=pr) for pr in (0, 5, 1)]
    for t in held:
        sched.submit(t)
    for _ in range(3):
        run_next(sched, claims, ok=False)  # the first three fail: open
    assert refused(sched) == [] and sched.queued == 3  # held, not failed
    assert sched.assign(0) is None  # nothing runs while open
    clock.advance(60)
    sched.fire_timers()  # half-open: the most urgent held task probes
    assert run_next(sched, claims, ok=True) is held[1]
    assert [t.id for t in drain(sched, claims)] == [held[2].id, held[0].id]
    assert sched.empty()


def test_cancelling_a_held_task_or_the_probe_frees_the_circuit() -> None:
    sched, clock, claims = breaker_sched(wait=True)
    for _ in range(3):
        sched.submit(dl_task(kind="io"))
        run_next(sched, claims, ok=False)
    waiting = dl_task(kind="io")
    sched.submit(waiting)
    assert sched.cancel(waiting.id, kill=False) == (True, [])
    assert sched.queued == 0
    clock.advance(60)
    sched.fire_timers()
    probe = dl_task(kind="io")
    sched.submit(probe)
    batch = sched.assign(0)
    assert batch is not None and batch.tasks == [probe] and claims.claim(batch)
    assert sched.cancel(probe.id, kill=False) == (True, [])  # forgotten while it runs
    sched.outcomes.complete(0, probe.id, probe.attempt, 0.01)  # its result is dropped
    sched.tick()
    nxt = dl_task(kind="io")
    sched.submit(nxt)
    assert run_next(sched, claims, ok=True) is nxt  # the next task could probe
    assert sched.circuits.by_kind["io"].state == "closed"


# --- weighted fair share -------------------------------------------------------------------------
DURATION = {"etl": 0.02, "adhoc": 0.08, "other": 0.05}  # seconds per task, by kind
FN = {"etl": 1, "adhoc": 2, "other": 3}


def share_sched(workers: int = 2) -> tuple[s.Scheduler, FakeClock, FakeClaims]:
    clock, claims = FakeClock(), FakeClaims()
    sched = s.Scheduler(workers, clock, claims, aging_rate=0.1, shares={"etl": 3.0, "adhoc": 1.0})
    for w in range(workers):
        sched.worker_up(w)
    return sched, clock, claims


def simulate(
    sched: s.Scheduler,
    clock: FakeClock,
    claims: FakeClaims,
    seconds: float,
    kinds: tuple[str, ...],
    backlog: int = 20,
) -> dict[str, float]:
    """Keep ``backlog`` tasks of each kind queued; run the workers for ``seconds`` of fake
    time, each task for its kind's duration. Returns busy seconds per kind."""
    busy = dict.fromkeys(kinds, 0.0)
    queued = {
        k: sum(1 for t in sched.tasks.values() if t.opts.kind == k and t.state == QUEUED)
        for k in kinds
    }
    running: dict[int, tuple[Task, float]] = {}
    end = clock.now + seconds
    while clock.now < end:
        for kind in kinds:
            while queued[kind] < backlog:
                t = Task(next(_ids), FN[kind], 0, TaskOptions(kind=kind), b"")
                sched.submit(t)
                queued[kind] += 1
        for w in range(sched.workers):
            if w in running:
                continue
            batch = sched.assign(w)
            assert batch is not None and len(batch.tasks) == 1 and claims.claim(batch)
            t = batch.tasks[0]
            queued[t.opts.kind] -= 1
            running[w] = (t, clock.now + DURATION[t.opts.kind])
        w = min(running, key=lambda v: running[v][1])
        t, at = running.pop(w)
        clock.now = at
        assert sched.outcomes.complete(w, t.id, t.attempt, DURATION[t.opts.kind]) is t
        busy[t.opts.kind] += DURATION[t.opts.kind]
    for w, (t, at) in sorted(running.items(), key=lambda item: item[1][1]):
        clock.now = max(clock.now, at)  # let what runs finish (counted where it started)
        assert sched.outcomes.complete(w, t.id, t.attempt, DURATION[t.opts.kind]) is t
    return busy


def test_fair_share_splits_measured_busy_time_by_weight() -> None:
    sched, clock, claims = share_sched()
    busy = simulate(sched, clock, claims, 120.0, ("etl", "adhoc"))
    # 3:1 by run time, though an adhoc task runs 4x longer than an etl one (by task count
    # the split would be 12:1).
    assert busy["etl"] / busy["adhoc"] == pytest.approx(3.0, rel=0.10)
    stats = sched.fair.snapshot() if sched.fair is not None else {}
    assert stats["etl"]["weight"] == 3.0 and stats["adhoc"]["weight"] == 1.0
    assert stats["etl"]["busy_seconds"] == pytest.approx(busy["etl"])


def test_an_idle_kinds_share_goes_to_the_others_and_banks_no_credit() -> None:
    sched, clock, claims = share_sched()
    alone = simulate(sched, clock, claims, 30.0, ("adhoc",))
    assert alone["adhoc"] == pytest.approx(2 * 30.0, rel=0.05)  # all of both workers
    # etl arrives after 30 s of adhoc alone: it gets its 3:1 from then on, not all the
    # workers until it has "caught up" on the time it did not use.
    both = simulate(sched, clock, claims, 60.0, ("etl", "adhoc"))
    assert both["etl"] / both["adhoc"] == pytest.approx(3.0, rel=0.10)


def test_a_kind_not_listed_weighs_one_and_priorities_order_within_a_kind() -> None:
    sched, clock, claims = share_sched()
    busy = simulate(sched, clock, claims, 120.0, ("etl", "other"))
    assert busy["etl"] / busy["other"] == pytest.approx(3.0, rel=0.10)
    sched, clock, claims = share_sched(workers=1)
    low, high = (Task(next(_ids), 1, 0, TaskOptions(kind="etl", priority=p), b"") for p in (0, 9))
    sched.submit(low)
    sched.submit(high)
    assert [t.id for t in drain(sched, claims, duration=0.02)] == [high.id, low.id]


# --- dependencies: chaining a task behind the one it waits for -----------------------------------
def dep_task(fn_id: int = 1, opts: TaskOptions | None = None) -> Task:
    return Task(next(_ids), fn_id, 0, opts or TaskOptions(), b"payload")


def test_a_chain_goes_to_one_worker_behind_its_head_and_is_not_stolen() -> None:
    sched, clock, claims = make(workers=2)
    a, d, e = dep_task(), dep_task(), dep_task()
    sched.submit(a)
    sched.submit(d, needs=(a.id,))
    sched.submit(e, needs=(d.id,))
    batch = sched.assign(0)
    assert batch is not None and batch.tasks == [a, d, e]
    assert a.flags & p.FLAG_KEEP and d.flags & p.FLAG_CHAINED and e.flags & p.FLAG_CHAINED
    assert d.payload.startswith(_deps.CHAINED)
    clock.advance(1.0)  # long past a fresh write: the idle worker may look for work
    assert sched.assign(1) is None  # a chain is not split between workers
    assert claims.claim(batch)
    assert sched.outcomes.complete(0, a.id, a.attempt, 0.01) is a
    assert claims.claim(batch)
    assert sched.outcomes.complete(0, d.id, d.attempt, 0.01) is d
    assert claims.claim(batch)
    assert sched.outcomes.complete(0, e.id, e.attempt, 0.01) is e
    assert sched.empty()


def test_a_chained_task_whose_head_failed_here_waits_and_runs_on_the_retry() -> None:
    sched, clock, claims = make(workers=1)
    a = dep_task(opts=TaskOptions(max_attempts=2, initial_delay=1.0))
    d = dep_task()
    sched.submit(a)
    sched.submit(d, needs=(a.id,))
    batch = sched.assign(0)
    assert batch is not None and batch.tasks == [a, d] and claims.claim(batch)
    assert isinstance(sched.outcomes.fail(0, a.id, a.attempt, 0.01, retryable=True), Retry)
    assert claims.claim(batch)  # the worker goes on to d, finds no value: UNCHAINED
    sched.outcomes.unchained(0, d.id, d.attempt)
    assert d.state == "waiting" and d.chained_to is None and d.payload == b"payload"
    clock.advance(1.0)
    sched.fire_timers()  # a's retry
    retry = sched.assign(0)
    assert retry is not None and retry.tasks == [a, d]  # chained behind it again
    assert claims.claim(retry)
    assert sched.outcomes.complete(0, a.id, a.attempt, 0.01) is a
    # d takes the result, in case it comes back unrun; here it runs on the worker's value.
    assert sched.dependencies.finished(a.id, p.OK, 2, b"a's result") == [d]
    assert claims.claim(retry)
    assert sched.outcomes.complete(0, d.id, d.attempt, 0.01) is d
    assert sched.empty()


def test_a_late_dependent_takes_a_recent_outcome_or_waits_for_a_bounced_task() -> None:
    sched, _, claims = make(workers=1)
    deps = sched.dependencies
    a = dep_task()
    sched.submit(a)
    assert [t.id for t in drain(sched, claims)] == [a.id]
    assert deps.missing((a.id,))  # ended, and nothing kept yet
    deps.record(a.id, p.OK, 1, b"a's result")  # the dispatcher keeps outcomes once enabled
    assert not deps.missing((a.id,))
    late = dep_task()
    sched.submit(late, needs=(a.id,))
    assert late.state == "queued" and late.payload.startswith(_deps.BUNDLE)
    deps.bounced.add(999_999)  # a task sent back to the client, to come again
    waiting = dep_task()
    assert not deps.missing((999_999,))
    sched.submit(waiting, needs=(999_999,))
    assert waiting.state == "waiting"
    deps.record(a.id, p.ERROR, 1, b"boom")
    failing = dep_task()
    sched.submit(failing, after=(a.id,))
    (refused,) = [u for u in sched.unstarted if u.task is failing]
    assert refused.status == p.DEP_FAILED


def test_held_tasks_of_an_opened_circuit_run_once_each_when_it_closes() -> None:
    sched, clock, claims = breaker_sched(wait=True, failures=1, reset_after=5)
    bad = dl_task(kind="io", priority=9)
    queued = [dl_task(kind="io") for _ in range(4)]
    for t in (bad, *queued):
        sched.submit(t)
    run_next(sched, claims, ok=False)  # the circuit opens; the queued tasks are held
    assert sched.queued == 4 and sched.queue.live == 0
    clock.advance(5)
    sched.fire_timers()  # half-open: the first held task probes
    ran = [run_next(sched, claims, ok=True)]  # it succeeds: the rest is released
    sched.estimates.per_item[1] = 1e-5  # tiny: the rest goes out in one batch
    batch = sched.assign(0)
    assert batch is not None and len(batch.tasks) == len({t.id for t in batch.tasks}) == 3
    ran += finish(sched, claims, batch)
    assert sorted(t.id for t in ran) == sorted(t.id for t in queued)  # each once
    assert sched.queue.live == 0 and sched.queued == 0 and sched.empty()


def test_a_cancelled_probe_lets_the_next_held_task_probe() -> None:
    sched, clock, claims = breaker_sched(wait=True)
    for _ in range(3):
        sched.submit(dl_task(kind="io"))
        run_next(sched, claims, ok=False)
    held = [dl_task(kind="io") for _ in range(2)]
    for t in held:
        sched.submit(t)
    clock.advance(60)
    sched.fire_timers()  # the first held task probes
    probe = sched.assign(0)
    assert probe is not None and probe.tasks == [held[0]] and claims.claim(probe)
    assert sched.cancel(held[0].id, kill=True) == (True, [0])  # killed: no outcome comes
    sched.worker_down(0)
    sched.outcomes.worker_lost(0, blame=False)
    sched.worker_up(0)
    sched.tick()  # the next round: the other held task probes, no new submit needed
    assert run_next(sched, claims, ok=True) is held[1]
    assert sched.circuits.by_kind["io"].state == "closed" and sched.empty()
