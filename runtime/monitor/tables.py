"""Tables a monitor reads: rows of CSV, JSONL, Parquet and NumPy files, and the columns its checks compare."""

from __future__ import annotations

import csv
import json
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DATA_SUFFIXES = (".csv", ".jsonl", ".parquet", ".npz", ".npy")

Columns = dict[str, npt.NDArray[Any]]
Row = dict[str, Any]


def read_rows(path: Path, suffix: str = "") -> list[Row]:
    """Rows of a CSV, JSONL, Parquet, ``.npz`` or ``.npy`` file, or of every such file under a directory
    (one format).

    A file's format is its suffix, else ``suffix`` (a content-addressed snapshot has none), else CSV.
    CSV cells are typed per column: a column whose non-empty cells are all numbers becomes floats
    (empty cells NaN), any other stays strings (empty cells ``None``). NumPy files are read without
    pickles: an ``.npz`` gives one column per 1-D array (named by its key) and ``KEY_0``, ``KEY_1``, ...
    per column of a 2-D array; an ``.npy`` holds one array: a structured one gives a column per field,
    a 1-D one the column ``value`` and a 2-D one ``column_0``, ``column_1``, ...
    """
    if path.is_file():
        files = [(path, path.suffix if path.suffix in DATA_SUFFIXES else suffix)]
    else:
        files = [(p, p.suffix) for p in sorted(path.rglob("*")) if p.suffix in DATA_SUFFIXES]
    if not files:
        raise ValueError(f"no CSV, JSONL, Parquet, .npz or .npy file in {path}")
    kinds = {kind for _, kind in files}
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes data formats ({', '.join(sorted(kinds))}); cannot read it as one table")
    rows: list[Row] = []
    for file, kind in files:
        rows.extend(_read_file(file, kind))
    return rows


def _read_file(file: Path, kind: str) -> list[Row]:
    if kind not in ("", *DATA_SUFFIXES):
        raise ValueError(f"cannot read {kind.lstrip('.')} data as a table "
                         "(monitors read csv, jsonl, parquet, npz and npy)")
    if kind in (".npz", ".npy"):
        return _read_numpy(file, kind)
    if kind == ".jsonl":
        with file.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if kind == ".parquet":
        import pyarrow.parquet as pq

        rows: list[Row] = pq.read_table(file).to_pylist()
        return rows
    with file.open(newline="", encoding="utf-8") as handle:
        raw = list(csv.DictReader(handle))
    names = list(raw[0]) if raw else []
    numeric = {name for name in names if all(_is_number(r[name]) for r in raw if r[name] not in ("", None))}
    return [{name: (float(r[name]) if r[name] not in ("", None) else math.nan) if name in numeric
             else (r[name] if r[name] != "" else None) for name in names} for r in raw]


def _read_numpy(file: Path, kind: str) -> list[Row]:
    """Rows of an ``.npz`` or ``.npy`` file (see :func:`read_rows` for the column names)."""
    columns: dict[str, npt.NDArray[Any]] = {}
    if kind == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            arrays = [(key, archive[key]) for key in archive.files]
    else:
        array = np.load(file, allow_pickle=False)
        if array.dtype.names:
            arrays = [(name, array[name]) for name in array.dtype.names]
        else:
            arrays = [("value" if array.ndim == 1 else "column", array)]
    for key, array in arrays:
        if array.ndim == 1:
            columns[key] = array
        elif array.ndim == 2:
            columns.update((f"{key}_{i}", array[:, i]) for i in range(array.shape[1]))
        else:
            raise ValueError(f"{file.name}: array {key!r} has shape {array.shape}; a table needs 1-d or 2-d arrays")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{file.name}: arrays of different lengths cannot be one table "
                         f"({', '.join(f'{n}: {k}' for n, k in lengths.items())})")
    names = list(columns)
    values = [columns[name].tolist() for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def columns_of(rows: list[Row]) -> Columns:
    """Rows (dicts) -> column -> values, every key of any row; missing values ``None``/NaN."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {name: values_array([row.get(name) for row in rows]) for name in names}


def values_array(values: list[Any]) -> npt.NDArray[Any]:
    """Floats when every present value is a real number (``None`` -> NaN), else strings (``None`` kept)."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in present):  # numpy's too
        return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    out = np.empty(len(values), dtype=object)
    out[:] = [None if v is None else str(v) for v in values]
    return out


def like_reference(current: npt.NDArray[Any], reference: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """Numbers sent as strings become floats when the reference column is numeric (JSON clients vary)."""
    if reference is None or reference.dtype == object or current.dtype != object:
        return current
    present = [v for v in current if v is not None]
    if not all(_is_number(v) for v in present):
        return current
    return np.asarray([math.nan if v is None else float(v) for v in current], dtype=float)
