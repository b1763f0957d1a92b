"""Drift statistics: a reference sample against a current one, per column and for a dataset.

Pure functions on numpy arrays (no Ray, no state). Five methods, each with an Evidently-like default
threshold and an explicit direction:

======================  ==========  =======  ===============================================
method                  score       default  the column drifts when
======================  ==========  =======  ===============================================
``ks``                  p-value     0.05     ``score < threshold`` (``scipy.stats.ks_2samp``)
``chi2``                p-value     0.05     ``score < threshold`` (``scipy.stats.chi2_contingency``)
``wasserstein``         distance    0.1      ``score >= threshold`` (normed by the reference std)
``js``                  distance    0.1      ``score >= threshold`` (Jensen-Shannon distance)
``psi``                 distance    0.1      ``score >= threshold`` (population stability index)
======================  ==========  =======  ===============================================

Columns are *numeric* (int/float, or an object array holding only numbers) or *categorical*
(strings, bools, anything else). ``ks`` and ``wasserstein`` need numeric columns; ``psi``, ``js`` and
``chi2`` work on both. For them a numeric column is turned into frequencies: a column whose reference has
at most :data:`DISCRETE_MAX_VALUES` distinct values is counted per value (like a categorical one); any
other is cut into ``n_bins`` quantile bins of the reference, plus one open bin below the reference
minimum and one above its maximum. Categorical frequencies are over the union of the values seen in
either sample.

Missing values (``None``, NaN, and for numeric columns ±inf) are dropped; a sample left empty raises
:class:`InsufficientDataError`. Constant columns are well defined: a constant reference is counted as
one value, Wasserstein divides by ``max(std, 0.001)`` (as Evidently does), and identical constant samples
score "no drift" under every method (p-value 1, distance 0).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

DriftMethod = Literal["psi", "ks", "js", "wasserstein", "chi2"]
ScoreKind = Literal["p_value", "distance"]
ColumnKind = Literal["numeric", "categorical"]

METHODS: tuple[DriftMethod, ...] = get_args(DriftMethod)
SCORE_KIND: dict[DriftMethod, ScoreKind] = {
    "ks": "p_value", "chi2": "p_value", "wasserstein": "distance", "js": "distance", "psi": "distance",
}
DEFAULT_THRESHOLDS: dict[DriftMethod, float] = {"ks": 0.05, "chi2": 0.05, "wasserstein": 0.1, "js": 0.1, "psi": 0.1}
NUMERIC_ONLY: frozenset[DriftMethod] = frozenset({"ks", "wasserstein"})
DEFAULT_DRIFT_SHARE = 0.5
"""A dataset drifts when at least this share of its columns drift."""
PSI_EPSILON = 1e-4
"""Proportion given to an empty bin in PSI (instead of 0, whose log is undefined); not renormalised."""
WASSERSTEIN_MIN_NORM = 1e-3
"""Floor of the reference standard deviation Wasserstein is divided by (a constant reference has 0)."""
DISCRETE_MAX_VALUES = 20
"""A numeric reference with at most this many distinct values is counted per value, not binned."""
DEFAULT_BINS = 10


class InsufficientDataError(ValueError):
    """A sample has too little data for the statistic (empty, or e.g. one class only for AUC)."""


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column. ``score_kind`` says how to read ``score``: a ``p_value`` drifts when it is
    below ``threshold``, a ``distance`` when it is at or above it."""

    column: str
    method: DriftMethod
    kind: ColumnKind
    score: float
    score_kind: ScoreKind
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int
    statistic: float | None = None
    """The test statistic behind a p-value (KS D, Pearson chi-square); ``None`` for distances."""

    def to_json(self) -> dict[str, Any]:
        rule = "score < threshold" if self.score_kind == "p_value" else "score >= threshold"
        return {"column": self.column, "method": self.method, "kind": self.kind, "score": self.score,
                "score_kind": self.score_kind, "drift_when": rule, "threshold": self.threshold,
                "drifted": self.drifted, "n_reference": self.n_reference, "n_current": self.n_current,
                "statistic": self.statistic}


@dataclass(frozen=True)
class DatasetDrift:
    """Drift of a set of columns: it drifts when ``share >= drift_share``."""

    columns: tuple[ColumnDrift, ...]
    share: float
    drift_share: float
    drifted: bool

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_json(self) -> dict[str, Any]:
        return {"share": self.share, "drift_share": self.drift_share, "drifted": self.drifted,
                "drifted_columns": self.drifted_columns, "n_columns": len(self.columns),
                "columns": {c.column: c.to_json() for c in self.columns}}


def default_threshold(method: DriftMethod) -> float:
    """The threshold used when a check gives none (see the module table)."""
    return DEFAULT_THRESHOLDS[_known(method)]


