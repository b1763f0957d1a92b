"""``mlops report``: a static, self-contained HTML compliance report for reviewers.

:mod:`~runtime.export.report.data` gathers what to show, :mod:`~runtime.export.report.plots` draws the figures and
:mod:`~runtime.export.report.html` renders the page; :func:`write_report` does all three and writes
``DIR/index.html`` atomically::

    with opened(project) as (_, store):
        path = write_report(project, check_policies(project), store, Path("report"))
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compiler import PolicyReport
from compiler.resolve import Project
from runtime.state.store import StateStore

INDEX = "index.html"


def build_report(project: Project, policies: PolicyReport, store: StateStore | None) -> str:
    """The report's HTML (``store`` is ``None`` when the project has recorded nothing yet)."""
    from runtime.export.report import html, plots
    from runtime.export.report.data import gather

    data = gather(project, policies, store)
    return html.render(data, {card.name: plots.metric_history_png(card) for card in data.models},
                       {monitor.name: plots.drift_png(monitor) for monitor in data.monitors})


def write_report(project: Project, policies: PolicyReport, store: StateStore | None, out_dir: Path) -> Path:
    """Render the report, then write ``out_dir/index.html`` at once (a temp file renamed over it)."""
    text = build_report(project, policies, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / INDEX
    fd, temp = tempfile.mkstemp(prefix=f".{INDEX}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
