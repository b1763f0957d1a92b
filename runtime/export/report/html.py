"""The report as one self-contained HTML page: inline CSS, figures as data: URIs, no script, no network.

Every value that comes from the spec, the policy packs or the state is escaped.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from runtime.export.report.data import DatasetRow, DeploymentHistory, GateRow, ModelCard, MonitorReport, ReportData
from runtime.lifecycle.sizes import INFERENCE, human_bytes

NOT_STATED = "not stated"

CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1f2328;background:#fff;font-size:14px}
header{background:#1d3557;color:#fff;padding:20px 32px}header h1{margin:0 0 6px;font-size:24px}
header p{margin:2px 0;color:#dde6f0}main{padding:8px 32px 40px;max-width:1200px}
nav{padding:10px 32px;background:#f1f4f8;border-bottom:1px solid #d0d7de}nav a{margin-right:16px;color:#1d3557}
h2{border-bottom:2px solid #1d3557;padding-bottom:4px;margin-top:32px}h3{margin-top:28px;color:#1d3557}
table{border-collapse:collapse;width:100%;margin:8px 0 16px}th,td{border:1px solid #d0d7de;padding:5px 8px;
text-align:left;vertical-align:top}th{background:#f1f4f8}tr:nth-child(even) td{background:#fafbfc}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:bold;color:#fff}
.fail,.failed,.breached,.expired,.invalid,.error{background:#c62828}.waived,.awaiting_approval,.warning{background:#e08e0b}
.deploy_failed,.rollout_failed{background:#c62828}.rollback{background:#e08e0b}
.pass,.passed,.ok,.active,.approved,.deployed{background:#2e7d32}.candidate,.rejected,.skipped,.none{background:#6e7781}
.pii{background:#6a1b9a}.summary span{margin-right:12px}.muted{color:#6e7781}
dl.card{display:grid;grid-template-columns:180px 1fr;gap:4px 12px}dl.card dt{font-weight:bold}dl.card dd{margin:0}
img.plot{max-width:100%;border:1px solid #d0d7de;margin:8px 0}code{background:#f1f4f8;padding:0 3px}
.small{font-size:12px}
"""


def e(value: Any) -> str:
    """A value as escaped text (``-`` for ``None``)."""
    return "-" if value is None else html.escape(str(value), quote=True)


