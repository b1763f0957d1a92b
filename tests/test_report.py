"""``mlops report --out DIR``: the compliance report, written from real state and rendered in headless Chromium.

The state is written through :class:`StateStore` (runs with per-step metrics, model versions, gate
decisions made by ``runtime.apply.gates.decide``, an approval, monitor results from real drift checks), so no
Ray is needed. The page is then opened in Debian's chromium: its screenshot must not be blank and the
key text must be in the rendered DOM. Without a browser the rendering test skips, except under CI
(``CI`` set) where it fails. ``MLOPS_REPORT_SCREENSHOT=FILE`` keeps a copy of the screenshot.
"""

from __future__ import annotations

import base64
import gc
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_project
from PIL import Image

from compiler import load_project
from runtime.apply.gates import decide
from runtime.cli.main import main
from runtime.monitor.checks import evaluate_check
from runtime.state.records import (
    Approval,
    DeploymentState,
    GateDecision,
    MetricPoint,
    ModelVersion,
    MonitorResult,
    Run,
)
from runtime.state.store import StateStore
from runtime.workspace import Workspace

HOUR = 3600.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DESCRIPTION = "Predicts churn <b>within 30 days</b> & flags at-risk customers"
INTENDED_USE = "Retention campaigns; not for credit decisions"
LIMITATIONS = "Trained on EU customers only"
GDPR_001_RATIONALE = "GDPR Art. 6(1) makes processing lawful only on one of six bases"

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "retention",
    "owners": ["team:ml-platform"],
    "compliance": {"frameworks": ["gdpr"], "risk": "high"},
    "datasets": {
        "customers": {"path": "data/customers.csv", "schema": {"email": "string", "amount": "float"},
                      "pii": ["email"], "legal_basis": "contract", "access": ["team:risk"], "region": "eu-west-1",
                      "description": "Customer accounts, one row per customer"},
        "tickets": {"path": "data/tickets.csv", "schema": {"email": "string", "amount": "float"},
                    "pii": ["email"], "legal_basis": "legitimate_interests", "retention_days": 365,
                    "access": ["team:risk"], "region": "eu-west-1", "description": "Support tickets"},
        # derived from personal data whose legal bases differ, so it inherits none: GDPR-001 fails here
        "features": {"from": ["customers", "tickets"], "transform": "pipeline:build_features"},
    },
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": 0.01},
                         "description": DESCRIPTION, "intended_use": INTENDED_USE, "limitations": LIMITATIONS}},
    "gates": {"churn-quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                                "approvals": {"required": 1, "from": ["team:risk"]}}},
    "deployments": {"churn-api": {"model": "churn", "gates": ["churn-quality"]}},
    "monitors": {"churn-drift": {"deployment": "churn-api", "reference": "features", "checks": [
        {"type": "data_drift", "method": "psi", "threshold": 0.2, "columns": ["amount", "tenure"]},
        {"type": "prediction_drift", "method": "ks", "threshold": 0.05}]}},
    "waivers": [
        {"policy": "GDPR-004", "resource": "datasets.customers", "reason": "Retention agreed, not yet encoded",
         "approved_by": "dpo@example.com", "expires": "2099-01-31"},
        {"policy": "GDPR-003", "resource": "datasets.features", "reason": "Legacy share with analytics",
         "approved_by": "dpo@example.com", "expires": "2020-06-30"},
    ],
}
DATA = "email,amount\n" + "".join(f"u{i}@example.com,{i * 1.5}\n" for i in range(20))
FILES = {"data/customers.csv": DATA, "data/tickets.csv": DATA}


@dataclass
class Written:
    spec: Path
    out: Path
    html: str


def run_cli(argv: list[str]) -> int:
    """``mlops ARGV`` in this process (``main`` turns the collector off for one-shot commands)."""
    try:
        return main(argv)
    finally:
        gc.enable()


