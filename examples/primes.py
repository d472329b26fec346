"""Count the primes below a limit on an mppool pool.

The interval [2, limit) is cut into many equal-width ranges and each range is counted by
trial division in plain Python: pure CPU work with no shared state, the kind of batch job a
process pool is for. Ranges further up cost more (the numbers are larger and need more trial
divisors), so the work is skewed towards the end of the input, which is where a pool's
chunking and work stealing matter.

Run from the repository root::

    python examples/primes.py                      # the default job, a few seconds on 2 cores
    python examples/primes.py --limit 200000 --ranges 100 --workers 2
    python examples/primes.py --check              # verify pi(x) for known x; exit 1 if wrong

The pool draws the progress bar (``progress=True``: tqdm on standard error) and
``print(pool.stats())`` the summary. Ctrl-C stops the job: queued ranges are dropped, running
ones are killed, and the script exits with code 130.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from collections.abc import Sequence

import mppool

DEFAULT_LIMIT = 5_000_000  # about 5-10 s with 2 workers on a 2-core machine
DEFAULT_RANGES = 2_000

# pi(x), the number of primes below x, for the --check run.
KNOWN_COUNTS: dict[int, int] = {
    10: 4,
    100: 25,
    1_000: 168,
    10_000: 1_229,
    100_000: 9_592,
    1_000_000: 78_498,
}


def small_primes(n: int) -> list[int]:
    """Return the primes up to and including ``n`` (a simple sieve of Eratosthenes).

    Args:
        n: the upper bound, inclusive.

    Returns:
        The primes ``<= n`` in increasing order.
    """
    if n < 2:
        return []
    is_prime = bytearray([1]) * (n + 1)
    is_prime[0] = is_prime[1] = 0
    for i in range(2, math.isqrt(n) + 1):
        if is_prime[i]:
            is_prime[i * i :: i] = bytes(len(range(i * i, n + 1, i)))
    return [i for i, flag in enumerate(is_prime) if flag]


def count_primes(lo: int, hi: int) -> int:
    """Count the primes in ``[lo, hi)`` by trial division.

    This runs in a worker process. It is defined in the script's ``__main__``, which the
    workers never import; the pool ships it to them by value.

    Args:
        lo: the first number of the range.
        hi: the end of the range, exclusive.

    Returns:
        How many primes ``p`` satisfy ``lo <= p < hi``.
    """
    # Every composite n < hi has a prime factor <= isqrt(hi), so these divisors suffice for the
    # whole range. Building them per task costs O(sqrt(hi)), negligible next to the range.
    divisors = small_primes(math.isqrt(max(hi - 1, 0)))
    count = 1 if lo <= 2 < hi else 0
    for n in range(max(lo, 3) | 1, hi, 2):  # even numbers above 2 are never prime
        for p in divisors:
            if p * p > n:
                count += 1
                break
            if n % p == 0:
                break
        else:
            count += 1  # no divisor up to isqrt(hi) divides n, so n is prime
    return count


def split_range(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``[lo, hi)`` into at most ``parts`` contiguous, non-empty ranges of near-equal width.

    Args:
        lo: the start, inclusive.
        hi: the end, exclusive.
        parts: the number of ranges wanted; fewer are returned if the interval is too short.

    Returns:
        The ranges as ``(start, end)`` pairs, in increasing order, covering ``[lo, hi)``.
    """
    span = hi - lo
    if span <= 0:
        return []
    parts = max(1, min(parts, span))
    bounds = [lo + span * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def count_below(
    pool: mppool.Pool, limit: int, ranges: int, *, show_progress: bool = True
) -> tuple[int, int, float]:
    """Count the primes below ``limit`` on ``pool``.

    Args:
        pool: the pool to run on.
        limit: count primes ``< limit``.
        ranges: how many ranges to cut ``[2, limit)`` into.
        show_progress: whether to draw a progress bar.

    Returns:
        ``(primes, ranges actually used, wall seconds)``.
    """
    parts = split_range(2, limit, ranges)
    starts = [lo for lo, _ in parts]
    ends = [hi for _, hi in parts]
    started = time.monotonic()
    # Completion order is fine for a sum, and it lets the progress bar move as soon as any
    # range finishes instead of waiting for the slowest one ahead of it.
    found = pool.imap_unordered(count_primes, starts, ends, progress=show_progress)
    total = sum(found)
    return total, len(parts), time.monotonic() - started


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (underscores allowed, as in 5_000_000)."""
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Count the primes below a limit by trial division on an mppool pool."
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"count primes below this number (default {DEFAULT_LIMIT:_})",
    )
    parser.add_argument(
        "--ranges",
        type=positive_int,
        default=DEFAULT_RANGES,
        help=f"how many ranges to split the work into (default {DEFAULT_RANGES})",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of CPUs)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="instead of --limit, verify pi(x) for known x up to 10^6; exit 1 on a mismatch",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    return parser.parse_args(argv)


def run_check(pool: mppool.Pool, ranges: int, show_progress: bool) -> bool:
    """Count primes below each known limit and compare; print one line per limit.

    Returns:
        True if every count matched.
    """
    ok = True
    for limit, expected in KNOWN_COUNTS.items():
        got, _, wall = count_below(pool, limit, ranges, show_progress=show_progress)
        verdict = "ok" if got == expected else "WRONG"
        ok = ok and got == expected
        print(f"pi({limit:_}) = {got:_} (expected {expected:_}) {verdict}  [{wall:.2f}s]")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; return the process exit code."""
    args = parse_args(argv)
    if args.limit < 2 and not args.check:
        print("--limit must be at least 2", file=sys.stderr)
        return 2
    show_progress = not args.no_progress
    pool_started = time.monotonic()
    try:
        # The context manager guarantees cleanup: on a normal exit it waits for the pool to
        # wind down; on Ctrl-C it cancels queued work and kills running tasks before the
        # KeyboardInterrupt reaches the handler below.
        with mppool.Pool(workers=args.workers) as pool:
            startup = time.monotonic() - pool_started
            if args.check:
                ok = run_check(pool, args.ranges, show_progress)
                print("check passed" if ok else "check FAILED")
                return 0 if ok else 1
            primes, used, wall = count_below(
                pool, args.limit, args.ranges, show_progress=show_progress
            )
            # Take the snapshot while the pool is still open; after shutdown there is none.
            stats = pool.stats()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    print(f"primes below {args.limit:_}: {primes:_}")
    print(f"workers: {args.workers}, ranges: {used}, pool start: {startup:.2f}s")
    print(f"wall time: {wall:.2f}s, {used / wall:.1f} ranges/s" if wall > 0 else "wall time: 0s")
    print()
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