def _utc(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _badge(status: str) -> str:
    css = "".join(ch if ch.isalnum() else "_" for ch in status.lower())
    return f'<span class="badge {css}">{e(status)}</span>'


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    """A table of pre-rendered (already escaped) cells."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(png: bytes | None, alt: str, missing: str) -> str:
    if png is None:
        return f'<p class="muted">{e(missing)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{e(alt)}" src="data:image/png;base64,{data}">'


def render(data: ReportData, model_plots: Mapping[str, bytes | None], drift_plots: Mapping[str, bytes | None]) -> str:
    """The whole page; ``model_plots``/``drift_plots`` map a model / monitor name to its PNG (or ``None``)."""
    parts = [_header(data), _nav(), "<main>", _policies(data), _waivers(data), '<h2 id="models">Model cards</h2>']
    parts += [_model(card, model_plots.get(card.name)) for card in data.models] or \
        ['<p class="muted">The spec declares no models.</p>']
    parts.append(_deployments(data))
    parts.append('<h2 id="monitors">Monitors</h2>')
    parts += [_monitor(m, drift_plots.get(m.name)) for m in data.monitors] or \
        ['<p class="muted">The spec declares no monitors.</p>']
    parts.append(_store(data))
    parts.append(_data_lifecycle(data))
    parts.append("</main>")
    title = f"Compliance report: {data.project}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>" + "".join(parts) + "</body></html>\n")


def _header(data: ReportData) -> str:
    counts = data.counts
    state = "" if data.state_recorded else \
        '<p><strong>No state recorded yet</strong> (nothing applied): runs, versions and monitors are empty.</p>'
    return (f"<header><h1>Compliance report: {e(data.project)}</h1>"
            f"<p>Generated {e(_utc(data.generated_at))} from {e(data.spec_file)}</p>"
            f"<p>Risk class: <strong>{e(data.risk)}</strong> · frameworks: {e(', '.join(data.frameworks) or 'none')}"
            f" · policy packs: {e(', '.join(data.packs))}</p>"
            f"<p>Owners: {e(', '.join(data.owners) or NOT_STATED)}</p>{state}"
            f'<p class="summary"><span>{counts["fail"]} failing ({counts["error"]} error, {counts["warning"]}'
            f' warning)</span><span>{counts["waived"]} waived</span><span>{counts["pass"]} passing</span></p>'
            "</header>")


def _nav() -> str:
    return ('<nav><a href="#policies">Policy results</a><a href="#waivers">Waivers</a>'
            '<a href="#models">Model cards</a><a href="#deployments">Deployments</a>'
            '<a href="#monitors">Monitors</a><a href="#artifact-store">Artifact store</a>'
            '<a href="#retention">Retention and erasure</a></nav>')


def _store(data: ReportData) -> str:
    """The artifact store's size by kind (what ``mlops gc --apply`` would free is ``unreferenced``)."""
    size = data.store_size
    if size is None:
        why = data.store_error or "No state recorded yet."
        return f'<h2 id="artifact-store">Artifact store</h2><p class="muted">{e(why)}</p>'
    rows = [[e(kind), e(size.objects_by_kind.get(kind, 0) if kind != INFERENCE else "-"), e(human_bytes(count))]
            for kind, count in size.bytes_by_kind.items()]
    table = _table(["Kind", "Objects", "Size"], [*rows, ["<strong>total</strong>", e(size.objects),
                                                         f"<strong>{e(human_bytes(size.total_bytes))}</strong>"]], "")
    return (f'<h2 id="artifact-store">Artifact store</h2><p><code>{e(size.location)}</code></p>{table}'
            '<p class="small muted">Unreferenced objects are what <code>mlops gc --apply</code> frees.</p>')


def _policies(data: ReportData) -> str:
    open_rows = [r for r in data.policies if r.status != "pass"]
    passed = [r for r in data.policies if r.status == "pass"]
    rows = [[_badge(r.status), _badge(r.severity), f"<strong>{e(r.policy)}</strong><br>{e(r.title)}",
             f"<code>{e(r.address)}</code>",
             e(r.message) + (f'<br><span class="small muted">{e(r.detail)}</span>' if r.detail else ""),
             e(r.rationale), e(r.remediation), e(r.waiver or "-")] for r in open_rows]
    table = _table(["Status", "Severity", "Policy", "Resource", "Finding", "Rationale", "Remediation", "Waiver"],
                   rows, "No policy fails and none is waived.")
    passing = _table(["Policy", "Resource", "Rationale"],
                     [[f"<strong>{e(r.policy)}</strong> {e(r.title)}", f"<code>{e(r.address)}</code>",
                       e(r.rationale)] for r in passed], "No policy passes.")
    return (f'<h2 id="policies">Policy results</h2>{table}'
            f"<details><summary>{len(passed)} passing checks</summary>{passing}</details>")


def _waivers(data: ReportData) -> str:
    rows = [[e(w.policy), f"<code>{e(w.resource)}</code>", e(w.reason), e(w.approved_by),
             f"<strong>{e(w.expires.isoformat())}</strong>", _badge(w.state) + f" {e(w.note)}"] for w in data.waivers]
    table = _table(["Policy", "Resource", "Reason", "Approved by", "Expires", "State"], rows,
                   "The spec declares no waivers.")
    return f'<h2 id="waivers">Waivers</h2>{table}'


def _stated(value: str | None) -> str:
    return e(value) if value else f'<span class="muted">{NOT_STATED}</span>'


def _pii(dataset: DatasetRow) -> str:
    if dataset.pii:
        return _badge("PII") + " " + e(", ".join(dataset.pii_columns) or "yes")
    return _badge("PII") + " derived from personal data" if dataset.pii_upstream else "no"


def _model(card: ModelCard, plot: bytes | None) -> str:
    params = ", ".join(f"{k}={_number(v)}" for k, v in sorted(card.params.items())) or "none"
    facts = [("Description", _stated(card.description)), ("Intended use", _stated(card.intended_use)),
             ("Limitations", _stated(card.limitations)),
             ("Training", f"<code>{e(card.train)}</code>" + (f", evaluated by <code>{e(card.evaluate)}</code>"
                                                            if card.evaluate else "")),
             ("Parameters", e(params)),
             ("Personal data", _badge("PII") + " learns from personal data" if card.pii else "no PII upstream"),
             ("Deployments", e(", ".join(card.deployments) or "none"))]
    card_html = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    lineage = _table(["Dataset", "Origin", "PII", "Legal basis", "Retention", "Region", "Access", "Description",
                      "Content (newest version)"],
                     [[f"<code>{e(d.address)}</code>", e(d.origin),
                       _pii(d),
                       e(d.legal_basis), e(f"{d.retention_days} days" if d.retention_days else None), e(d.region),
                       e(", ".join(d.access) or None), e(d.description),
                       f'<code class="small">{e(d.content_hash[:16])}</code>' if d.content_hash else "-"]
                      for d in card.datasets], "No datasets.")
    versions = _table(["Version", "Status", "Created", "Metrics", "Git commit", "Live in"],
                      [[f"v{v.version}", _badge(v.status) + (f" {e(v.reason)}" if v.reason else "") +
                        "".join(f"<br><strong>trained on {e(flag)}</strong>" for flag in v.data_flags),
                        e(_utc(v.created_at)),
                        e(" ".join(f"{k}={_number(x)}" for k, x in sorted(v.metrics.items())) or "-"),
                        f"<code>{e((v.git_commit or '-')[:12])}</code>", e(", ".join(v.live_in) or "-")]
                       for v in card.versions], "No version trained yet.")
    gates = _table(["Gate", "Version", "Decision", "Checks", "Approvals", "Decided"],
                   [[f"<code>gates.{e(g.gate)}</code>", f"v{g.version}", _badge(g.status),
                     "<br>".join(e(c) for c in g.checks) or "-", _approvals(g),
                     e(_utc(g.decided_at))] for g in card.gates], "No gate decision recorded.")
    image = _image(plot, f"metric history of {card.address}", "No metrics recorded yet.")
    return (f'<section id="{e(card.address)}"><h3>{e(card.address)}</h3><dl class="card">{card_html}</dl>'
            f"<h4>Data lineage</h4>{lineage}<h4>Versions</h4>{versions}<h4>Gate decisions and approvals</h4>{gates}"
            f"<h4>Metric history</h4>{image}</section>")


def _approvals(gate: GateRow) -> str:
    """The approvals of one decision against the rule recorded with it (never the spec's current rule)."""
    if not gate.decided:
        rule = '<span class="muted">no decision yet:</span> '
    elif gate.required is None:
        rule = '<span class="muted">rule not recorded with this decision:</span> '
    elif gate.required == 0:
        rule = "none required" + (": " if gate.approvals else "")
    else:
        rule = f"{len(gate.counted)} of {gate.required} required at the decision: "
    later = [who not in gate.counted and gate.required is not None and at > gate.decided_at
             for who, at in gate.approvals]
    listed = "<br>".join(f"{e(who)} ({e(_utc(at))})" + (' <span class="muted">after the decision</span>' if after
                                                       else "")
                         for (who, at), after in zip(gate.approvals, later, strict=True))
    if gate.required == 0 and not listed:
        return rule
    return rule + (listed or "none")


def _deployments(data: ReportData) -> str:
    if not data.deployments:
        return '<h2 id="deployments">Deployments</h2><p class="muted">The spec declares no deployments.</p>'
    return '<h2 id="deployments">Deployments</h2>' + "".join(_deployment(d) for d in data.deployments)


def _version(number: int | None) -> str:
    return "-" if number is None else f"v{number}"


def _deployment(item: DeploymentHistory) -> str:
    if item.status is None:
        state = "never deployed"
    else:
        state = (f"serving {_version(item.live_version)} (desired {_version(item.desired_version)}) "
                 f"· {item.status}")
        if item.pinned_version is not None:
            state += f" · rolled back to {_version(item.pinned_version)}: {item.pin_reason or 'no reason given'}"
    history = _table(["When", "Event", "Versions", "By", "Detail", "Commit"],
                     [[e(_utc(ev.at)), _badge(ev.event),
                       e(f"{_version(ev.from_version)} → {_version(ev.to_version)}"
                         if ev.from_version is not None or ev.to_version is not None else "-"),
                       e(ev.actor), e(ev.detail or "-"), f"<code>{e((ev.commit or '-')[:12])}</code>"]
                      for ev in item.events], "Nothing recorded in the audit trail for this deployment.")
    return (f'<section id="{e(item.address)}"><h3>{e(item.address)}</h3>'
            f"<p>Model <code>models.{e(item.model)}</code> ({e(item.mode)}): {e(state)}</p>"
            f"<h4>History</h4>{history}</section>")


def _drifted(check: Mapping[str, Any]) -> str:
    columns = (check.get("detail") or {}).get("drifted_columns")
    return f"drifted: {', '.join(columns) or 'none'}" if isinstance(columns, list) else ""


def _monitor(monitor: MonitorReport, plot: bytes | None) -> str:
    latest = monitor.latest
    summary = (f"{monitor.results} evaluation(s), {monitor.breaches} breached" +
               (f"; latest {_utc(latest.at)} on version {latest.version or '-'}" if latest else ""))
    checks = _table(["Check", "Score", "Threshold", "Status", "Note"],
                    [[e(f"{c.get('type')} ({c.get('method')})"), e(_number(c.get("score"))),
                      e(_number(c.get("threshold"))), _badge(str(c.get("status", "ok"))),
                      e(c.get("reason") or _drifted(c))]
                     for c in (latest.checks if latest else [])], "The monitor has not run yet.")
    actions = f"<p>Actions taken: {e('; '.join(latest.actions))}</p>" if latest and latest.actions else ""
    image = _image(plot, f"drift of monitors.{monitor.name}", "No results to plot yet.")
    return (f'<section id="monitors.{e(monitor.name)}"><h3>monitors.{e(monitor.name)}</h3>'
            f"<p>On <code>deployments.{e(monitor.deployment)}</code>: {e(summary)}</p>"
            f"<h4>Latest checks</h4>{checks}{actions}<h4>History</h4>{image}</section>")


def _data_lifecycle(data: ReportData) -> str:
    """What retention expires next, and every erasure request (open while a version in use is trained on it)."""
    expiring = _table(["Dataset", "Kind", "Content", "Made", "Expires", "Why"],
                      [[f"<code>{e(x.address)}</code>", e(x.item.item_kind),
                        f'<code class="small">{e(x.item.content_hash[:16])}</code>', e(_utc(x.item.created_at)),
                        e(_utc(x.expires_at)), e(x.reason)] for x in data.expiring],
                      "Nothing held has a retention period." if data.state_recorded else "No state recorded yet.")
    erasures = _table(["Request", "Dataset", "Reason", "Asked by", "When", "Erased", "Models trained on it", "State"],
                      [[e(row.request.id), f"<code>{e(row.request.dataset)}</code>", e(row.request.reason),
                        e(row.request.requested_by), e(_utc(row.request.requested_at)), e(row.erased),
                        e(", ".join(row.request.models) or "none"),
                        _badge("open") + f" still in use: {e(', '.join(row.in_use))}" if row.in_use else "done"]
                       for row in data.erasures], "No erasure requested.")
    return (f'<h2 id="retention">Retention and erasure</h2><h4>Expiring next</h4>{expiring}'
            f"<h4>Erasure requests</h4>{erasures}")