def record_state(spec: Path) -> None:
    """Two trained versions (v1 fails the gate, v2 passes after an approval), v2 live, 6 hours of monitoring."""
    project = load_project(spec)
    gate = project.spec.gates["churn-quality"]
    with StateStore.open(Workspace.of(project).state_path) as store:
        for version, final_auc in ((1, 0.72), (2, 0.91)):
            run_id = f"run{version:04d}"
            store.start_run(Run(run_id, "models.churn/train", "models.churn", "trial", f"fp{version}",
                                {"lr": 0.01}, started_at=T0 + version * 60))
            curve = [(step, 0.5 + (final_auc - 0.5) * (step + 1) / 10, 1.0 / (step + 1)) for step in range(10)]
            store.log_metrics(run_id, [MetricPoint(run_id, name, step, value) for step, auc, loss in curve
                                       for name, value in (("auc", auc), ("loss", loss))])
            store.finish_run(run_id, "succeeded", {"auc": final_auc, "loss": 0.1}, finished_at=T0 + version * 60 + 30)
            store.add_model_version(ModelVersion(
                "churn", version, f"fp{version}", f"file:///artifacts/churn/{version}", run_id, {"auc": final_auc},
                {"lr": 0.01}, "codehash", "0123456789abcdef0123", {"datasets.features": f"sha256:{version}cafe0000"},
                created_at=T0 + version * 60 + 40))
        store.record_gate_decision(decide("churn-quality", gate, 1, {"auc": 0.72}, None, []))
        store.record_gate_decision(decide("churn-quality", gate, 2, {"auc": 0.91}, None, []))  # awaiting approval
        assert store.add_approval(Approval("churn-quality", "churn", 2, "team:risk", T0 + 600))
        passed: GateDecision = decide("churn-quality", gate, 2, {"auc": 0.91}, None, ["team:risk"])
        assert passed.status == "passed"
        store.record_gate_decision(passed)
        store.set_model_version_status("churn", 2, "approved", "passed gates.churn-quality")
        store.set_deployment(DeploymentState("churn-api", "churn", 2, 2, "healthy", T0 + 700))
        monitor = project.spec.monitors["churn-drift"]
        rng = np.random.default_rng(7)
        reference = {"amount": rng.normal(0, 1, 500), "tenure": rng.normal(5, 2, 500)}
        reference_predictions = rng.uniform(0, 1, 500)
        for hour in range(6):
            shift = hour * 0.4  # the live amounts drift further every hour
            current = {"amount": rng.normal(shift, 1, 300), "tenure": rng.normal(5, 2, 300)}
            predictions = np.clip(rng.uniform(0, 1, 300) + shift / 4, 0, 1)
            checks = []
            for check in monitor.checks:
                outcome = evaluate_check(check, reference, current, predictions,
                                         reference_predictions=reference_predictions, drift_share=0.5)
                checks.append({**outcome.to_json(), "status": "breached" if outcome.breached else "ok"})
            breached = any(c["status"] == "breached" for c in checks)
            store.add_monitor_result(MonitorResult("churn-drift", "churn-api", 2, T0 + 3600 + hour * HOUR, breached,
                                                   checks, ["alert: logged"] if breached else []))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("report")
    spec = write_project(root / "project", SPEC, files=FILES)
    record_state(spec)
    out = root / "out" / "report"
    code = run_cli(["-f", str(spec), "--no-color", "report", "--out", str(out)])
    assert code == 0
    return Written(spec, out, (out / "index.html").read_text(encoding="utf-8"))


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_holds_the_key_facts_escaped(written: Written) -> None:
    page = written.html
    assert list(written.out.iterdir()) == [written.out / "index.html"]  # no temp file left behind
    assert "Compliance report: retention" in page
    # the model card: description (escaped), intended use, limitations
    assert "models.churn" in page
    assert "Predicts churn &lt;b&gt;within 30 days&lt;/b&gt; &amp; flags at-risk customers" in page
    assert "<b>within" not in page
    assert INTENDED_USE in page and LIMITATIONS in page
    # data lineage with the PII flag on the personal column
    assert re.search(r'<code>datasets\.customers</code>.*?<span class="badge pii">PII</span> email', page, re.S)
    assert re.search(r'<code>datasets\.features</code>.*?<span class="badge pii">PII</span> derived from personal data',
                     page, re.S)
    assert "sha256:2cafe000" in page  # the content v2 was trained on
    # policy results: the failure, its rationale, the waiver that applies and the one that expired
    assert "datasets.features holds personal data but declares no legal_basis" in page
    assert GDPR_001_RATIONALE in page
    assert "2099-01-31" in page and "2020-06-30" in page
    assert re.search(r"2020-06-30</strong></td><td><span class=\"badge expired\">expired</span>", page)
    assert re.search(r"2099-01-31</strong></td><td><span class=\"badge active\">active</span>", page)
    # gate decisions per version and the approver
    assert re.search(r"gates\.churn-quality</code></td><td>v2</td><td><span class=\"badge passed\">passed", page)
    assert re.search(r"gates\.churn-quality</code></td><td>v1</td><td><span class=\"badge failed\">failed", page)
    assert "auc 0.91 &gt;= 0.8 is true" in page
    assert "team:risk (2026-01-01 00:10 UTC)" in page
    # monitors: the latest result breached on data drift
    assert "monitors.churn-drift" in page and "badge breached" in page and "amount" in page
    # figures are embedded PNGs (one metric history, one drift history); nothing is fetched
    pngs = images(page)
    assert len(pngs) == 2
    for png in pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 200
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("no headless Chromium on PATH (chromium, chromium-browser or google-chrome); CI must install it")
    pytest.skip("no headless Chromium on PATH (apt-get install chromium)")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless run (``--screenshot`` and ``--dump-dom`` can share it); a fresh profile per test."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", "--disable-background-networking",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_report_renders_in_headless_chromium(written: Written, tmp_path: Path) -> None:
    browser = _browser()
    shot = tmp_path / "report.png"
    done = _chromium(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", "--dump-dom",
                     (written.out / "index.html").as_uri())
    assert shot.exists(), done.stderr[-2000:]
    if os.environ.get("MLOPS_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MLOPS_REPORT_SCREENSHOT"])
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(np.uint32)
    assert pixels.shape[:2] == (2000, 1280)
    inked = pixels.min(axis=2) < 240
    colours = len(np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]))
    # the page measured 15% non-white overall, 9% below the header (tables of text), ~2,000 colours
    assert float(inked.mean()) > 0.10, f"the screenshot is almost blank ({float(inked.mean()):.1%} non-white)"
    assert float(inked[300:].mean()) > 0.04, "nothing is drawn below the header"
    assert colours > 500, f"the screenshot has only {colours} colours"
    dom = done.stdout
    for text in ("Compliance report: retention", "models.churn", "within 30 days", INTENDED_USE, "2099-01-31",
                 GDPR_001_RATIONALE, "gates.churn-quality", "team:risk", "monitors.churn-drift"):
        assert text in dom, f"{text!r} is not on the rendered page"


