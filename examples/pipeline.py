"""A task graph in one batch: each shard's primes are counted, then summarised by a task that
takes that count as its argument, and a report waits for every summary.

    python examples/pipeline.py                      # 40 shards below 2,000,000
    python examples/pipeline.py --shards 8 --limit 200000 --check

Futures passed as arguments are dependencies: the dispatcher holds a task until its inputs are
done, holding no worker, and hands their results over worker to worker. The batch groups the
whole graph: its line in the stats shows how many tasks ended and how; leaving the ``with``
block waits for them all. The report has a deadline: if the pool is still busy with older
work when it comes, the report fails with ``DeadlineExceededError`` instead of running late.
"""

from __future__ import annotations

import argparse
import sys

import mppool


def count_primes(start: int, stop: int) -> int:
    """How many primes lie in ``[start, stop)`` (trial division: CPU-bound on purpose)."""
    found = 0
    for n in range(max(2, start), stop):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
    return found


def summarise(shard: int, count: int) -> tuple[int, int]:
    """A shard's line of the report (here: its index and count)."""
    return shard, count


def report(*summaries: tuple[int, int]) -> int:
    """The total, from every shard's summary (they arrive in submission order)."""
    assert [shard for shard, _ in summaries] == list(range(len(summaries)))
    return sum(count for _, count in summaries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the report")
    parser.add_argument("--check", action="store_true", help="recount here and compare")
    args = parser.parse_args(argv)
    step = -(-args.limit // args.shards)
    with mppool.Pool(args.workers) as pool, pool.batch("primes") as batch:
        summaries = []
        for shard in range(args.shards):
            start, stop = shard * step, min(args.limit, (shard + 1) * step)
            counted = batch.submit(count_primes, start, stop)
            summaries.append(batch.submit(summarise, shard, counted))  # waits for `counted`
        total = pool.options(deadline=args.deadline).batch("primes").submit(report, *summaries)
        print(f"primes below {args.limit:_}: {total.result():_}")
        batch.wait()
        stats = pool.stats()
        print(stats)
    if args.check:
        expected = count_primes(0, args.limit)
        ok = expected == total.result()
        print(f"checked here: {expected:_}: {'ok' if ok else 'MISMATCH'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
