"""Data hashing benchmark: cold (uncached) throughput and a warm (cached) pass over a 1 GiB file set.

    python bench/hash_bench.py [--size-mib 1024] [--repeat 5] [--dir /tmp/mlops-hash-bench] [--json OUT]

The set is real random bytes (no sparse files): 15 files of 64 MiB and 1,024 files of 64 KiB, with
old mtimes (outside the hasher's racy window). Reported medians over ``--repeat`` runs:

* ``cold`` — a fresh state database (empty hash cache): every byte is read and hashed. Measured
  twice: with the files in the OS page cache, and after evicting them with
  ``posix_fadvise(DONTNEED)`` so they come from the disk.
* ``warm`` — the cache filled: open the state database and hash the set again (what a no-op plan
  does); no data is read.
* ``baseline`` — ``compiler.content_hash.hash_path`` alone (no cache), for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.content_hash import hash_path  # noqa: E402
from runtime.artifacts.hashing import CachedHasher  # noqa: E402
from runtime.state.store import StateStore  # noqa: E402

MIB = 1 << 20
OLD_MTIME = 1_600_000_000
TARGET_COLD_MBPS = 500.0


def generate(root: Path, size_mib: int) -> int:
    """Write the file set (reused when already there with the right sizes); returns its size in bytes."""
    small_count, small_size = 1024, 64 << 10
    big_size = 64 * MIB
    big_count = max(1, (size_mib * MIB - small_count * small_size) // big_size)
    wanted = {**{f"big/{i:02d}.bin": big_size for i in range(big_count)},
              **{f"small/{i // 128}/{i:04d}.bin": small_size for i in range(small_count)}}
    for relative, size in wanted.items():
        path = root / relative
        if not (path.is_file() and path.stat().st_size == size):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                for offset in range(0, size, 4 * MIB):
                    handle.write(os.urandom(min(4 * MIB, size - offset)))
        os.utime(path, (OLD_MTIME, OLD_MTIME))
    return sum(wanted.values())


def evict(root: Path) -> None:
    """Drop the set's pages from the OS page cache (no root needed)."""
    for path in root.rglob("*.bin"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(repeat: int, size_mib: int = 1024, directory: Path | None = None) -> dict[str, Any]:
    """Generate (or reuse) the file set and measure cold, warm and baseline hashing; medians."""
    data = (directory or Path(tempfile.gettempdir()) / "mlops-hash-bench") / "data"
    total = generate(data, size_mib)
    mb = total / 1e6
    cold_cached: list[float] = []
    cold_disk: list[float] = []
    warm: list[float] = []
    baseline: list[float] = []
    expected = hash_path(data)
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(repeat):
            for evicted, into in ((False, cold_cached), (True, cold_disk)):
                if evicted:
                    evict(data)
                else:
                    hash_path(data)  # make sure the pages are in memory
                with StateStore.open(Path(scratch) / f"cold-{attempt}-{evicted}.db") as store:
                    hasher = CachedHasher(store)
                    into.append(timed(lambda h=hasher: h(data)))  # type: ignore[misc]
                    assert hasher(data) == expected and hasher.bytes_hashed == total
        state = Path(scratch) / "warm.db"
        with StateStore.open(state) as store:
            CachedHasher(store)(data)

        def warm_pass() -> None:
            with StateStore.open(state) as store:
                hasher = CachedHasher(store)
                assert hasher(data) == expected and hasher.files_hashed == 0

        for _ in range(repeat):
            warm.append(timed(warm_pass))
        for _ in range(repeat):
            baseline.append(timed(lambda: hash_path(data)))
    return {
        "bytes": total,
        "files": sum(1 for _ in data.rglob("*.bin")),
        "cold_page_cache_s": statistics.median(cold_cached),
        "cold_page_cache_mb_per_s": mb / statistics.median(cold_cached),
        "cold_from_disk_s": statistics.median(cold_disk),
        "cold_from_disk_mb_per_s": mb / statistics.median(cold_disk),
        "warm_s": statistics.median(warm),
        "baseline_hash_path_mb_per_s": mb / statistics.median(baseline),
        "repeat": repeat,
    }


def markdown(results: dict[str, Any]) -> str:
    cold = results["cold_page_cache_mb_per_s"]
    return "\n".join([
        "| measurement | median | target | met |", "|---|---|---|---|",
        f"| cold hashing, {results['files']:,} files / {results['bytes'] / 2**30:.2f} GiB, pages cached | "
        f"{cold:,.0f} MB/s | ≥ {TARGET_COLD_MBPS:.0f} MB/s | {'yes' if cold >= TARGET_COLD_MBPS else 'NO'} |",
        f"| cold hashing, evicted from the page cache | {results['cold_from_disk_mb_per_s']:,.0f} MB/s | | |",
        f"| warm pass (open state, look up every file; no data read) | {results['warm_s'] * 1000:.1f} ms | | |",
        f"| plain `hash_path`, no cache (reference) | {results['baseline_hash_path_mb_per_s']:,.0f} MB/s | | |",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mlops-hash-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.repeat, args.size_mib, args.dir)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
