"""Waivers expire by the UTC date, whatever the machine's time zone, and a pack may cap how far ahead they expire."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import check_policies, load_project
from compiler.errors import PolicyPackError
from compiler.policy.packs import load_pack

ROOT = Path(__file__).resolve().parents[1]

PACK: dict[str, Any] = {
    "apiVersion": "mlops/v1", "kind": "PolicyPack", "name": "house", "description": "House rules",
    "policies": [{
        "id": "HOUSE-001", "title": "Datasets are described", "severity": "error", "applies_to": "datasets",
        "schema": {"required": ["description"]}, "message": "{address} has no description",
        "rationale": "A record of processing.", "remediation": "Set `description:`.",
    }],
}


def project(directory: Path, expires: date | str, pack: dict[str, Any] = PACK) -> Path:
    """A repository whose one dataset fails HOUSE-001, waived until ``expires``."""
    (directory / ".git").mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "raw.csv").write_text("x\n1\n")
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "house.yaml").write_text(yaml.safe_dump(pack, sort_keys=False))
    spec = {"apiVersion": "mlops/v1", "project": "waivers", "datasets": {"raw": {"path": "data/raw.csv"}},
            "waivers": [{"policy": "HOUSE-001", "resource": "datasets.raw", "reason": "Being written",
                         "approved_by": "dpo@example.com", "expires": str(expires)}]}
    path = directory / "mlops.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def validate(spec: Path, tz: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), "validate"],
                          cwd=spec.parent, env=env, capture_output=True, text=True, timeout=120)


ZONES = {"Etc/GMT+12": -12, "Etc/GMT-14": 14}
"""UTC-12 and UTC+14: at any moment at least one of them is on another date than UTC."""


def test_a_waiver_expires_on_the_utc_date_in_every_time_zone(tmp_path: Path) -> None:
    assert Path("/usr/share/zoneinfo/Etc/GMT+12").exists(), "tzdata is needed to run in another zone"
    for _attempt in range(2):  # a UTC midnight during the run: once more
        now = datetime.now(UTC)
        utc_today = now.date()
        disagreeing = 0
        outcomes = []
        for tz, hours in ZONES.items():
            local = (now + timedelta(hours=hours)).date()
            disagreeing += local != utc_today
            expires = min(local, utc_today)  # "today" there or here, whichever is earlier
            spec = project(tmp_path / tz.replace("/", "-"), expires)
            expected = 0 if expires >= utc_today else 1  # active through its UTC day, expired after
            outcomes.append((tz, expires, expected, validate(spec, tz).returncode, validate(spec, "UTC").returncode))
        if datetime.now(UTC).date() == utc_today:
            break
    assert disagreeing >= 1
    for tz, expires, expected, there, in_utc in outcomes:
        assert (there, in_utc) == (expected, expected), f"expires {expires} in {tz}: exit {there}, in UTC {in_utc}"


CAPPED = {**PACK, "waivers": {"max_days": 30}}


@pytest.mark.parametrize("ahead", [0, 30])
def test_a_waiver_within_the_packs_cap_waives(tmp_path: Path, ahead: int) -> None:
    expires = datetime.now(UTC).date() + timedelta(days=ahead)
    report = check_policies(load_project(project(tmp_path, expires, CAPPED)))
    assert report.waiver_problems == [] and report.ok
    assert [r.status for r in report.results if r.policy.id == "HOUSE-001"] == ["waived"]


@pytest.mark.parametrize("expires", ["+31", "9999-12-31"])
def test_a_waiver_beyond_the_packs_cap_is_a_positioned_error(tmp_path: Path, expires: str) -> None:
    today = datetime.now(UTC).date()
    when = today + timedelta(days=31) if expires == "+31" else date(9999, 12, 31)
    spec = project(tmp_path, when, CAPPED)
    report = check_policies(load_project(spec))
    [problem] = report.waiver_problems
    latest = (today + timedelta(days=30)).isoformat()
    assert problem.severity == "error" and problem.address == "waivers[0]"
    assert problem.message == (f"waiver of HOUSE-001 for datasets.raw expires on {when.isoformat()}, more than 30 "
                               f"days ahead: pack house caps waivers at 30 days (at most {latest}, today being "
                               f"{today.isoformat()} UTC)")
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "expires:" in text)
    assert problem.position is not None and problem.position.line == line
    assert not report.ok
    assert [r.status for r in report.results if r.policy.id == "HOUSE-001"] == ["fail"]
    done = validate(spec, "UTC")
    assert done.returncode == 1 and f"mlops.yaml:{line}:" in done.stderr and "caps waivers at 30 days" in done.stderr


def test_the_tightest_cap_of_the_packs_in_use_applies_to_every_waiver(tmp_path: Path) -> None:
    spec = project(tmp_path, datetime.now(UTC).date() + timedelta(days=20), CAPPED)
    strict = {"apiVersion": "mlops/v1", "kind": "PolicyPack", "name": "strict", "waivers": {"max_days": 7},
              "policies": []}
    (tmp_path / "policies" / "strict.yaml").write_text(yaml.safe_dump(strict))
    [problem] = check_policies(load_project(spec)).waiver_problems
    assert "pack strict caps waivers at 7 days" in problem.message


def test_a_negative_cap_in_a_pack_is_refused_at_its_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**PACK, "waivers": {"max_days": -1}}, sort_keys=False))
    with pytest.raises(PolicyPackError) as raised:
        load_pack(path)
    [diagnostic] = raised.value.diagnostics
    assert "waivers.max_days" in diagnostic.message and diagnostic.position is not None
