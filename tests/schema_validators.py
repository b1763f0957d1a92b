"""Validators for the reports mlops writes, against the outside world's schemas committed in ``tests/schemas/``.

``tests/schemas/README.md`` names where each schema comes from and its license.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

SCHEMAS = Path(__file__).resolve().parent / "schemas"
SARIF_SCHEMA = SCHEMAS / "sarif-schema-2.1.0.json"
JUNIT_XSD = SCHEMAS / "junit-10.xsd"


def validate_sarif(log: dict[str, Any]) -> None:
    """Against the OASIS SARIF 2.1.0 schema (draft-04), every error listed."""
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(log)]
    assert not errors, "\n".join(errors)


def validate_junit(xml: str, tmp_path: Path) -> None:
    """Against Jenkins' junit-10.xsd: with lxml where it is installed, else with xmllint --schema."""
    try:
        from lxml import etree  # type: ignore[import-untyped]
    except ImportError:
        etree = None
    if etree is not None:
        schema = etree.XMLSchema(etree.parse(str(JUNIT_XSD)))
        document = etree.fromstring(xml.encode())
        assert schema.validate(document), str(schema.error_log)
        return
    if shutil.which("xmllint") is None:
        pytest.skip("needs lxml or xmllint (Debian's libxml2-utils; .ci/run installs it)")
    report = tmp_path / "report.xml"
    report.write_text(xml)
    result = subprocess.run(["xmllint", "--noout", "--schema", str(JUNIT_XSD), str(report)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
