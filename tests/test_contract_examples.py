"""The contract's own examples validate as written: the big example of SPEC §1 (docs/SPEC.md, a verbatim
copy of the shared contract) and README's "The spec at a glance", each taken from its file, written into a
fresh project with the data files it names and the example pipeline it calls, and run through
``mlops validate`` in a subprocess with every pack of its ``frameworks`` on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_SPEC = Path("/work/shared/SPEC.md")
VALUES = {"int": "1", "float": "1.5", "string": "x", "bool": "true", "category": "a", "datetime": "2026-01-01"}


def yaml_block(path: Path, heading: str) -> str:
    """The first ```yaml block after the Markdown heading that starts with ``heading``."""
    text = path.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(heading)}.*$", text, re.M)
    assert start, f"{path.name} has no heading {heading!r}"
    block = re.compile(r"^```yaml\n(.*?)^```$", re.M | re.S).search(text, start.end())
    assert block, f"{path.name} has no yaml block after {heading!r}"
    return block.group(1)


def columns_of(dataset: dict[str, Any]) -> dict[str, str]:
    """The declared columns (else the PII columns, else one) of a source dataset, with their types."""
    if dataset.get("schema"):
        return dict(dataset["schema"])
    pii = dataset.get("pii")
    return dict.fromkeys(pii if isinstance(pii, list) and pii else ["id"], "string")


def write_example(root: Path, text: str) -> Path:
    """A repository holding the spec as written, a small CSV per source dataset and the examples package."""
    root.mkdir(parents=True)
    (root / ".git").mkdir()
    spec = root / "mlops.yaml"
    spec.write_text(text, encoding="utf-8")
    for dataset in (yaml.safe_load(text).get("datasets") or {}).values():
        if dataset.get("path"):
            columns = columns_of(dataset)
            target = root / dataset["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            rows = [",".join(columns), ",".join(VALUES[kind] for kind in columns.values())]
            target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    # `examples.churn.pipeline:...` must be a module of the repository that holds the spec
    for module in ("examples/__init__.py", "examples/churn/__init__.py", "examples/churn/pipeline.py"):
        (root / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / module, root / module)
    return spec


def validate(spec: Path) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--json", "-f", str(spec), "validate"],
                          cwd=spec.parent, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")})
    return done.returncode, json.loads(done.stdout), done.stderr


def check_validates(tmp_path: Path, text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    schema = json.loads((ROOT / "schemas" / "mlops.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(json.dumps(data, default=str)))
    code, result, stderr = validate(write_example(tmp_path / "example", text))
    errors = [f"{r['policy']} {r['address']}: {r['message']}" for r in result["policy"]["results"]
              if r["status"] == "fail" and r["severity"] == "error"]
    assert (code, result["diagnostics"], errors) == (0, [], []), stderr
    assert result["ok"] is True and result["policy"]["ok"] is True
    frameworks = (data.get("compliance") or {}).get("frameworks") or []
    assert result["policy"]["packs"] == sorted(["baseline", *frameworks])
    return result


def test_docs_spec_is_a_verbatim_copy_of_the_shared_contract() -> None:
    if not SHARED_SPEC.is_file():
        pytest.skip(f"{SHARED_SPEC} is not on this machine")
    assert (ROOT / "docs" / "SPEC.md").read_bytes() == SHARED_SPEC.read_bytes()


def test_the_spec_example_validates_as_written(tmp_path: Path) -> None:
    text = yaml_block(ROOT / "docs" / "SPEC.md", "1. The spec")
    assert text.startswith("# yaml-language-server:") and "waivers:" in text  # the whole §1 example
    result = check_validates(tmp_path, text)
    assert result["policy"]["packs"] == ["baseline", "eu-ai-act", "gdpr"]
    # the derived `features` declares no governance of its own: it inherits it and passes every policy
    features = [r for r in result["policy"]["results"] if r["address"] == "datasets.features"]
    assert features and [r["policy"] for r in features if r["status"] != "pass"] == []


def test_the_readme_example_validates_as_written(tmp_path: Path) -> None:
    text = yaml_block(ROOT / "README.md", "The spec at a glance")
    assert "apiVersion: mlops/v1" in text and "monitors:" in text
    result = check_validates(tmp_path, text)
    assert result["policy"]["packs"] == ["baseline", "gdpr"]
