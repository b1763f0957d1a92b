"""A monitor's checks, evaluated: data drift, prediction drift, accuracy over a window, latency p95.

:func:`evaluate_check` takes one check model of ``mlops.yaml`` (``compiler.spec.DataDriftCheck``,
``PredictionDriftCheck``, ``AccuracyCheck``, ``LatencyCheck``) and the samples a monitor collected, and
returns a :class:`CheckResult`. Pure: no Ray, no state; the drift statistics are in :mod:`runtime.monitor.drift`.

How each check breaches:

- ``data_drift``: per-column drift by ``method`` at ``threshold`` (default per method); breached when the
  share of drifted columns is at least ``drift_share`` (0.5). ``score`` is that share.
- ``prediction_drift``: the drift of the predictions; breached when they drift. ``score`` is the
  method's score, a p-value (``ks``, ``chi2``: breach when below) or a distance (breach when at or above).
- ``accuracy``: ``metric`` over the last ``window`` labelled pairs; breached when ``value < min``. The spec
  reads ``min`` literally, so the check is meant for higher-is-better metrics (``auc``, ``accuracy``,
  ``precision``, ``recall``, ``f1``); on an error metric (``logloss``, ``mse``, ``mae``) it still breaches
  only when the value is *below* ``min`` — ``detail.higher_is_better`` says which kind the metric is.
- ``latency``: p95 of the latencies in ms (numpy's linear percentile); breached when ``p95 > p95_ms``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from compiler.spec import AccuracyCheck, DataDriftCheck, LatencyCheck, PredictionDriftCheck
from runtime.monitor.drift import DEFAULT_DRIFT_SHARE, InsufficientDataError, dataset_drift, prediction_drift

CheckType = Literal["data_drift", "prediction_drift", "accuracy", "latency"]
ScoreKind = Literal["p_value", "distance", "drift_share", "metric", "latency_ms"]
BreachRule = Literal["score < threshold", "score >= threshold", "score > threshold"]
AnyCheck = DataDriftCheck | PredictionDriftCheck | AccuracyCheck | LatencyCheck

Floats = npt.NDArray[np.float64]
LOGLOSS_EPSILON = 1e-15
"""Probabilities are clipped to ``[eps, 1 - eps]`` for logloss."""
CLASS_THRESHOLD = 0.5
"""A score at or above it is the positive class for accuracy, precision, recall and f1."""


@dataclass(frozen=True)
class CheckResult:
    """One evaluated check. ``breach_when`` states the rule applied to ``score`` and ``threshold``."""

    type: CheckType
    method: str
    """The drift method, the accuracy metric, or ``p95`` for latency."""
    score: float
    score_kind: ScoreKind
    threshold: float
    breach_when: BreachRule
    breached: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "method": self.method, "score": self.score, "score_kind": self.score_kind,
                "threshold": self.threshold, "breach_when": self.breach_when, "breached": self.breached,
                "detail": dict(self.detail)}


# --- metrics ------------------------------------------------------------------------------------------------


def _hard(scores: Floats) -> Floats:
    return (scores >= CLASS_THRESHOLD).astype(float)


def auc(scores: Floats, labels: Floats) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties counted as one half."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise InsufficientDataError("auc needs both classes among the labels in the window")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(scores: Floats, labels: Floats) -> float:
    return float(np.mean(_hard(scores) == labels))


def precision(scores: Floats, labels: Floats) -> float:
    """True positives over predicted positives; 0 when nothing is predicted positive."""
    predicted = _hard(scores) == 1
    return float((labels[predicted] == 1).sum() / predicted.sum()) if predicted.any() else 0.0


def recall(scores: Floats, labels: Floats) -> float:
    """True positives over actual positives; 0 when there are none."""
    actual = labels == 1
    return float((_hard(scores)[actual] == 1).sum() / actual.sum()) if actual.any() else 0.0


def f1(scores: Floats, labels: Floats) -> float:
    p, r = precision(scores, labels), recall(scores, labels)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def logloss(scores: Floats, labels: Floats) -> float:
    """Binary cross-entropy of probabilities (clipped to ``[1e-15, 1 - 1e-15]``)."""
    if np.any((scores < 0) | (scores > 1)):
        raise ValueError("logloss needs predicted probabilities in [0, 1]")
    p = np.clip(scores, LOGLOSS_EPSILON, 1 - LOGLOSS_EPSILON)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def mse(scores: Floats, labels: Floats) -> float:
    return float(np.mean((scores - labels) ** 2))


def mae(scores: Floats, labels: Floats) -> float:
    return float(np.mean(np.abs(scores - labels)))


METRICS: dict[str, Callable[[Floats, Floats], float]] = {
    "auc": auc, "accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
    "logloss": logloss, "mse": mse, "mae": mae,
}
HIGHER_IS_BETTER: frozenset[str] = frozenset({"auc", "accuracy", "precision", "recall", "f1"})
BINARY_LABELS: frozenset[str] = frozenset({"auc", "accuracy", "precision", "recall", "f1", "logloss"})


def windowed_metric(metric: str, predictions: npt.ArrayLike, labels: npt.ArrayLike,
                    window: int) -> tuple[float, int]:
    """``metric`` over the last ``window`` labelled pairs: ``(value, pairs used)``.

    ``predictions`` and ``labels`` are aligned 1-d arrays, oldest first; a NaN label means "not labelled
    yet" and the pair is skipped before the window is taken. Classification metrics need 0/1 labels and
    take scores (or 0/1 predictions) thresholded at 0.5; ``auc`` and ``logloss`` use the scores themselves.
    """
    func = METRICS.get(metric)
    if func is None:
        raise ValueError(f"unknown accuracy metric {metric!r}; expected one of: {', '.join(METRICS)}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    scores, truth = _float_1d(predictions, "predictions"), _float_1d(labels, "labels")
    if scores.size != truth.size:
        raise ValueError(f"predictions ({scores.size}) and labels ({truth.size}) differ in length")
    labelled = ~np.isnan(truth)
    scores, truth = scores[labelled][-window:], truth[labelled][-window:]
    if truth.size == 0:
        raise InsufficientDataError(f"no labelled predictions to compute {metric} on")
    if not np.all(np.isfinite(scores)):
        raise ValueError("predictions contain NaN or inf")
    if metric in BINARY_LABELS and not np.all((truth == 0) | (truth == 1)):
        raise ValueError(f"{metric} needs labels that are 0 or 1")
    return func(scores, truth), int(truth.size)


def p95(latencies_ms: npt.ArrayLike) -> float:
    """95th percentile (linear interpolation) of latencies in milliseconds."""
    values = _float_1d(latencies_ms, "latencies")
    if values.size == 0:
        raise InsufficientDataError("no latencies recorded")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("latencies must be finite and >= 0")
    return float(np.percentile(values, 95))


# --- checks -------------------------------------------------------------------------------------------------


def evaluate_check(check: AnyCheck, reference: Mapping[str, npt.ArrayLike] | None,
                   current: Mapping[str, npt.ArrayLike] | None, predictions: npt.ArrayLike | None = None,
                   labels: npt.ArrayLike | None = None, latencies_ms: npt.ArrayLike | None = None, *,
                   reference_predictions: npt.ArrayLike | None = None,
                   drift_share: float = DEFAULT_DRIFT_SHARE) -> CheckResult:
    """Evaluate one monitor check on the samples it needs.

    ``reference``/``current``: column -> values (data drift). ``predictions``: the live predictions,
    oldest first (prediction drift, and accuracy with ``labels`` aligned to them). ``reference_predictions``:
    what the predictions are compared with for prediction drift. ``latencies_ms``: request latencies.
    A sample the check needs but is missing raises ``ValueError``; one that is empty raises
    :class:`runtime.monitor.drift.InsufficientDataError` (a ``ValueError`` too).
    """
    if isinstance(check, DataDriftCheck):
        if reference is None or current is None:
            raise ValueError("data_drift needs a reference sample (the monitor's `reference` dataset) "
                             "and a current sample")
        drift = dataset_drift(reference, current, check.method, check.threshold, check.columns,
                              drift_share=drift_share)
        first = drift.columns[0]
        detail = {"column_score_kind": first.score_kind, "column_threshold": first.threshold,
                  "column_drift_when": first.to_json()["drift_when"], **drift.to_json()}
        return CheckResult(type="data_drift", method=check.method, score=drift.share, score_kind="drift_share",
                           threshold=drift.drift_share, breach_when="score >= threshold", breached=drift.drifted,
                           detail=detail)
    if isinstance(check, PredictionDriftCheck):
        if reference_predictions is None or predictions is None:
            raise ValueError("prediction_drift needs reference_predictions and predictions")
        result = prediction_drift(reference_predictions, predictions, check.method, check.threshold)
        return CheckResult(type="prediction_drift", method=check.method, score=result.score,
                           score_kind=result.score_kind, threshold=result.threshold,
                           breach_when="score < threshold" if result.score_kind == "p_value" else "score >= threshold",
                           breached=result.drifted, detail=result.to_json())
    if isinstance(check, AccuracyCheck):
        if predictions is None or labels is None:
            raise ValueError("accuracy needs predictions and labels (fed back with `mlops monitor feedback`)")
        value, used = windowed_metric(check.metric, predictions, labels, check.window)
        return CheckResult(type="accuracy", method=check.metric, score=value, score_kind="metric",
                           threshold=check.min, breach_when="score < threshold", breached=value < check.min,
                           detail={"window": check.window, "n": used,
                                   "higher_is_better": check.metric in HIGHER_IS_BETTER})
    if isinstance(check, LatencyCheck):
        if latencies_ms is None:
            raise ValueError("latency needs latencies_ms")
        value = p95(latencies_ms)
        values = _float_1d(latencies_ms, "latencies")
        return CheckResult(type="latency", method="p95", score=value, score_kind="latency_ms",
                           threshold=check.p95_ms, breach_when="score > threshold", breached=value > check.p95_ms,
                           detail={"n": int(values.size), "p50_ms": float(np.percentile(values, 50)),
                                   "max_ms": float(values.max())})
    raise TypeError(f"not a monitor check: {type(check).__name__}")


def _float_1d(values: npt.ArrayLike, name: str) -> Floats:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    return arr