def is_drift(method: DriftMethod, score: float, threshold: float) -> bool:
    """Whether ``score`` means drift: p-values below ``threshold``, distances at or above it."""
    return score < threshold if SCORE_KIND[_known(method)] == "p_value" else score >= threshold


def auto_method(reference: npt.ArrayLike, current: npt.ArrayLike) -> DriftMethod:
    """Evidently's automatic choice, restricted to the five methods here.

    Reference of at most 1000 values: numeric with more than 5 distinct values (both samples) -> ``ks``,
    else ``chi2`` (Evidently uses a z-test for 2 values; ``chi2`` stands in). Larger reference: numeric
    with more than 5 distinct values -> ``wasserstein``, else ``js``. Categorical: ``chi2`` when the
    reference has at most 1000 values, ``js`` otherwise.
    """
    ref, cur, kind = _prepare_pair("value", reference, current)
    n_values = np.unique(np.concatenate([ref, cur])).size
    if ref.size <= 1000:
        return "ks" if kind == "numeric" and n_values > 5 else "chi2"
    return "wasserstein" if kind == "numeric" and n_values > 5 else "js"


def column_drift(reference: npt.ArrayLike, current: npt.ArrayLike, method: DriftMethod | None = None,
                 threshold: float | None = None, *, column: str = "value", n_bins: int = DEFAULT_BINS) -> ColumnDrift:
    """Drift of one column between two 1-d samples.

    ``method=None`` picks one with :func:`auto_method`; ``threshold=None`` takes the method's default.
    Raises ``ValueError`` for a method that does not fit the column (``ks``/``wasserstein`` on a
    categorical column), and :class:`InsufficientDataError` for an empty sample.
    """
    ref, cur, kind = _prepare_pair(column, reference, current)
    chosen: DriftMethod = auto_method(ref, cur) if method is None else _known(method)
    limit = default_threshold(chosen) if threshold is None else float(threshold)
    if not np.isfinite(limit) or limit < 0:
        raise ValueError(f"threshold of column {column!r} must be a finite number >= 0, got {threshold!r}")
    if chosen in NUMERIC_ONLY and kind != "numeric":
        raise ValueError(f"drift method {chosen!r} needs a numeric column; {column!r} is categorical "
                         "(use psi, js or chi2, or list the numeric columns)")
    statistic: float | None = None
    if chosen == "ks":
        ks = ks_2samp(ref, cur)
        score, statistic = float(ks.pvalue), float(ks.statistic)
    elif chosen == "wasserstein":
        score = float(wasserstein_distance(ref, cur)) / max(float(np.std(ref)), WASSERSTEIN_MIN_NORM)
    else:
        ref_counts, cur_counts = frequency_table(ref, cur, kind, n_bins)
        if chosen == "psi":
            score = psi(ref_counts, cur_counts)
        elif chosen == "js":
            score = js_distance(ref_counts, cur_counts)
        else:
            score, statistic = chi2_homogeneity(ref_counts, cur_counts)
    return ColumnDrift(column=column, method=chosen, kind=kind, score=score, score_kind=SCORE_KIND[chosen],
                       threshold=limit, drifted=is_drift(chosen, score, limit), n_reference=int(ref.size),
                       n_current=int(cur.size), statistic=statistic)


def dataset_drift(reference: Mapping[str, npt.ArrayLike], current: Mapping[str, npt.ArrayLike],
                  method: DriftMethod | None = None, threshold: float | None = None,
                  columns: Iterable[str] | None = None, *, drift_share: float = DEFAULT_DRIFT_SHARE,
                  n_bins: int = DEFAULT_BINS) -> DatasetDrift:
    """Per-column drift of ``columns`` (default: every column in both samples, in ``current``'s order);
    the dataset drifts when the share of drifted columns is at least ``drift_share``."""
    if not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share!r}")
    if columns is None:
        names = [name for name in current if name in reference]
        if not names:
            raise ValueError("reference and current samples share no column")
    else:
        names = list(dict.fromkeys(columns))
        if not names:
            raise ValueError("columns is empty; leave it out to check every shared column")
        for side, sample in (("reference", reference), ("current", current)):
            missing = [name for name in names if name not in sample]
            if missing:
                raise ValueError(f"column(s) {', '.join(map(repr, missing))} not in the {side} sample "
                                 f"(it has: {', '.join(map(repr, sample)) or 'nothing'})")
    results = tuple(column_drift(reference[name], current[name], method, threshold, column=name, n_bins=n_bins)
                    for name in names)
    share = sum(r.drifted for r in results) / len(results)
    return DatasetDrift(columns=results, share=share, drift_share=drift_share, drifted=share >= drift_share)