def test_report_without_state_creates_no_state(tmp_path: Path) -> None:
    spec = write_project(tmp_path / "project", SPEC, files=FILES)
    out = tmp_path / "out"
    assert run_cli(["-f", str(spec), "report", "--out", str(out)]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "No state recorded yet" in page and "No version trained yet." in page
    assert "The monitor has not run yet." in page and not images(page)
    assert not (tmp_path / "project" / ".mlops").exists()


def test_invalid_spec_is_one_line_error_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = {**SPEC, "models": {"churn": {**SPEC["models"]["churn"], "data": {"train": "featurs"}}}}
    spec = write_project(tmp_path / "project", broken, files=FILES)
    out = tmp_path / "out"
    assert run_cli(["-f", str(spec), "--no-color", "report", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "featurs" in err and "Traceback" not in err
    assert not out.exists()


def test_out_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_project(tmp_path / "project", SPEC, files=FILES)
    assert run_cli(["-f", str(spec), "report"]) == 1
    assert "--out" in capsys.readouterr().err


def _report_of(root: Path, record: Any) -> str:
    """The report of the SPEC project after ``record(project, store)`` wrote its state."""
    spec = write_project(root / "project", SPEC, files=FILES)
    project = load_project(spec)
    with StateStore.open(Workspace.of(project).state_path) as store:
        for version in (1, 2, 3):
            store.add_model_version(ModelVersion("churn", version, f"fp{version}", f"sha256:{version:064d}",
                                                 metrics={"auc": 0.91}, created_at=T0 + version * HOUR))
        record(project, store)
    assert run_cli(["-f", str(spec), "--no-color", "report", "--out", str(root / "out")]) == 0
    return (root / "out" / "index.html").read_text(encoding="utf-8")


def _gate_row(page: str, version: int) -> str:
    found = re.search(rf"gates\.churn-quality</code></td><td>v{version}</td>(.*?)</tr>", page, re.S)
    assert found, f"no gate row for v{version}"
    return found.group(1)


def test_report_shows_each_decisions_approvals_against_the_rule_recorded_with_it(tmp_path: Path) -> None:
    from compiler.spec import Gate

    def record(project: Any, store: StateStore) -> None:
        # v1: decided before decisions recorded their rule (today's rule, 1 approval, did not exist then)
        store.record_gate_decision(GateDecision("churn-quality", "churn", 1, "passed", [
            {"metric": "auc", "op": ">=", "expected": 0.8, "actual": 0.91, "passed": True,
             "reason": "auc 0.91 >= 0.8 is true"}], T0 + HOUR))
        # v2: decided under a rule of 2 approvals, with one; a second came after the decision
        stricter = Gate.model_validate({"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                                        "approvals": {"required": 2, "from": ["team:risk", "dpo@example.com"]}})
        assert store.add_approval(Approval("churn-quality", "churn", 2, "team:risk", T0 + 2 * HOUR))
        awaiting = decide("churn-quality", stricter, 2, {"auc": 0.91}, None, ["team:risk"])
        assert awaiting.status == "awaiting_approval"
        store.record_gate_decision(GateDecision(**{**vars(awaiting), "decided_at": T0 + 2 * HOUR + 60}))
        assert store.add_approval(Approval("churn-quality", "churn", 2, "dpo@example.com", T0 + 3 * HOUR))
        # v3: decided under a rule that asked for no approval
        lenient = Gate.model_validate({"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]})
        store.record_gate_decision(decide("churn-quality", lenient, 3, {"auc": 0.91}, None, []))

    page = _report_of(tmp_path, record)
    old, stricter, lenient = _gate_row(page, 1), _gate_row(page, 2), _gate_row(page, 3)
    assert "rule not recorded with this decision" in old and "of 1 required" not in old
    assert "1 of 2 required at the decision: team:risk (2026-01-01 02:00 UTC)" in stricter
    assert "dpo@example.com (2026-01-01 03:00 UTC) <span class=\"muted\">after the decision</span>" in stricter
    assert "approvals: 1 of 2" not in stricter  # the rule is in the approvals column, not among the checks
    assert "none required" in lenient and "of 1 required" not in lenient
    assert "of 1 required" not in page  # today's rule is never applied to past decisions


def test_report_has_a_deployment_history_with_rollbacks_and_failed_rollouts(tmp_path: Path) -> None:
    from runtime.state import audit

    def record(project: Any, store: StateStore) -> None:
        audit.append(store, "ml@example.com", "apply", {
            "changes": {"deployments.churn-api": "create"}, "outcomes": {"deployments.churn-api/deploy": "succeeded"}},
            "1111111111111111", at=T0 + HOUR)
        audit.append(store, "ml@example.com", "apply", {  # the deployment was blocked: no event
            "changes": {}, "outcomes": {"deployments.churn-api/deploy": "blocked"}}, at=T0 + 2 * HOUR)
        audit.append(store, "oncall@example.com", "rollback", {
            "deployment": "deployments.churn-api", "model": "churn", "from": 2, "to": 1,
            "reason": "latency <regression>"}, "2222222222222222", at=T0 + 3 * HOUR)
        audit.rollout_failed(store, "ml@example.com", "churn-api", "churn", 3, 1,
                             "replica failed its health check:\n  model file missing", "3333333333333333")
        audit.append(store, "ml@example.com", "rollback", {  # another deployment's: not in this history
            "deployment": "deployments.other", "model": "churn", "from": 5, "to": 4, "reason": "elsewhere"})
        store.set_deployment(DeploymentState("churn-api", "churn", 3, 1, "Degraded: rollout failed", T0 + 4 * HOUR,
                                             1, "latency <regression>"))
        assert audit.verify(store) == []

    page = _report_of(tmp_path, record)
    assert '<a href="#deployments">Deployments</a>' in page
    section = page[page.index('<section id="deployments.churn-api">'):]
    section = section[:section.index("</section>")]
    assert "serving v1 (desired v3) · Degraded: rollout failed · rolled back to v1: latency &lt;regression&gt;" \
        in section
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", section, re.S)
    events = [[re.sub(r"<[^>]+>", "", cell) for cell in row.split("</td><td>")] for row in rows]
    assert [(cells[1], cells[2], cells[3]) for cells in events] == [
        ("deployed", "-", "ml@example.com"),
        ("rollback", "v2 → v1", "oncall@example.com"),
        ("rollout failed", "v1 → v3", "ml@example.com")]
    assert "latency &lt;regression&gt;" in rows[1] and "<regression>" not in section
    assert "replica failed its health check: model file missing" in rows[2]  # one line
    assert "<code>333333333333</code>" in rows[2] and "elsewhere" not in section
    assert 'id="deployments.other"' in page  # a deployment gone from the spec keeps its history
