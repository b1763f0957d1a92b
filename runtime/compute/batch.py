"""Batch deployments: score an input dataset with a model version into a predictions artifact.

Runs inside a Ray task. The input is a CSV file or a directory holding one; the output is the input's
rows with a ``prediction`` column, stored content-addressed (so each version's predictions are kept).
"""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.compute.scoring import ScoringSpec, load_predictor

CHUNK_ROWS = 4096


@dataclass(frozen=True, kw_only=True)
class BatchSpec(ScoringSpec):
    """A version to score with and the dataset artifact to score."""

    input_uri: str


def _csv_of(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(p for p in path.rglob("*.csv") if p.is_file())
    if len(found) != 1:
        raise ValueError(f"expected one CSV file in the input, found {len(found)}")
    return found[0]


def _typed(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def score(spec: BatchSpec) -> dict[str, Any]:
    """Score every input row; returns ``{"predictions": uri, "rows": n}``."""
    from runtime.artifacts.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root)
    with tempfile.TemporaryDirectory(prefix="mlops-batch-") as scratch:
        predictor = load_predictor(spec, Path(scratch))
        local_input = store.verified_path(spec.input_uri)
        if local_input is None:
            local_input = Path(scratch) / "input"
            if spec.input_uri.startswith("dir:"):
                store.materialize_dir(spec.input_uri, local_input)
            else:
                store.get_file(spec.input_uri, local_input)
        out = io.StringIO()
        rows_scored = 0
        with _csv_of(Path(local_input)).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            writer = csv.DictWriter(out, fieldnames=[*(reader.fieldnames or []), "prediction"])
            writer.writeheader()
            chunk: list[dict[str, str]] = []
            for row in reader:
                chunk.append(row)
                if len(chunk) >= CHUNK_ROWS:
                    rows_scored += _write(writer, chunk, predictor)
                    chunk = []
            if chunk:
                rows_scored += _write(writer, chunk, predictor)
        return {"predictions": store.put_bytes(out.getvalue().encode()), "rows": rows_scored}


def _write(writer: csv.DictWriter, chunk: list[dict[str, str]], predictor: Any) -> int:
    predictions = predictor([{k: _typed(v) for k, v in row.items()} for row in chunk])
    for row, prediction in zip(chunk, predictions, strict=True):
        writer.writerow({**row, "prediction": prediction})
    return len(chunk)
