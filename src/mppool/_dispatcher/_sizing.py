"""The pool's size in the dispatcher: the target, resizes, autoscaling, and their record.

A resize (``pool.resize(n)``, a user policy's decision, or the dispatcher's own
:class:`~mppool._dispatcher._autoscale.Autoscaler`) sets the target and at once forks or
retires workers to meet it. Growing first keeps workers that were leaving but have not yet
closed their pipe, then refills vacant slots, then adds slots. A retired worker takes no new
work and gives back what it has not started (``Stealing.give_back``); ``Workers`` closes its
task pipe once it holds nothing, and does not refill its slot when it exits. Each change is kept
as a scaling event for ``stats()``, logged as a ``pool_resized`` event, and sent to the
client (``Resized``) so that its maps plan their chunks for the new size.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from ._autoscale import CHECK_SECONDS, MAX_EVENTS, Autoscaler, Knobs
from ._procs import WorkerSlot

if TYPE_CHECKING:
    from ._loop import Dispatcher


GROW_BACKOFF_SECONDS = 5.0  # after a grow failed (a fork, an initializer), the autoscaler waits


class Sizing:
    """The target size of one dispatcher's pool, and how it got there."""

    def __init__(self, d: Dispatcher, workers: int, knobs: tuple[Any, ...] | None) -> None:
        self.d = d
        self.target = workers
        self.events: deque[tuple[float, int, int, str]] = deque(maxlen=MAX_EVENTS)
        self.changes = 0
        self.autoscaler = Autoscaler(Knobs(*knobs)) if knobs is not None else None
        self.next_check = 0.0
        self.gone_seconds = 0.0  # lifetimes of the worker processes that have ended
        self.demands: dict[int, float] = {}  # open maps: seconds of input not yet sent
        self.grow_again_at = 0.0  # no autoscaled growth before then (a grow failed)
        self._cores = os.cpu_count() or 1

    def resize(
        self, target: int, reason: str, prefer: tuple[int, ...] = (), request_id: int = 0
    ) -> None:
        """Make the pool ``target`` workers now. A closing pool may still grow (its work is
        not done) but not shrink; a broken one does neither. A fork that fails stops the
        growth where it is (the pool keeps serving) and is reported to whoever asked."""
        d = self.d
        old = self.target
        error = ""
        if d.broken is not None:
            error = "broken"
        elif d.closing and target < old:
            error = "closed"
        elif target >= 1:
            self.target = target
            live = len(self.staying())
            if target > live and not self._grow(target - live):
                self.target = len(self.staying())
                error = d.workers.spawn_error
                self.grow_again_at = d.clock() + GROW_BACKOFF_SECONDS
                d.event(p.LOG_WARNING, "pool_not_grown", error, wanted=target, got=self.target)
            elif target < live:
                self._shrink(live - target, prefer)
        if self.target != old or request_id:
            d.results.append(p.Resized(p.D_RESIZED, request_id, self.target, error))
        if self.target == old:
            return
        self.changes += 1
        self.events.append((d.wall(), old, self.target, reason))
        d.event(
            p.LOG_INFO,
            "pool_resized",
            f"the pool goes from {old} to {self.target} workers ({reason})",
            from_workers=old,
            to_workers=self.target,
            reason=reason,
        )

    # --- the workers ---------------------------------------------------------------------------
    def staying(self) -> list[WorkerSlot]:
        """Slots with a worker that is not leaving (the pool's current size)."""
        return [w for w in self.d.workers.slots if w.pid and not w.leaving]

    def _grow(self, count: int) -> bool:
        """``count`` more workers: keep leaving ones, refill vacant slots, add slots. False if
        a fork failed (``Workers.spawn_error`` says why)."""
        d = self.d
        workers = d.workers
        for w in workers.slots:
            if count and w.leaving and w.pid and w.task_fd >= 0 and not w.kill_reason:
                if w.draining or w.retired:
                    continue  # leaving anyway (max_tasks_per_child, memory): not revived
                w.leaving = False  # its pipe is still open: it stays
                if w.ready:
                    d.sched.worker_up(w.index)
                count -= 1
        for w in workers.slots:
            if count and w.vacant:
                if not workers.spawn(w, fatal=False):
                    return False
                w.grown = True
                count -= 1
        while count:
            try:
                d.claims.add_worker()
            except OSError as exc:
                workers.spawn_error = f"could not add a worker slot: {exc}"
                return False
            w = WorkerSlot(d.sched.add_worker())
            w.leaving = True  # vacant until its worker is forked
            workers.slots.append(w)
            if not workers.spawn(w, fatal=False):
                return False
            w.grown = True
            count -= 1
        return True

    def _shrink(self, count: int, prefer: tuple[int, ...]) -> None:
        """Retire ``count`` workers: those in ``prefer``, then idle ones, starting ones, busy
        ones (a busy worker finishes its current task first)."""
        d = self.d
        pipes = d.sched.pipes

        def order(w: WorkerSlot) -> tuple[int, int]:
            if w.index in prefer:
                return (0, prefer.index(w.index))
            if w.ready and not pipes.busy(w.index):
                return (1, -w.index)
            return (2 if not w.ready else 3, -w.index)

        for w in sorted(self.staying(), key=order)[:count]:
            w.leaving = True
            if not w.ready:
                d.workers.kill(w, "resized")  # still starting: it holds nothing to finish
                continue
            d.sched.stealing.give_back(w.index)
        d.workers.draining = True  # its pipe is closed once it holds nothing
        d.workers.finish_draining()

    def given_up(self, w: WorkerSlot, why: str) -> None:
        """Worker ``w``, forked to grow the pool, could not start (it is being killed): the
        pool stays one smaller."""
        d = self.d
        w.leaving = True  # not replaced
        old, self.target = self.target, max(1, len(self.staying()))
        self.grow_again_at = d.clock() + GROW_BACKOFF_SECONDS
        d.event(p.LOG_WARNING, "pool_not_grown", why, wanted=old, got=self.target)
        if self.target != old:
            self.changes += 1
            self.events.append((d.wall(), old, self.target, "start failed"))
            d.results.append(p.Resized(p.D_RESIZED, 0, self.target, ""))

    def worker_gone(self, w: WorkerSlot, now: float) -> None:
        self.gone_seconds += max(0.0, now - w.forked_at)

    def worker_seconds(self, now: float) -> float:
        """Seconds lived by every worker process so far (what an elastic pool saves)."""
        alive = sum(now - w.forked_at for w in self.d.workers.slots if w.pid)
        return self.gone_seconds + alive

    # --- autoscaling ---------------------------------------------------------------------------
    def demand(self, demand_id: int, seconds: float) -> None:
        """A map's input not yet sent (a map keeps only a small window in the queue)."""
        if seconds > 0:
            self.demands[demand_id] = seconds
        else:
            self.demands.pop(demand_id, None)

    def next_check_at(self) -> float | None:
        """When the loop must look again (None: no autoscaling to do)."""
        a, d = self.autoscaler, self.d
        if a is None or d.broken is not None or (d.closing and d.done()):
            return None
        if not a.active(self.target, d.sched.queue.live + len(self.demands)):
            return None
        return self.next_check

    def check(self, now: float) -> None:
        """Apply the autoscaler's rules, at most every ``CHECK_SECONDS``.

        What maps hold back (``demands``) counts towards growing only while every worker
        is busy: a map whose consumer is the bottleneck (its workers idle) needs none. It
        never holds back shrinking. After a failed grow, none is tried for a while.
        """
        a = self.autoscaler
        d = self.d
        if a is None or now < self.next_check or d.broken is not None:
            return
        if d.closing and d.done():
            return
        if not a.active(self.target, d.sched.queue.live + len(self.demands)):
            a.backlog_since = None
            a.idle_since.clear()
            return
        self.next_check = now + CHECK_SECONDS
        sched = d.sched
        idle = [w.index for w in self.staying() if sched.idle(w.index)]
        queued = sched.estimates.backlog(sched.queue, sched.rng)
        held = 0.0 if idle else sum(self.demands.values())
        decision = a.decide(now, self.target, queued, idle, self._load(), held)
        if decision is None:
            return
        if decision.target < self.target and d.closing:
            return  # a closing pool only grows
        if decision.target > self.target and now < self.grow_again_at:
            return  # a grow failed lately
        self.resize(decision.target, decision.reason, decision.retire)

    def _load(self) -> float | None:
        if not self.autoscaler or not self.autoscaler.k.max_load:
            return None
        try:
            return os.getloadavg()[0] / self._cores
        except OSError:
            return None

    def snapshot(self) -> dict[str, Any]:
        now = self.d.clock()
        return {
            "target_workers": self.target,
            "live_workers": sum(1 for w in self.d.workers.slots if w.pid),
            "worker_seconds": self.worker_seconds(now),
            "resizes": self.changes,
            "scaling_events": list(self.events),
        }
