"""Drift and monitor-check statistics against hand-computed and scipy reference values."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from compiler.spec import AccuracyCheck, DataDriftCheck, LatencyCheck, PredictionDriftCheck
from runtime.monitor.checks import auc, evaluate_check, p95, windowed_metric
from runtime.monitor.drift import (
    DEFAULT_THRESHOLDS,
    PSI_EPSILON,
    InsufficientDataError,
    auto_method,
    column_drift,
    dataset_drift,
    default_threshold,
    frequency_table,
    is_drift,
    prediction_drift,
)

METHODS = ["psi", "ks", "js", "wasserstein", "chi2"]
CATEGORICAL_METHODS = ["psi", "js", "chi2"]


def normal(seed: int, n: int, loc: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, 1.0, n)


def categories(seed: int, n: int, p: list[float]) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(["a", "b", "c"]), size=n, p=p)


# --- defaults and directions ------------------------------------------------------------------------------


def test_default_thresholds_are_evidentlys() -> None:
    assert DEFAULT_THRESHOLDS == {"ks": 0.05, "chi2": 0.05, "wasserstein": 0.1, "js": 0.1, "psi": 0.1}
    assert default_threshold("psi") == 0.1
    # p-values drift below the threshold, distances at or above it
    assert is_drift("ks", 0.049, 0.05) and not is_drift("ks", 0.05, 0.05)
    assert is_drift("chi2", 0.01, 0.05) and not is_drift("chi2", 0.5, 0.05)
    for method in ("psi", "js", "wasserstein"):
        assert is_drift(method, 0.1, 0.1) and not is_drift(method, 0.0999, 0.1)
    with pytest.raises(ValueError, match="unknown drift method 'kl'"):
        default_threshold("kl")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_result_uses_default_threshold_and_states_score_kind(method: str) -> None:
    result = column_drift(normal(1, 300), normal(2, 300), method)  # type: ignore[arg-type]
    assert result.threshold == DEFAULT_THRESHOLDS[method]  # type: ignore[index]
    assert result.score_kind == ("p_value" if method in ("ks", "chi2") else "distance")
    assert result.to_json()["drift_when"] == ("score < threshold" if result.score_kind == "p_value"
                                              else "score >= threshold")
    explicit = column_drift(normal(1, 300), normal(2, 300), method, threshold=0.3)  # type: ignore[arg-type]
    assert explicit.threshold == 0.3 and explicit.score == result.score


# --- each method: same distribution vs shifted, numeric ------------------------------------------------


@pytest.mark.parametrize("method", ["psi", "js", "wasserstein"])
def test_numeric_same_distribution_does_not_drift(method: str) -> None:
    result = column_drift(normal(10, 5000), normal(11, 5000), method, column="x")  # type: ignore[arg-type]
    assert not result.drifted, result
    assert (result.column, result.kind, result.n_reference, result.n_current) == ("x", "numeric", 5000, 5000)


@pytest.mark.parametrize(("method", "kind"), [("ks", "numeric"), ("chi2", "numeric"), ("chi2", "categorical")])
def test_p_value_methods_false_alarm_about_five_percent(method: str, kind: str) -> None:
    # under no drift a p-value is (about) uniform: 5 % of same-distribution pairs drift at 0.05, by design
    rng = np.random.default_rng(123)
    if kind == "numeric":
        pairs = [(rng.normal(size=300), rng.normal(size=300)) for _ in range(200)]
    else:
        pairs = [(rng.choice(["a", "b", "c"], 300, p=[0.5, 0.3, 0.2]),
                  rng.choice(["a", "b", "c"], 300, p=[0.5, 0.3, 0.2])) for _ in range(200)]
    rate = np.mean([column_drift(ref, cur, method).drifted for ref, cur in pairs])  # type: ignore[arg-type]
    assert 0.01 <= rate <= 0.10, rate
    shifted = np.mean([column_drift(ref, cur + 0.5 if kind == "numeric" else np.where(cur == "c", "a", cur),
                                    method).drifted for ref, cur in pairs[:20]])  # type: ignore[arg-type]
    assert shifted == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_numeric_shifted_distribution_drifts(method: str) -> None:
    result = column_drift(normal(10, 1000), normal(11, 1000, loc=0.5), method)  # type: ignore[arg-type]
    assert result.drifted, result


def test_ks_matches_hand_computed_exact_p_value() -> None:
    # disjoint samples of 4 and 4: D = 1, exact two-sided p = 2 / C(8, 4)
    result = column_drift([1, 2, 3, 4], [5, 6, 7, 8], "ks")
    assert result.statistic == 1.0
    assert result.score == pytest.approx(2 / math.comb(8, 4))
    assert result.drifted


def test_ks_statistic_is_the_largest_ecdf_gap() -> None:
    ref, cur = normal(3, 200), normal(4, 150, loc=0.3)
    grid = np.concatenate([ref, cur])
    gap = max(abs(np.mean(ref <= x) - np.mean(cur <= x)) for x in grid)
    result = column_drift(ref, cur, "ks")
    assert result.statistic == pytest.approx(gap)
    assert result.score == pytest.approx(stats.ks_2samp(ref, cur).pvalue)


def test_wasserstein_is_normed_by_reference_std() -> None:
    # every quantile moves by 1: W = 1; std of [0, 1, 2, 3] (ddof 0) is sqrt(1.25)
    result = column_drift([0, 1, 2, 3], [1, 2, 3, 4], "wasserstein")
    assert result.score == pytest.approx(1 / math.sqrt(1.25))
    ref, cur = normal(5, 500), normal(6, 400, loc=0.2)
    assert column_drift(ref, cur, "wasserstein").score == pytest.approx(
        stats.wasserstein_distance(ref, cur) / np.std(ref))


def test_psi_on_quantile_bins_of_the_reference() -> None:
    ref = np.arange(100.0)  # deciles: ten inner bins of ten values each
    ref_counts, cur_counts = frequency_table(ref, ref + 1000.0, "numeric", n_bins=10)
    assert ref_counts.tolist() == [0] + [10] * 10 + [0]  # below the minimum, ten inner bins, above the maximum
    assert cur_counts.tolist() == [0] * 11 + [100]
    eps = PSI_EPSILON
    expected = 10 * (eps - 0.1) * math.log(eps / 0.1) + (1 - eps) * math.log(1 / eps)
    assert column_drift(ref, ref + 1000.0, "psi").score == pytest.approx(expected)
    assert column_drift(ref, ref, "psi").score == 0.0
    # the maximum of the reference falls in the last inner bin, values below the minimum in their own bin
    _, counts = frequency_table(ref, np.array([99.0, -5.0, 50.0]), "numeric", n_bins=10)
    assert counts.tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0]


def test_low_cardinality_numeric_is_counted_per_value() -> None:
    ref = np.array([0] * 50 + [1] * 50)
    cur = np.array([0] * 80 + [1] * 20)
    ref_counts, cur_counts = frequency_table(ref.astype(float), cur.astype(float), "numeric")
    assert ref_counts.tolist() == [50, 50] and cur_counts.tolist() == [80, 20]
    result = column_drift(ref, cur, "psi")
    assert result.score == pytest.approx(0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5))
    assert result.drifted


# --- categorical columns --------------------------------------------------------------------------------


def test_categorical_psi_js_chi2_match_hand_computed_values() -> None:
    ref = ["a"] * 50 + ["b"] * 50
    cur = ["a"] * 80 + ["b"] * 20
    psi = column_drift(ref, cur, "psi")
    assert psi.kind == "categorical"
    assert psi.score == pytest.approx(0.3 * math.log(1.6) + (-0.3) * math.log(0.4))

    m = [0.65, 0.35]
    kl_ref = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_cur = 0.8 * math.log(0.8 / m[0]) + 0.2 * math.log(0.2 / m[1])
    assert column_drift(ref, cur, "js").score == pytest.approx(math.sqrt((kl_ref + kl_cur) / 2))

    # 2 x 2 table [[50, 50], [80, 20]]: expected 65 / 35 in both rows; 1 degree of freedom
    statistic = 2 * (15**2 / 65 + 15**2 / 35)
    chi2 = column_drift(ref, cur, "chi2")
    assert chi2.statistic == pytest.approx(statistic)
    assert chi2.score == pytest.approx(math.erfc(math.sqrt(statistic / 2)))
    assert chi2.drifted and psi.drifted and column_drift(ref, cur, "js").drifted


@pytest.mark.parametrize("method", CATEGORICAL_METHODS)
def test_categorical_same_vs_shifted(method: str) -> None:
    ref = categories(20, 1000, [0.5, 0.3, 0.2])
    assert not column_drift(ref, categories(21, 1000, [0.5, 0.3, 0.2]), method).drifted  # type: ignore[arg-type]
    assert column_drift(ref, categories(22, 1000, [0.2, 0.3, 0.5]), method).drifted  # type: ignore[arg-type]


def test_new_category_in_current_counts_as_drift() -> None:
    ref = ["a"] * 60 + ["b"] * 40
    cur = ["a"] * 30 + ["b"] * 20 + ["z"] * 50
    ref_counts, cur_counts = frequency_table(np.array(ref), np.array(cur), "categorical")
    assert ref_counts.tolist() == [60, 40, 0] and cur_counts.tolist() == [30, 20, 50]
    for method in CATEGORICAL_METHODS:
        assert column_drift(ref, cur, method).drifted  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["ks", "wasserstein"])
def test_numeric_only_methods_refuse_categorical_columns(method: str) -> None:
    with pytest.raises(ValueError, match=f"drift method '{method}' needs a numeric column; 'city' is categorical"):
        column_drift(["x", "y"], ["x", "x"], method, column="city")  # type: ignore[arg-type]


def test_bools_are_categorical_and_object_numbers_are_numeric() -> None:
    assert column_drift(np.array([True, False] * 10), np.array([True] * 20), "chi2").kind == "categorical"
    result = column_drift(np.array([1.0, None, 2.0, 3.0] * 10, dtype=object), [1.5, 2.5, float("nan")], "ks")
    assert result.kind == "numeric" and (result.n_reference, result.n_current) == (30, 2)
    with pytest.raises(ValueError, match="numeric in the reference sample but categorical in the current"):
        column_drift([1.0, 2.0], ["a", "b"], "psi")


# --- constant and empty columns ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_constant_column_is_defined(method: str) -> None:
    same = column_drift(np.full(50, 3.0), np.full(40, 3.0), method)  # type: ignore[arg-type]
    assert math.isfinite(same.score) and not same.drifted
    assert same.score == (1.0 if same.score_kind == "p_value" else 0.0)
    moved = column_drift(np.full(50, 3.0), np.full(40, 4.0), method)  # type: ignore[arg-type]
    assert math.isfinite(moved.score) and moved.drifted
    json.dumps(moved.to_json(), allow_nan=False)


def test_constant_reference_wasserstein_uses_std_floor() -> None:
    assert column_drift(np.full(10, 1.0), np.full(10, 1.0005), "wasserstein").score == pytest.approx(0.5)


@pytest.mark.parametrize("method", METHODS)
def test_empty_current_sample_is_a_clear_error(method: str) -> None:
    with pytest.raises(InsufficientDataError, match="the current sample of column 'amount' is empty"):
        column_drift(normal(1, 10), [], method, column="amount")  # type: ignore[arg-type]
    with pytest.raises(InsufficientDataError, match="empty"):
        column_drift(normal(1, 10), [float("nan"), None], method, column="amount")  # type: ignore[arg-type]


# --- automatic choice -----------------------------------------------------------------------------------


def test_auto_method_follows_evidently() -> None:
    assert auto_method(normal(1, 1000), normal(2, 10)) == "ks"
    assert auto_method(normal(1, 1001), normal(2, 10)) == "wasserstein"
    assert auto_method([0, 1, 2] * 10, [1, 2]) == "chi2"  # numeric with at most 5 distinct values
    assert auto_method([0, 1, 2] * 400, [1, 2]) == "js"
    assert auto_method(["a", "b"] * 10, ["a"]) == "chi2"
    assert auto_method(["a", "b"] * 600, ["a"]) == "js"
    assert column_drift(normal(1, 100), normal(2, 100)).method == "ks"


# --- dataset and prediction drift ----------------------------------------------------------------------


def _four_columns(drifted: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    reference = {f"c{i}": normal(100 + i, 500) for i in range(4)}
    current = {f"c{i}": normal(200 + i, 500, loc=2.0 if i < drifted else 0.0) for i in range(4)}
    return reference, current


def test_dataset_drifts_when_half_the_columns_drift() -> None:
    reference, current = _four_columns(drifted=2)
    result = dataset_drift(reference, current, "psi")
    assert result.drifted_columns == ["c0", "c1"]
    assert result.share == 0.5 and result.drifted
    assert not dataset_drift(reference, current, "psi", drift_share=0.75).drifted
    reference, current = _four_columns(drifted=1)
    one = dataset_drift(reference, current, "psi")
    assert one.share == 0.25 and not one.drifted


def test_dataset_columns_default_to_shared_ones_and_must_exist() -> None:
    reference, current = _four_columns(drifted=1)
    current["only_current"] = normal(1, 10)
    assert [c.column for c in dataset_drift(reference, current, "ks").columns] == ["c0", "c1", "c2", "c3"]
    picked = dataset_drift(reference, current, "ks", columns=["c0"])
    assert [c.column for c in picked.columns] == ["c0"] and picked.drifted and picked.share == 1.0
    with pytest.raises(ValueError, match="column\\(s\\) 'only_current' not in the reference sample"):
        dataset_drift(reference, current, "ks", columns=["c0", "only_current"])
    with pytest.raises(ValueError, match="share no column"):
        dataset_drift({"a": [1.0]}, {"b": [1.0]}, "ks")


def test_prediction_drift() -> None:
    result = prediction_drift(normal(1, 800), normal(2, 800, loc=0.4), "ks")
    assert result.column == "prediction" and result.drifted
    assert not prediction_drift(normal(1, 800), normal(3, 800), "ks").drifted


# --- accuracy and latency ------------------------------------------------------------------------------


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_with_ties_matches_pairwise_count() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = (rng.integers(0, 6, 300) + labels).astype(float)  # few distinct scores: many ties
    assert auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))
    assert auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.875)
    with pytest.raises(InsufficientDataError, match="both classes"):
        auc(np.array([0.2, 0.3]), np.array([1.0, 1.0]))


def test_classification_and_error_metrics_by_hand() -> None:
    scores = [0.9, 0.6, 0.4, 0.2, 0.7]
    labels = [1, 0, 1, 0, 1]  # predicted 1,1,0,0,1 -> tp 2, fp 1, fn 1, tn 1
    assert windowed_metric("accuracy", scores, labels, 10) == (pytest.approx(3 / 5), 5)
    assert windowed_metric("precision", scores, labels, 10)[0] == pytest.approx(2 / 3)
    assert windowed_metric("recall", scores, labels, 10)[0] == pytest.approx(2 / 3)
    assert windowed_metric("f1", scores, labels, 10)[0] == pytest.approx(2 / 3)
    expected_logloss = -np.mean([math.log(0.9), math.log(0.4), math.log(0.4), math.log(0.8), math.log(0.7)])
    assert windowed_metric("logloss", scores, labels, 10)[0] == pytest.approx(expected_logloss)
    assert windowed_metric("mse", [1.0, 3.0], [2.0, 1.0], 10)[0] == pytest.approx(2.5)
    assert windowed_metric("mae", [1.0, 3.0], [2.0, 1.0], 10)[0] == pytest.approx(1.5)
    assert windowed_metric("precision", [0.1, 0.2], [1, 0], 10)[0] == 0.0  # nothing predicted positive
    assert windowed_metric("accuracy", [0.5, 0.49], [1, 0], 10)[0] == 1.0  # a score of 0.5 is the positive class
    with pytest.raises(ValueError, match="unknown accuracy metric 'rmse'; expected one of: auc"):
        windowed_metric("rmse", [0.1], [1], 10)
    with pytest.raises(ValueError, match="labels that are 0 or 1"):
        windowed_metric("auc", [0.1, 0.2], [2, 0], 10)


def test_window_takes_the_last_labelled_pairs() -> None:
    scores = [0.9, 0.8, 0.1, 0.2, 0.7]
    labels = [0.0, 0.0, float("nan"), 0.0, 1.0]  # the unlabelled third pair is skipped
    value, used = windowed_metric("accuracy", scores, labels, 2)
    assert (value, used) == (1.0, 2)  # pairs (0.2, 0) and (0.7, 1)
    assert windowed_metric("accuracy", scores, labels, 1000) == (pytest.approx(0.5), 4)
    with pytest.raises(InsufficientDataError, match="no labelled predictions"):
        windowed_metric("auc", [0.3], [float("nan")], 10)
    with pytest.raises(ValueError, match="differ in length"):
        windowed_metric("auc", [0.3, 0.4], [1.0], 10)


def test_p95_is_linear_percentile() -> None:
    latencies = np.arange(1.0, 101.0)  # rank 0.95 * 99 = 94.05 between 95 and 96
    assert p95(latencies) == pytest.approx(95.05)
    assert p95([12.0]) == 12.0
    with pytest.raises(InsufficientDataError, match="no latencies"):
        p95([])
    with pytest.raises(ValueError, match="finite and >= 0"):
        p95([1.0, -2.0])


# --- evaluate_check on the spec's models ---------------------------------------------------------------


def test_evaluate_data_drift_check() -> None:
    reference, current = _four_columns(drifted=2)
    check = DataDriftCheck.model_validate({"type": "data_drift", "method": "psi", "threshold": 0.2,
                                           "columns": ["c0"]})
    result = evaluate_check(check, reference, current)
    assert (result.type, result.method, result.score_kind, result.breach_when) == (
        "data_drift", "psi", "drift_share", "score >= threshold")
    assert result.breached and result.score == 1.0 and result.threshold == 0.5
    assert result.detail["column_threshold"] == 0.2 and result.detail["column_score_kind"] == "distance"
    assert list(result.detail["columns"]) == ["c0"]
    all_columns = evaluate_check(DataDriftCheck.model_validate({"type": "data_drift", "method": "ks"}),
                                 reference, current)
    assert all_columns.score == 0.5 and all_columns.breached
    assert all_columns.detail["column_threshold"] == 0.05
    assert json.loads(json.dumps(all_columns.to_json(), allow_nan=False))["detail"]["drifted_columns"] == ["c0", "c1"]
    with pytest.raises(ValueError, match="data_drift needs a reference sample"):
        evaluate_check(check, None, current)


def test_evaluate_prediction_drift_check() -> None:
    check = PredictionDriftCheck.model_validate({"type": "prediction_drift", "method": "ks", "threshold": 0.05})
    drifted = evaluate_check(check, None, None, predictions=normal(2, 500, loc=0.5),
                             reference_predictions=normal(1, 500))
    assert drifted.breached and drifted.score_kind == "p_value" and drifted.breach_when == "score < threshold"
    assert drifted.score < 0.05 and drifted.detail["column"] == "prediction"
    js = PredictionDriftCheck.model_validate({"type": "prediction_drift", "method": "js"})
    same = evaluate_check(js, None, None, predictions=normal(2, 2000), reference_predictions=normal(1, 2000))
    assert not same.breached and same.threshold == 0.1 and same.breach_when == "score >= threshold"
    with pytest.raises(ValueError, match="reference_predictions"):
        evaluate_check(check, None, None, predictions=[0.1])


def test_evaluate_accuracy_check() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 3000).astype(float)
    good = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 3000), 0, 1)
    check = AccuracyCheck.model_validate({"type": "accuracy", "metric": "auc", "min": 0.75, "window": 1000})
    ok = evaluate_check(check, None, None, predictions=good, labels=labels)
    assert not ok.breached and ok.score == pytest.approx(auc(good[-1000:], labels[-1000:]))
    assert ok.detail == {"window": 1000, "n": 1000, "higher_is_better": True}
    noisy = rng.random(3000)
    bad = evaluate_check(check, None, None, predictions=noisy, labels=labels)
    assert bad.breached and bad.breach_when == "score < threshold" and bad.score < 0.75
    mse = AccuracyCheck.model_validate({"type": "accuracy", "metric": "mse", "min": 0.5})
    assert evaluate_check(mse, None, None, predictions=[0.0], labels=[0.0]).detail["higher_is_better"] is False


def test_evaluate_latency_check() -> None:
    latencies = np.arange(1.0, 101.0)
    under = evaluate_check(LatencyCheck.model_validate({"type": "latency", "p95_ms": 95.05}), None, None,
                           latencies_ms=latencies)
    assert not under.breached and under.score == pytest.approx(95.05) and under.breach_when == "score > threshold"
    over = evaluate_check(LatencyCheck.model_validate({"type": "latency", "p95_ms": 95}), None, None,
                          latencies_ms=latencies)
    assert over.breached and over.detail["n"] == 100 and over.detail["max_ms"] == 100.0
