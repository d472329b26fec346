"""The user process's link to its dispatcher: the process, two pipes, two threads.

::

    submit()/map() ──▶ pending messages ──(sender thread, or inline)──▶ dispatcher pipe
    dispatcher pipe ──▶ reader thread ──▶ Core.deliver(messages)

A message goes out from the calling thread at once when nothing else is in flight (no
thread hand-off of latency); in a burst the sender thread collects the pending messages into
one write. The reader thread hands every frame of results to the core; when the pipe ends it
stops the sender, reaps the dispatcher and closes the pipes. The threads refer to the core,
never to the public ``Pool``, so a dropped pool can be garbage collected.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _protocol as p

SEND_BATCH = 512  # messages after which a submitting thread writes the batch itself
QUIET_SECONDS = 0.0002  # after this long without a write, a message is written at once
REAP_TIMEOUT = 10.0  # seconds to wait for the dispatcher to exit before killing it
# The folder that holds the mppool package (src/ in a checkout): the dispatcher imports this
# very copy of mppool, whatever its sys.path would find first.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOT = (
    "import sys; sys.path.insert(0, sys.argv[3]); "
    "from mppool._dispatcher._loop import main; main(int(sys.argv[1]), int(sys.argv[2]))"
)


class Connection:
    """The dispatcher process and the pipes and threads that talk to it.

    Args:
        lock: the core's lock; pending messages are queued under it, so that a check of the
            pool's state and the queueing of a task are one step.
        deliver: called on the reader thread with each list of messages received.
        ended: called on the reader thread when the pipe ends (after the last delivery).

    Raises:
        OSError: if the pipes or the process cannot be made (nothing is left open).
    """

    def __init__(
        self,
        lock: threading.Lock,
        deliver: Callable[[list[p.Message]], bool],
        ended: Callable[[], None],
    ) -> None:
        self.lock = lock
        self.deliver = deliver
        self.ended = ended
        self.write_lock = threading.Lock()
        self.pending: list[Any] = []
        self.wake = threading.Event()
        self.last_write = 0.0
        self.stop_sender = False
        self.in_flight = 0  # set by the core: tasks sent and not resolved (for the write rule)
        self.broken_reason: BaseException | None = None
        self.owner_pid = os.getpid()
        self.is_fork_copy = False
        self.proc, self.out_fd, self.in_fd = _start()
        self.reader = threading.Thread(target=self._read_loop, name="mppool-reader", daemon=True)
        self.sender = threading.Thread(target=self._send_loop, name="mppool-sender", daemon=True)

    def start_threads(self) -> None:
        self.reader.start()
        self.sender.start()
        self.wake.set()

    # --- sending -------------------------------------------------------------------------------
    def send(self, msg: Any) -> None:
        with self.lock:
            self.pending.append(msg)
            count = len(self.pending)
        self.after_queueing(count)

    def after_queueing(self, count: int) -> None:
        """Decide who writes, now that ``count`` messages are pending."""
        if count >= SEND_BATCH:
            self.flush()
        elif count == 1:
            if self.in_flight <= 1 or time.perf_counter() - self.last_write > QUIET_SECONDS:
                # An isolated message (nothing else in flight, or nothing written lately)
                # goes out from this thread now, saving a thread hand-off of latency. In a
                # burst the sender thread collects the messages into one batch.
                self.flush()
            else:
                self.wake.set()

    def flush(self) -> None:
        with self.write_lock:
            with self.lock:
                msgs = self.pending
                self.pending = []
            if msgs and self.out_fd >= 0:
                self.last_write = time.perf_counter()
                try:
                    p.write_all(self.out_fd, p.encode(msgs))
                except OSError as exc:  # the dispatcher is gone; the reader reports it
                    if self.broken_reason is None:
                        self.broken_reason = exc

    def _send_loop(self) -> None:
        wake = self.wake
        while True:
            wake.wait()
            wake.clear()
            if self.out_fd < 0:
                return
            self.flush()
            if self.stop_sender:
                return

    # --- receiving -----------------------------------------------------------------------------
    def _read_loop(self) -> None:
        reader = p.BlockingReader(self.in_fd)
        try:
            while True:
                try:
                    msgs = reader.read()
                except OSError:
                    msgs = None
                if msgs is None or not self.deliver(msgs):
                    return
                msgs = None  # an idle reader must not keep the last batch (and its entries)
        finally:
            self._close()

    def _close(self) -> None:
        """On the reader thread as it ends: stop the sender, reap the dispatcher."""
        self.stop_sender = True
        self.wake.set()
        if threading.current_thread() is not self.sender and self.sender.ident is not None:
            self.sender.join()
        self.ended()
        self._reap()
        with self.write_lock:  # no flush may write to a closed (or reused) descriptor
            for attr in ("out_fd", "in_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    setattr(self, attr, -1)
                    os.close(fd)

    # --- ending --------------------------------------------------------------------------------
    def on_reader_thread(self) -> bool:
        return threading.current_thread() is self.reader

    def join(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self.reader:
            return False
        if self.reader.ident is None or self.is_fork_copy:  # never started, or not ours
            return True
        self.reader.join(timeout)
        return not self.reader.is_alive()

    def forked(self, lock: threading.Lock) -> None:
        """In a forked child: close this copy's pipe ends; never write, wait or kill."""
        self.is_fork_copy = True
        self.lock = lock
        self.write_lock = threading.Lock()
        self.pending = []
        for fd in (self.out_fd, self.in_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.out_fd = self.in_fd = -1

    def _reap(self) -> None:
        """Wait for the dispatcher to exit (it ends its workers first); kill it if it hangs."""
        try:
            self.proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """End the dispatcher (and so its workers) now."""
        if self.is_fork_copy:
            return  # the parent's dispatcher
        try:
            self.proc.kill()
        except OSError:
            pass
        self.join(REAP_TIMEOUT)

    def abort(self) -> None:
        """Undo a start that did not complete (an error or Ctrl-C in ``Pool()``)."""
        self.kill()
        self._reap()
        if self.reader.ident is None:  # the reader never ran: close its pipes here
            for fd in (self.out_fd, self.in_fd):
                if fd >= 0:
                    os.close(fd)
            self.out_fd = self.in_fd = -1


def _start() -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the dispatcher; return it and the write and read ends of its pipes."""
    fds: list[int] = []
    try:
        c2d_r, c2d_w = os.pipe()
        fds += (c2d_r, c2d_w)
        d2c_r, d2c_w = os.pipe()
        fds += (d2c_r, d2c_w)
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(c2d_r), str(d2c_w), PACKAGE_PARENT],
            pass_fds=(c2d_r, d2c_w),
            stdin=subprocess.DEVNULL,
            # Its own process group: a terminal's Ctrl-C (SIGINT to the foreground group)
            # reaches the user process only, even while the dispatcher is still starting.
            # It still ends with the user process: it sees end-of-file on its pipe.
            process_group=0,
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(c2d_r)
    os.close(d2c_w)
    return proc, c2d_w, d2c_r
