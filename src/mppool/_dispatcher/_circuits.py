"""Circuit breakers applied to the scheduler's state (pure: time passed in).

Every task of a kind with a breaker passes :meth:`Circuits.gate` on its way into the heap
(from a submit, a delay or backoff ending, a rate-limit token, or being taken back from a
pipe). A closed circuit lets it through; a half-open one lets its first comer through as the
probe; otherwise the task fails with ``CIRCUIT_OPEN`` or, for a breaker with ``wait=True``,
is *held* (state ``HELD``), in priority order, holding no worker.

When a circuit opens, the kind's work that has not started is swept: what is queued, waits
for a token, or sits unclaimed in a worker's pipe fails (or is held); what is delayed or
backing off meets the gate when its wait ends. A timer wakes the kind when the probe may run:
for a waiting breaker, the most urgent held task goes into the heap as the probe. When the
probe succeeds, the circuit closes and every held task goes into the heap.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .._breaker import HALF_OPEN, OPEN, Circuit
from ._runqueue import Rank, rank
from ._tasks import HELD, LOCAL_STATES, QUEUED, RATE_LIMITED, SENT, Task

if TYPE_CHECKING:
    from ._scheduler import Scheduler


class Circuits:
    """The circuits of the kinds that have a breaker, and the tasks they hold.

    Args:
        sched: the scheduler.
        breakers: per kind, ``CircuitBreaker.knobs()``.
    """

    def __init__(self, sched: Scheduler, breakers: dict[str, tuple[int, float, float, bool]]):
        self.s = sched
        self.by_kind = {kind: Circuit(*knobs) for kind, knobs in breakers.items()}
        self._held: dict[str, list[tuple[Rank, int, Task]]] = {k: [] for k in self.by_kind}
        self._seq = itertools.count()
        self.held = 0  # tasks held, all kinds
        # Outcomes noted in the middle of handling a result or a death, applied once that
        # is done (opening a circuit sweeps tasks that may be mid-move then).
        self.pending: list[tuple[Task, bool, float]] = []
        self.probe_wanted: set[str] = set()  # kinds whose probe left unjudged (wait=True)

    def gate(self, task: Task, now: float) -> bool:
        """Whether ``task`` may go into the heap now. If not, it has been failed or held."""
        circuit = self.by_kind[task.opts.kind]
        if circuit.admits(task, now):
            return True
        circuit.rejected += 1
        if circuit.wait:
            self._hold(task)
        else:
            self.s.outcomes.refuse(task, p.CIRCUIT_OPEN, self._payload(task.opts.kind, now))
        return False

    def _payload(self, kind: str, now: float) -> bytes:
        circuit = self.by_kind[kind]
        retry_in = circuit.half_open_at - now if circuit.state == OPEN else 0.0
        return pickle.dumps((kind, max(0.0, retry_in)))

    def _hold(self, task: Task) -> None:
        task.state = HELD
        task.worker = -1
        task.batch = None
        heapq.heappush(self._held[task.opts.kind], (rank(task), next(self._seq), task))
        self.held += 1

    def leave(self, task: Task) -> None:
        """A held ``task`` leaves its wait (cancelled, expired); its entry is skipped later."""
        self.held -= 1
        self.ended(task)

    def ended(self, task: Task) -> None:
        """``task`` ended without an outcome that judges its kind (cancelled, expired): if it
        was the probe, the next task may probe instead (for a waiting breaker, the most
        urgent held one, at the loop's next round: see :meth:`apply`)."""
        circuit = self.by_kind.get(task.opts.kind)
        if circuit is not None and circuit.probe is task:
            circuit.probe_gone(task)
            if circuit.wait:
                self.probe_wanted.add(task.opts.kind)

    # --- outcomes ------------------------------------------------------------------------------
    def judge(self, task: Task, ok: bool, now: float) -> None:
        """Note an attempt's outcome, for :meth:`apply` (if its kind has a breaker)."""
        if task.opts.kind in self.by_kind:
            self.pending.append((task, ok, now))

    def apply(self, now: float) -> None:
        """Apply the outcomes noted since the last call, in order; then let a held task
        probe where the probe left without an outcome."""
        pending, self.pending = self.pending, []
        for task, ok, at in pending:
            if ok:
                self.succeeded(task, at)
            else:
                self.failed(task, at)
        wanted, self.probe_wanted = self.probe_wanted, set()
        for kind in wanted:
            circuit = self.by_kind[kind]
            held = self._held[kind]
            while held and circuit.state == HALF_OPEN and circuit.probe is None:
                self._release(heapq.heappop(held)[2], now)

    def failed(self, task: Task, now: float) -> None:
        """An attempt of ``task`` failed (an error, a crash, a timeout)."""
        kind = task.opts.kind
        circuit = self.by_kind.get(kind)
        if circuit is None or not circuit.failed(task, now):
            return
        self.s.waiting.arm_circuit(kind, circuit.half_open_at)
        self.s.note(
            p.LOG_WARNING,
            "circuit_opened",
            f"kind {kind!r}: circuit open for {circuit.reset_after:g} s after failures",
            kind=kind,
            reset_after=circuit.reset_after,
        )
        self._sweep(kind, now)

    def succeeded(self, task: Task, now: float) -> None:
        """An attempt of ``task`` succeeded: a probe's success closes its circuit."""
        kind = task.opts.kind
        circuit = self.by_kind.get(kind)
        if circuit is None or not circuit.succeeded(task):
            return
        self.s.note(p.LOG_INFO, "circuit_closed", f"kind {kind!r}: circuit closed", kind=kind)
        held = self._held[kind]
        while held:
            self._release(heapq.heappop(held)[2], now)

    def wake(self, kind: str, now: float) -> None:
        """An open circuit's wait is over: the most urgent held task may probe."""
        circuit = self.by_kind[kind]
        if circuit.state != OPEN or now < circuit.half_open_at:
            return  # closed meanwhile, or opened again later (a later timer comes)
        circuit.state = HALF_OPEN
        held = self._held[kind]
        while held and circuit.probe is None:
            self._release(heapq.heappop(held)[2], now)

    def _release(self, task: Task, now: float) -> None:
        if task.state != HELD:
            return  # it left meanwhile
        self.held -= 1
        self.s.release_held(task, now)

    def _sweep(self, kind: str, now: float) -> None:
        """The circuit just opened: the kind's unstarted work fails, or is held."""
        s = self.s
        circuit = self.by_kind[kind]
        payload = self._payload(kind, now)
        for task in list(s.tasks.values()):
            if task.opts.kind != kind or task.state not in LOCAL_STATES or task.state == HELD:
                continue
            if task.state not in (SENT, QUEUED, RATE_LIMITED):
                continue  # delayed or backing off: the gate decides when its wait ends
            circuit.rejected += 1
            if not circuit.wait:
                s.outcomes.refuse_unstarted(task, p.CIRCUIT_OPEN, payload, now)
            elif task.state != SENT:
                s.leave_queue(task)
                self._hold(task)
            else:
                moved = s.pipes.take_task(task) or []
                for other in moved:
                    if other is task or (task.job is not None and other.job is task.job):
                        self._hold(other)
                    else:
                        s.requeue(other, now)

    # --- introspection -------------------------------------------------------------------------
    def snapshot(self, now: float, wall: float) -> dict[str, dict[str, Any]]:
        """Per kind: state, failures in the window, times opened, tasks refused or held, and
        when a probe may run (wall clock; ``None`` unless open)."""
        out = {}
        for kind, c in self.by_kind.items():
            # An open circuit past its wait lets the next task through as its probe.
            state = HALF_OPEN if c.state == OPEN and now >= c.half_open_at else c.state
            retry_at = c.retry_at()
            out[kind] = {
                "state": state,
                "failures": c.failures_in_window(now),
                "opened": c.opened,
                "rejected": c.rejected,
                "held": sum(1 for _, _, t in self._held[kind] if t.state == HELD),
                "retry_at": None if retry_at is None else wall + (retry_at - now),
            }
        return out

    def clear(self) -> None:
        for held in self._held.values():
            held.clear()
        self.held = 0
