"""The report's figures: matplotlib (Agg, no display, no pyplot state) rendered to PNG bytes."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from runtime.export.report.data import CheckSeries, ModelCard, MonitorReport

MAX_METRICS = 6
"""A metric-history figure has at most this many panels (metrics by name)."""
WIDTH_IN = 9.0
PANEL_HEIGHT_IN = 2.6
DPI = 100
BREACH_COLOR = "#c62828"
THRESHOLD_COLOR = "#555555"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _grid(panels: int, columns: int) -> tuple[Figure, list[Axes]]:
    rows = -(-panels // columns)
    figure = Figure(figsize=(WIDTH_IN, PANEL_HEIGHT_IN * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def metric_history_png(card: ModelCard) -> bytes | None:
    """Each metric of the model's training runs by step, one line per version (by version when no run
    logged steps); ``None`` when nothing was recorded."""
    if card.curves:
        metrics = sorted({c.metric for c in card.curves})[:MAX_METRICS]
        figure, axes = _grid(len(metrics), 2 if len(metrics) > 1 else 1)
        for ax, metric in zip(axes, metrics, strict=True):
            for curve in (c for c in card.curves if c.metric == metric):
                ax.plot(curve.steps, curve.values, marker="o" if len(curve.steps) < 20 else None, markersize=3,
                        label=f"v{curve.version}")
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        figure.suptitle(f"{card.address}: metric history of the training runs", fontsize=11)
        return _png(figure)
    versions = [v for v in reversed(card.versions) if v.metrics]
    if not versions:
        return None
    metrics = sorted({m for v in versions for m in v.metrics})[:MAX_METRICS]
    figure, axes = _grid(len(metrics), 2 if len(metrics) > 1 else 1)
    for ax, metric in zip(axes, metrics, strict=True):
        points = [(v.version, v.metrics[metric]) for v in versions if metric in v.metrics]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("version")
        ax.grid(alpha=0.3)
    figure.suptitle(f"{card.address}: metrics by version", fontsize=11)
    return _png(figure)


def drift_png(monitor: MonitorReport) -> bytes | None:
    """Each check's score over time (per column for data drift) with its threshold and breaches marked;
    ``None`` when the monitor has no results."""
    series = [s for s in monitor.series if any(v is not None for v in s.scores) or s.columns]
    if not series:
        return None
    figure, axes = _grid(len(series), 1)
    for ax, check in zip(axes, series, strict=True):
        _check_panel(ax, check)
    figure.suptitle(f"monitors.{monitor.name} on deployments.{monitor.deployment}", fontsize=11)
    return _png(figure)


def _check_panel(ax: Axes, check: CheckSeries) -> None:
    times = [float(date2num(datetime.fromtimestamp(t, tz=UTC))) for t in check.times]
    if check.columns:
        for column, values in check.columns.items():
            ax.plot(times, [float("nan") if v is None else v for v in values], marker="o", markersize=3,
                    label=column)
        threshold = check.column_threshold
        title = f"{check.label}: score per column (drifts when {check.column_rule or 'over threshold'}; " \
                f"breached when the drifted share >= {check.threshold:g})" if check.threshold is not None else \
                f"{check.label}: score per column"
    else:
        ax.plot(times, [float("nan") if v is None else v for v in check.scores], marker="o", markersize=3,
                label="score")
        threshold = check.threshold
        title = f"{check.label}: score" + (f" (breached when {check.breach_when})" if check.breach_when else "")
    if threshold is not None:
        ax.axhline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    breached = [(t, s) for t, s, b in zip(times, check.scores, check.breached, strict=True) if b and s is not None]
    if breached and not check.columns:
        ax.scatter([t for t, _ in breached], [s for _, s in breached], color=BREACH_COLOR, zorder=3,
                   label="breached")
    for index, (t, _) in enumerate(breached if check.columns else []):
        ax.axvline(t, color=BREACH_COLOR, alpha=0.25, linewidth=4, label="breached" if index == 0 else None)
    ax.set_title(title, fontsize=10)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
