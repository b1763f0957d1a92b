"""How long one group-commit sync waits when another process writes heavily on the same filesystem.

    python bench/sync_contention.py [--mb 1500] [--samples 20]

A 100-byte file is written and made durable, ``--samples`` times, once on a quiet disk and once
while another process writes ``--mb`` MiB: by ``syncfs`` of the filesystem (what the executor does
once per round, :mod:`runtime.artifacts.durability`) and by an fsync of the file and its directory. Prints
the median and the worst wait of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.artifacts import durability  # noqa: E402
from runtime.artifacts.backends import fsync_path  # noqa: E402


def _write(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(b"x" * 100)
    return path


def _waits(sync: Callable[[str], None], directory: str, samples: int, tag: str) -> list[float]:
    waits = []
    for index in range(samples):
        path = _write(directory, f"{tag}-{index}")
        start = time.perf_counter()
        sync(path)
        waits.append((time.perf_counter() - start) * 1000)
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as directory:
        def by_syncfs(path: str) -> None:
            durability.flush_all(directory)

        def by_fsync(path: str) -> None:
            fsync_path(path)
            fsync_path(directory)

        methods: dict[str, Callable[[str], None]] = {"syncfs": by_syncfs, "fsync": by_fsync}
        for load in ("quiet", "writer"):
            writer = None
            if load == "writer":
                code = (f"import os\nwith open({os.path.join(directory, 'big')!r}, 'wb') as f:\n"
                        f"    for _ in range({args.mb}): f.write(os.urandom(1 << 20))\n")
                writer = subprocess.Popen([sys.executable, "-c", code])
                time.sleep(1.0)
            for name, sync in methods.items():
                waits = _waits(sync, directory, args.samples, f"{load}-{name}")
                print(f"{load:6} {name:6} median {statistics.median(waits):7.2f} ms  worst {max(waits):7.2f} ms")
            if writer is not None:
                writer.kill()
                writer.wait()


if __name__ == "__main__":
    main()
