"""A model version's input signature: the columns a request's rows must have, and their types.

Recorded with each version when it is trained, from the first of:

1. what the trainer declares: ``TrainResult(signature=[...columns...])`` (types from the training data) or
   ``TrainResult(signature={"column": "float", ...})``;
2. the training dataset's declared ``schema`` in the spec;
3. the training data itself: the header of its CSV file (a file, or a folder holding one), each column
   typed from a sample of its values (``bool``, ``float`` for any numbers, integers too, else ``string``).

A deployment's ``columns`` in the spec win over the recorded signature. Types are the spec's column types;
in a JSON request ``int`` is an integral number, ``float`` any number, ``bool`` ``true``/``false``,
``string``/``category``/``datetime`` a string.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPES = ("int", "float", "string", "bool", "category", "datetime")
SAMPLE_ROWS = 1000
"""Rows of a training CSV read to type its columns."""


@dataclass(frozen=True)
class Signature:
    """Column -> type, and where it came from (``spec``, ``trainer``, ``dataset schema``, ``training data``)."""

    columns: dict[str, str]
    source: str

    def as_record(self) -> dict[str, Any]:
        """``{"columns": [[name, type], ...], "source": ...}``: a list, so the columns keep their order."""
        return {"columns": [[name, kind] for name, kind in self.columns.items()], "source": self.source}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Signature | None:
        columns = record.get("columns") if record else None
        if not isinstance(columns, list) or not all(isinstance(c, list) and len(c) == 2 for c in columns):
            return None
        return cls({str(name): str(kind) for name, kind in columns}, str(record.get("source", "")) if record else "")


def csv_file(path: Path) -> Path | None:
    """The CSV file of a dataset artifact: the file itself, or the one CSV file of a folder."""
    if path.is_file():
        return path if path.suffix.lower() in (".csv", ".tsv", ".txt") or path.suffix == "" else None
    found = sorted(path.glob("*.csv")) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def infer_from_csv(path: Path) -> dict[str, str] | None:
    """Column -> type of a CSV file (header, then a sample of rows); ``None`` when there is no readable header."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or len(set(header)) != len(header):
                return None
            samples: list[list[str]] = [[] for _ in header]
            for number, row in enumerate(reader):
                if number >= SAMPLE_ROWS:
                    break
                for index, value in enumerate(row[:len(header)]):
                    if value != "":
                        samples[index].append(value)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return {name: _type_of(values) for name, values in zip(header, samples, strict=True)}


def _type_of(values: list[str]) -> str:
    if values and all(v.lower() in ("true", "false") for v in values):
        return "bool"
    if values and all(_parses(float, v) and math.isfinite(float(v)) for v in values):
        return "float"
    return "string"


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def of_training(declared: Any, train_input: Path | None, dataset_schema: Mapping[str, str] | None
                ) -> Signature | None:
    """The signature of a version trained on ``train_input`` (see the module's docstring for the order).

    ``declared`` is what the trainer returned as ``TrainResult.signature`` (``None``, a list of column names
    or a mapping name -> type). Raises ``ValueError`` for a declaration that names an unknown type.
    """
    data_types: dict[str, str] | None = dict(dataset_schema) if dataset_schema else None
    source_of_types = "dataset schema"
    if data_types is None and train_input is not None:
        found = csv_file(train_input)
        data_types = infer_from_csv(found) if found is not None else None
        source_of_types = "training data"
    if declared is not None:
        if isinstance(declared, Mapping):
            columns = {str(name): str(kind) for name, kind in declared.items()}
        elif isinstance(declared, list | tuple) and all(isinstance(c, str) for c in declared):
            columns = {name: (data_types or {}).get(name, "float") for name in declared}
        else:
            raise ValueError("TrainResult.signature must be a list of column names or a mapping column -> type, "
                             f"got {type(declared).__name__}")
        unknown = sorted({kind for kind in columns.values() if kind not in TYPES})
        if unknown:
            raise ValueError(f"TrainResult.signature: unknown column type {unknown[0]!r} (one of {', '.join(TYPES)})")
        return Signature(columns, "trainer")
    if data_types:
        return Signature(data_types, source_of_types)
    return None


def value_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` (parsed JSON) is not of column type ``kind``; ``None`` when it is."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                           and value.is_integer())
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    return None if ok else f"expected {json_type(kind)}, got {json_type_of(value)}"


def row_problems(index: int, row: Any, columns: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each way row ``index`` does not match ``columns``: ``{"instance", "column", "problem"}``."""
    if not isinstance(row, dict):
        return [{"instance": index, "column": None, "problem": f"expected an object, got {json_type_of(row)}"}]
    problems = [{"instance": index, "column": name, "problem": "missing"} for name in columns if name not in row]
    problems += [{"instance": index, "column": name, "problem": "unexpected column"}
                 for name in row if name not in columns]
    for name, kind in columns.items():
        if name in row and (why := value_problem(kind, row[name])) is not None:
            problems.append({"instance": index, "column": name, "problem": why})
    return problems


def json_type(kind: str) -> str:
    """The JSON type a column type is sent as."""
    return {"int": "integer", "float": "number", "bool": "boolean"}.get(kind, "string")


def json_schema(columns: Mapping[str, str]) -> dict[str, Any]:
    """The JSON Schema of one row."""
    return {"type": "object", "additionalProperties": False, "required": list(columns),
            "properties": {name: {"type": json_type(kind)} for name, kind in columns.items()}}


def json_type_of(value: Any) -> str:
    """The JSON type of a parsed JSON value (``null``, ``boolean``, ``number``, ``string``, ``array``, ``object``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
