"""Per-tile statistics of a large image on an mppool pool (numpy).

A synthetic 8192x8192 single-channel image (256 MB of float32: smooth gradients, a few bright
blobs, sensor noise) is cut into 256x256 tiles. Each task computes one tile's statistics:
mean, standard deviation, 1st and 99th percentile, and the edge energy (mean gradient
magnitude), the kind of per-tile pass a microscopy or satellite pipeline runs before it
decides where to look closer.

The image is placed in shared memory once (``pool.share``): 1,024 tasks read it, none copies
it. Each worker limits BLAS/OpenMP threads to its share of the cores (the default), and numpy
is imported in the dispatcher before the workers are forked (``preload``).

Run from the repository root (``pip install -e '.[numeric]'``)::

    python examples/numeric.py                    # 8192x8192, 256-pixel tiles
    python examples/numeric.py --size 2048 --tile 128 --workers 2 --check

``--check`` recomputes a sample of tiles in this process and compares (exit 1 if any differ).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import mppool


def make_image(size: int, seed: int = 3) -> Any:
    """A reproducible synthetic image: gradients, a few Gaussian blobs, noise."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    x, y = axis[np.newaxis, :], axis[:, np.newaxis]
    image = rng.normal(0.0, 0.02, (size, size)).astype(np.float32)
    image += 0.3 * x + 0.2 * y
    for cy, cx, radius, height in rng.uniform(0, 1, (12, 4)).astype(np.float32):
        width = 0.002 + 0.01 * radius  # a round blob is the product of two 1-D Gaussians
        image += height * np.exp(-((y - cy) ** 2) / width) * np.exp(-((x - cx) ** 2) / width)
    return image


def tile_stats(image: Any, row: int, col: int, tile: int) -> tuple[int, int, list[float]]:
    """Statistics of the tile at (row, col): mean, std, p1, p99, edge energy."""
    block = image[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
    p1, p99 = np.percentile(block, [1, 99])
    gy, gx = np.gradient(block)
    edges = float(np.hypot(gx, gy).mean())
    return row, col, [float(block.mean()), float(block.std()), float(p1), float(p99), edges]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="image side, pixels")
    parser.add_argument("--tile", type=int, default=256, help="tile side, pixels")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--check", action="store_true", help="verify a sample of tiles here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.size % args.tile:
        parser.error("--size must be a multiple of --tile")
    n = args.size // args.tile
    t0 = time.perf_counter()
    image = make_image(args.size)
    print(
        f"image {args.size}x{args.size} ({image.nbytes / 2**20:.0f} MB) made in "
        f"{time.perf_counter() - t0:.2f} s; {n * n} tiles of {args.tile}x{args.tile}"
    )
    with mppool.Pool(args.workers, preload=["numpy"]) as pool:
        t0 = time.perf_counter()
        shared = pool.share(image)
        cells = [(r, c) for r in range(n) for c in range(n)]
        results = pool.map(
            tile_stats,
            [shared] * len(cells),
            [r for r, _ in cells],
            [c for _, c in cells],
            [args.tile] * len(cells),
            progress=not args.no_progress,
        )
        stats = {(r, c): values for r, c, values in results}
        elapsed = time.perf_counter() - t0
        print(f"{len(stats)} tiles in {elapsed:.2f} s on {pool.workers} workers")
        print(pool.stats())
    busiest = sorted(stats.items(), key=lambda kv: -kv[1][4])[:5]
    print("tiles with the most edges (row, col: mean, std, p1, p99, edge energy):")
    for (r, c), v in busiest:
        print(f"  {r:3}, {c:3}: " + ", ".join(f"{x:.4f}" for x in v))
    if args.check:
        rng = np.random.default_rng(0)
        sample = [cells[i] for i in rng.choice(len(cells), size=min(20, len(cells)), replace=False)]
        bad = [
            (r, c)
            for r, c in sample
            if not np.allclose(tile_stats(image, r, c, args.tile)[2], stats[(r, c)])
        ]
        print(f"checked {len(sample)} tiles here: {'ok' if not bad else f'MISMATCH {bad}'}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
