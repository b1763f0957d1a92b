"""Load policy packs (``policies/*.yaml``) with positions, and choose the ones a project uses."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema_rs
from pydantic import ValidationError

from compiler.errors import Diagnostic, PolicyPackError, Position
from compiler.load import Document, load_file
from compiler.spec import Policy, PolicyPack
from compiler.suggest import did_you_mean


def _shipped_dir() -> Path:
    """``policies/`` of the source tree (an editable install), else where a wheel put it
    (``<prefix>/share/mlops/policies``, the ``data-files`` of ``pyproject.toml``)."""
    source = Path(__file__).resolve().parents[2] / "policies"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "mlops" / "policies"


SHIPPED_DIR = _shipped_dir()
"""The packs that ship with mlops (``baseline`` is always on)."""
ALWAYS_ON = "baseline"


@dataclass(frozen=True)
class LoadedPack:
    """A parsed pack, the file it came from, and where each of its policies is written."""

    pack: PolicyPack
    file: str
    document: Document
    shipped: bool

    def policy_position(self, index: int) -> Position:
        return self.document.position_of(("policies", index, "id"))


def load_pack(path: Path, shipped: bool = False) -> LoadedPack:
    """Parse and check one pack file; every problem is a positioned :class:`PolicyPackError`."""
    document = load_file(path, _display(path))
    try:
        pack = PolicyPack.model_validate(document.data)
    except ValidationError as exc:
        raise PolicyPackError([
            Diagnostic(f"{'.'.join(map(str, e['loc']))}: {e['msg']}", document.position_of(e["loc"]), "")
            for e in exc.errors(include_url=False)
        ]) from None
    problems = []
    for index, policy in enumerate(pack.policies):
        for key, schema in (("when", policy.when), ("schema", policy.schema_)):
            if schema is None:
                continue
            problem = _schema_problem(schema)
            if problem is not None:
                problems.append(Diagnostic(f"{policy.id}: `{key}` is not a valid JSON Schema: {problem}",
                                           document.position_of(("policies", index, key)), ""))
    if problems:
        raise PolicyPackError(problems)
    return LoadedPack(pack, document.file, document, shipped)


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid 2020-12 JSON Schema, or ``None`` (memoized: checking is slow)."""
    return _check_schema_text(json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=1024)
def _check_schema_text(text: str) -> str | None:
    try:
        jsonschema_rs.meta.validate(json.loads(text))
    except jsonschema_rs.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def discover(directories: list[Path]) -> list[LoadedPack]:
    """Every ``*.yaml`` pack in ``directories`` (the shipped folder first), each file once."""
    seen: set[Path] = set()
    out: list[LoadedPack] = []
    for directory in [SHIPPED_DIR, *directories]:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            out.append(load_pack(path, shipped=real.parent == SHIPPED_DIR))
    return out


def select(packs: list[LoadedPack], frameworks: list[str],
           framework_position: Position | None) -> list[LoadedPack]:
    """The packs that apply: ``baseline``, the project's ``compliance.frameworks``, and every project pack."""
    by_name = {loaded.pack.name: loaded for loaded in packs}
    problems = []
    for name in frameworks:
        if name not in by_name:
            problems.append(Diagnostic(f"unknown policy pack '{name}'{did_you_mean(name, by_name)}",
                                       framework_position, "compliance"))
    if problems:
        raise PolicyPackError(problems)
    wanted = {ALWAYS_ON, *frameworks}
    chosen = [loaded for loaded in packs if loaded.pack.name in wanted or not loaded.shipped]
    ids: dict[str, str] = {}
    for loaded in chosen:
        for index, policy in enumerate(loaded.pack.policies):
            if policy.id in ids:
                message = f"policy id {policy.id} is already defined in {ids[policy.id]}"
                raise PolicyPackError([Diagnostic(message, loaded.policy_position(index), "")])
            ids[policy.id] = loaded.file
    return chosen


def all_policies(packs: list[LoadedPack]) -> list[tuple[LoadedPack, int, Policy]]:
    """Each policy with its pack and its index in the pack."""
    return [(loaded, index, policy) for loaded in packs for index, policy in enumerate(loaded.pack.policies)]