def prediction_drift(reference: npt.ArrayLike, current: npt.ArrayLike, method: DriftMethod | None = None,
                     threshold: float | None = None, *, n_bins: int = DEFAULT_BINS) -> ColumnDrift:
    """Drift of a model's predictions (a 1-d array: scores, or class labels) — :func:`column_drift`
    on the column ``prediction``."""
    return column_drift(reference, current, method, threshold, column="prediction", n_bins=n_bins)


# --- the statistics on frequencies ----------------------------------------------------------------------


def frequency_table(ref: npt.NDArray[Any], cur: npt.NDArray[Any], kind: ColumnKind,
                    n_bins: int = DEFAULT_BINS) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Counts of both samples over the same bins (see the module docstring for how bins are made)."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    if kind == "categorical" or np.unique(ref).size <= DISCRETE_MAX_VALUES:
        keys = np.union1d(ref, cur)
        return _count_keys(keys, ref), _count_keys(keys, cur)
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, n_bins + 1)))
    return _count_bins(edges, ref), _count_bins(edges, cur)


def psi(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index ``sum((c - r) * ln(c / r))`` over proportions, empty bins at ``epsilon``."""
    r, c = _proportions(ref_counts), _proportions(cur_counts)
    r, c = np.where(r == 0, epsilon, r), np.where(c == 0, epsilon, c)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (natural log, so in ``[0, sqrt(ln 2)]``), as Evidently computes it."""
    value = float(jensenshannon(_proportions(ref_counts), _proportions(cur_counts)))
    return 0.0 if np.isnan(value) else value  # sqrt of a rounding-negative divergence of equal inputs


def chi2_homogeneity(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike) -> tuple[float, float]:
    """Pearson chi-square test that both samples come from one distribution: ``(p_value, statistic)``.

    A 2 x k contingency table without continuity correction; bins empty in both samples are dropped,
    and a single remaining bin means identical distributions (p-value 1).
    """
    table = np.vstack([np.asarray(ref_counts, dtype=float), np.asarray(cur_counts, dtype=float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0, 0.0
    result = chi2_contingency(table, correction=False)
    return float(result.pvalue), float(result.statistic)


# --- input preparation -------------------------------------------------------------------------------------


def _known(method: str) -> DriftMethod:
    if method not in SCORE_KIND:
        raise ValueError(f"unknown drift method {method!r}; expected one of: {', '.join(METHODS)}")
    return cast(DriftMethod, method)


def _prepare_pair(column: str, reference: npt.ArrayLike,
                  current: npt.ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any], ColumnKind]:
    ref, ref_kind = _prepare(column, "reference", reference)
    cur, cur_kind = _prepare(column, "current", current)
    if ref_kind != cur_kind:
        raise ValueError(f"column {column!r} is {ref_kind} in the reference sample but {cur_kind} in the current one")
    return ref, cur, ref_kind


def _prepare(column: str, side: str, values: npt.ArrayLike) -> tuple[npt.NDArray[Any], ColumnKind]:
    """A clean 1-d array (missing values dropped): floats for a numeric column, strings otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"the {side} sample of column {column!r} must be 1-d, got shape {arr.shape}")
    kind: ColumnKind
    if arr.dtype.kind in "iuf":
        out, kind = arr.astype(float), "numeric"
        out = out[np.isfinite(out)]
    elif arr.dtype.kind in "bUS":
        out, kind = arr.astype(str), "categorical"
    elif arr.dtype.kind == "O":
        present = [v for v in arr.tolist() if not _missing(v)]
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in present):
            out, kind = np.asarray(present, dtype=float), "numeric"
            out = out[np.isfinite(out)]
        else:
            out, kind = np.asarray([str(v) for v in present], dtype=str), "categorical"
    else:
        raise ValueError(f"column {column!r} has unsupported dtype {arr.dtype} for drift")
    if out.size == 0:
        raise InsufficientDataError(f"the {side} sample of column {column!r} is empty "
                                    "(after dropping missing values)")
    return out, kind


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and bool(np.isnan(value)))


def _count_keys(keys: npt.NDArray[Any], values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    found, counts = np.unique(values, return_counts=True)
    out = np.zeros(keys.size, dtype=np.int64)
    out[np.searchsorted(keys, found)] = counts
    return out


def _count_bins(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts over: below ``edges[0]``, the inner bins ``[e_i, e_i+1)`` (the last one closed), above ``edges[-1]``."""
    index = np.searchsorted(edges[1:-1], values, side="right") + 1
    index[values < edges[0]] = 0
    index[values > edges[-1]] = edges.size
    return np.bincount(index, minlength=edges.size + 1).astype(np.int64)


def _proportions(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(counts, dtype=float)
    total = arr.sum()
    if total <= 0:
        raise InsufficientDataError("a frequency table with no counts")
    return arr / total
