"""SHA-256 hash chains on an mppool pool, with a few urgent tasks that overtake the bulk.

For each seed, the seed's decimal text is hashed with SHA-256, then the digest is hashed
again, ``--rounds`` times in all; the task returns the final digest in hex. Every seed is one
``pool.submit`` call, and the whole bulk is submitted up front so the pool holds a deep queue.

Then a handful of "urgent" seeds are submitted through ``pool.options(priority=10)``. Higher
priority runs first, so although they were submitted last they should finish among the first
completions, behind only the tasks that had already started or been handed to a worker. The
script records the order in which every task completed and reports where the urgent ones
landed.

Run from the repository root::

    python examples/hashes.py                      # the default job, a few seconds on 2 cores
    python examples/hashes.py --seeds 500 --rounds 500 --workers 2

Progress is drawn on standard error; the summary goes to standard output. The exit code is 1
if a digest recomputed locally disagrees with the pool's, and 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import random
import sys
import threading
import time
from collections.abc import Sequence

import tqdm

import mppool

DEFAULT_SEEDS = 5_000
DEFAULT_ROUNDS = 2_000  # about 5 s for the default seeds with 2 workers on a 2-core machine
DEFAULT_URGENT = 5
URGENT_PRIORITY = 10
VERIFY_SAMPLE = 5  # bulk digests recomputed locally, besides every urgent one


def hash_chain(seed: int, rounds: int) -> str:
    """Hash ``seed`` with SHA-256 ``rounds`` times, each round hashing the previous digest.

    This runs in a worker process. It is defined in the script's ``__main__``, which the
    workers never import; the pool ships it to them by value.

    Args:
        seed: the starting value; its decimal text is hashed first.
        rounds: how many times to hash (at least 1).

    Returns:
        The final digest as 64 hex characters.
    """
    digest = str(seed).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class CompletionLog:
    """Records the order in which futures complete.

    Done callbacks run on the pool's result thread as each result arrives, so the order they
    see is the order the results came back, not the order the main thread gets round to
    looking at them.

    Args:
        expected: how many futures will be watched; ``all_done`` is set when that many
            have completed.
    """

    def __init__(self, expected: int) -> None:
        self._lock = threading.Lock()
        self.expected = expected
        self.order: list[int] = []  # seeds, in completion order
        self.position: dict[int, int] = {}  # seed -> 1-based completion position
        self.all_done = threading.Event()
        if expected == 0:
            self.all_done.set()

    def watch(self, future: concurrent.futures.Future[str], seed: int) -> None:
        """Log ``seed`` when ``future`` completes."""
        future.add_done_callback(lambda _f: self._record(seed))

    def _record(self, seed: int) -> None:
        with self._lock:
            self.order.append(seed)
            self.position[seed] = len(self.order)
            if len(self.order) >= self.expected:
                self.all_done.set()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Compute SHA-256 hash chains on an mppool pool; urgent seeds jump the queue."
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help=f"number of bulk seeds, one task each (default {DEFAULT_SEEDS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"SHA-256 rounds per seed (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--urgent",
        type=int,
        default=DEFAULT_URGENT,
        help=f"urgent seeds submitted after the bulk at priority {URGENT_PRIORITY} "
        f"(default {DEFAULT_URGENT}; 0 to skip)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of CPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    args = parser.parse_args(argv)
    for name in ("seeds", "rounds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.urgent < 0:
        parser.error("--urgent must be >= 0")
    return args


def report_urgent(log: CompletionLog, urgent: list[int], bulk: int) -> None:
    """Print where each urgent seed landed among all completions."""
    total = len(log.order)
    print(f"urgent seeds (priority {URGENT_PRIORITY}, submitted after all {bulk} bulk seeds):")
    overtaken: list[int] = []
    for seed in urgent:
        position = log.position[seed]
        # Bulk tasks that completed after this urgent one: the ones it overtook.
        bulk_before = sum(1 for s in log.order[: position - 1] if s < bulk)
        after = bulk - bulk_before
        overtaken.append(after)
        print(
            f"  seed {seed}: completion #{position} of {total}, "
            f"ahead of {after} bulk seeds ({100.0 * after / bulk:.1f}% of the bulk)"
        )
    if overtaken:
        worst = min(overtaken)
        verdict = "overtook most of the bulk" if worst > bulk / 2 else "did NOT overtake the bulk"
        print(f"  -> every urgent seed {verdict} (worst: ahead of {100.0 * worst / bulk:.1f}%)")


def verify(results: dict[int, str], seeds: list[int], rounds: int) -> list[int]:
    """Recompute ``seeds`` in this process and return those whose digest differs."""
    return [seed for seed in seeds if hash_chain(seed, rounds) != results[seed]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; return the process exit code."""
    args = parse_args(argv)
    bulk_seeds = list(range(args.seeds))
    # Urgent seeds follow the bulk numerically, so a seed's number tells which group it is in.
    urgent_seeds = list(range(args.seeds, args.seeds + args.urgent))
    total = len(bulk_seeds) + len(urgent_seeds)
    log = CompletionLog(total)
    pool_started = time.monotonic()
    try:
        # The context manager guarantees cleanup: on a normal exit it waits for the pool to
        # wind down; on Ctrl-C it cancels queued work and kills running tasks before the
        # KeyboardInterrupt reaches the handler below.
        with mppool.Pool(workers=args.workers) as pool:
            startup = time.monotonic() - pool_started
            started = time.monotonic()
            seed_of: dict[concurrent.futures.Future[str], int] = {}
            for seed in bulk_seeds:
                future = pool.submit(hash_chain, seed, args.rounds)
                log.watch(future, seed)
                seed_of[future] = seed
            # A view of the same pool whose tasks carry a higher priority; the bulk is already
            # queued at the default priority 0, so these should be run next.
            urgent_pool = pool.options(priority=URGENT_PRIORITY)
            for seed in urgent_seeds:
                future = urgent_pool.submit(hash_chain, seed, args.rounds)
                log.watch(future, seed)
                seed_of[future] = seed
            submitted = time.monotonic() - started

            bar = tqdm.tqdm(total=total, unit="seed", desc="hashes", disable=args.no_progress)
            with bar:
                # Poll the completion count ten times a second instead of waking up for every
                # result: on a machine with as many cores as workers, each wake-up of this
                # process takes CPU time away from the workers.
                while not log.all_done.wait(0.1):
                    bar.update(len(log.order) - bar.n)
                bar.update(len(log.order) - bar.n)
            wall = time.monotonic() - started
            # Every future is done; result() re-raises a task's exception, if any.
            results = {seed: future.result() for future, seed in seed_of.items()}
            # Take the snapshot while the pool is still open; after shutdown there is none.
            stats = pool.stats()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    # Check the pool's answers against this process: every urgent seed and a random sample.
    sample = random.sample(bulk_seeds, min(VERIFY_SAMPLE, len(bulk_seeds))) + urgent_seeds
    wrong = verify(results, sample, args.rounds)
    # One digest over all results in seed order: it depends only on --seeds, --rounds and
    # --urgent, so runs with other worker counts can be compared at a glance.
    fingerprint = hashlib.sha256("".join(results[s] for s in sorted(results)).encode())

    print(f"hash chains: {total} seeds x {args.rounds} rounds of SHA-256")
    print(f"workers: {args.workers}, pool start: {startup:.2f}s, submit: {submitted:.2f}s")
    print(
        f"wall time: {wall:.2f}s, {total / wall:.1f} seeds/s, "
        f"{total * args.rounds / wall / 1e6:.2f} M hashes/s"
    )
    print(f"seed 0 -> {results[0][:16]}..., all results -> {fingerprint.hexdigest()[:16]}...")
    print(f"verified {len(sample)} digests locally: {'ok' if not wrong else f'WRONG {wrong}'}")
    print()
    if urgent_seeds:
        report_urgent(log, urgent_seeds, len(bulk_seeds))
        print()
    print(stats)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
