"""The fraud example's callables: a feature transform, a trainer (a torch MLP) and an evaluator.

``mlops.yaml`` names them as ``examples.fraud.pipeline:build_features`` and so on; each receives a
:class:`runtime.context.RunContext`. The transform serves both the labelled history (split by a
hash of the transaction id into train / valid / test) and the unlabelled incoming batch (every
row in split ``score``). Fraud is rare (about 5%), so the loss weighs positives by ``pos_weight``
and the metrics include average precision besides AUC.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.context import RunContext, TrainResult

FEATURES_FILE = "features.csv"
ID = "transaction_id"
LABEL = "is_fraud"
MERCHANTS = ("grocery", "restaurants", "fuel", "online_retail", "electronics", "travel", "jewelry",
             "online_gaming")
NUMERIC = ("amount", "card_present", "hour_sin", "hour_cos", "night", "distance_km", "transactions_1h",
           "account_age_days", "foreign")
FEATURE_NAMES = (*NUMERIC, *(f"merchant_{m}" for m in MERCHANTS))
SPLITS = ("train", "valid", "test")


# --- features ----------------------------------------------------------------------------------


def encode(row: dict[str, str]) -> list[float]:
    """One raw transaction -> its feature vector (fixed scaling, so serving needs no fitted state)."""
    hour = datetime.fromisoformat(row["timestamp"]).hour
    numeric = [
        math.log1p(float(row["amount"])) / 6.0,
        1.0 if row["card_present"] == "true" else 0.0,
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
        1.0 if hour < 6 else 0.0,
        math.log1p(float(row["distance_km"])) / 7.0,
        float(row["transactions_1h"]) / 3.0,
        math.log1p(float(row["account_age_days"])) / 8.0,
        1.0 if row["merchant_country"] != row["card_country"] else 0.0,
    ]
    return numeric + [1.0 if row["merchant_category"] == m else 0.0 for m in MERCHANTS]


def split_of(key: str, valid_percent: int, test_percent: int) -> str:
    """A stable split for one row from a hash of its id."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    return "valid" if bucket < test_percent + valid_percent else "train"


def _csv_file(path: Path) -> Path:
    """A dataset input is a CSV file or a directory holding exactly one."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.csv"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one CSV file in {path}, found {len(found)}")
    return found[0]


def build_features(ctx: RunContext) -> None:
    """Transform: raw transactions (the one input) -> ``features.csv`` in ``ctx.output_dir``.

    Labelled input keeps ``is_fraud`` and is split train / valid / test; unlabelled input is all ``score``.
    """
    if len(ctx.inputs) != 1:
        raise ValueError(f"build_features takes one input, got {sorted(ctx.inputs)}")
    source = _csv_file(next(iter(ctx.inputs.values())))
    valid_percent = int(ctx.params.get("valid_percent", 15))
    test_percent = int(ctx.params.get("test_percent", 15))
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with source.open(newline="", encoding="utf-8") as src, \
            (ctx.output_dir / FEATURES_FILE).open("w", newline="", encoding="utf-8") as dst:
        reader = csv.DictReader(src)
        labelled = LABEL in (reader.fieldnames or [])
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow([ID, "split", *FEATURE_NAMES, *([LABEL] if labelled else [])])
        for row in reader:
            split = split_of(row[ID], valid_percent, test_percent) if labelled else "score"
            counts[split] = counts.get(split, 0) + 1
            values = [f"{v:.6f}" for v in encode(row)]
            writer.writerow([row[ID], split, *values, *([row[LABEL]] if labelled else [])])
    for split, count in sorted(counts.items()):
        ctx.log_metric(f"rows_{split}", count)


def load_features(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix and labels of one split of a ``build_features`` output (a dir or the file)."""
    file = path / FEATURES_FILE if path.is_dir() else path
    with file.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    x = np.array([[float(r[name]) for name in FEATURE_NAMES] for r in rows], dtype=np.float32)
    y = np.array([float(r.get(LABEL) or "nan") for r in rows], dtype=np.float32)
    return x.reshape(len(rows), len(FEATURE_NAMES)), y


# --- model and metrics -------------------------------------------------------------------------


def make_model(inputs: int, hidden: int) -> nn.Sequential:
    """A two-hidden-layer MLP producing a logit."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def model_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Rebuild the MLP from its ``state_dict`` (sizes are read from the weights)."""
    hidden, inputs = state["0.weight"].shape
    model = make_model(int(inputs), int(hidden))
    model.load_state_dict(state)
    return model.eval()


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties given their average rank."""
    positive = np.asarray(labels) > 0.5
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (step-wise)."""
    positive = np.asarray(labels)[np.argsort(-np.asarray(scores), kind="stable")] > 0.5
    if not positive.any():
        return float("nan")
    precision = np.cumsum(positive) / np.arange(1, len(positive) + 1)
    return float(precision[positive].mean())


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The share of frauds caught when flagging at most ``fpr`` of the legitimate payments."""
    positive = np.asarray(labels) > 0.5
    negatives = np.sort(np.asarray(scores)[~positive])[::-1]
    allowed = int(math.floor(fpr * len(negatives)))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float((np.asarray(scores)[positive] > threshold).mean()) if positive.any() else float("nan")


@contextmanager
def _cpu_threads(device: str, threads: int = 1) -> Iterator[None]:
    """Tiny batches train fastest on one CPU thread: thread hand-offs cost more than the arithmetic."""
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(model: nn.Module, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Fraud probabilities for a feature matrix."""
    with torch.no_grad():
        logits = model.to(device)(torch.from_numpy(x).to(device)).squeeze(1)
    return np.asarray(torch.sigmoid(logits).cpu().numpy(), dtype=np.float64)


def _fit(ctx: RunContext, model: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
         x_valid: np.ndarray, y_valid: np.ndarray) -> float:
    """Mini-batch Adam, positives weighted by ``pos_weight``; logs ``loss`` and ``valid_auc`` per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(ctx.params.get("lr", 0.01)),
                                 weight_decay=float(ctx.params.get("weight_decay", 1e-4)))
    pos_weight = torch.tensor(float(ctx.params.get("pos_weight", 5.0)), device=ctx.device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    features = torch.from_numpy(x_train).to(ctx.device)
    labels = torch.from_numpy(y_train).to(ctx.device)
    batch_size = int(ctx.params.get("batch_size", 128))
    shuffle = torch.Generator().manual_seed(ctx.seed)
    loss_value = float("nan")
    for epoch in range(int(ctx.params.get("epochs", 15))):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(features), generator=shuffle).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(features[batch]).squeeze(1), labels[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        loss_value = total / len(features)
        model.eval()
        ctx.log_metric("loss", loss_value, epoch)
        ctx.log_metric("valid_auc", auc(y_valid, predict(model, x_valid, ctx.device)), epoch)
    return loss_value


def train(ctx: RunContext) -> TrainResult:
    """Fit the MLP on the ``train`` split; report the ``valid`` split's AUC (the sweep objective) as ``auc``.

    Params: ``lr``, ``hidden`` (swept), ``epochs``, ``batch_size``, ``pos_weight``, ``weight_decay``.
    """
    ctx.seed_everything()
    x_train, y_train = load_features(ctx.input("train"), "train")
    x_valid, y_valid = load_features(ctx.inputs.get("eval", ctx.input("train")), "valid")
    model = make_model(x_train.shape[1], int(ctx.params.get("hidden", 32))).to(ctx.device)
    with _cpu_threads(ctx.device):
        loss = _fit(ctx, model, x_train, y_train, x_valid, y_valid)
        scores = predict(model, x_valid, ctx.device)
    metrics = {"auc": auc(y_valid, scores), "average_precision": average_precision(y_valid, scores),
               "loss": loss}
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return TrainResult(model=state, metrics=metrics)


def _load_state(path: Path) -> dict[str, Any]:
    """A saved ``state_dict`` (the file, or the one ``.pt``/``.pth`` file in a directory)."""
    if path.is_dir():
        found = sorted([*path.glob("*.pt"), *path.glob("*.pth")])
        if len(found) != 1:
            raise FileNotFoundError(f"expected one model file in {path}, found {len(found)}")
        path = found[0]
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def evaluate(ctx: RunContext) -> dict[str, float]:
    """Metrics of ``ctx.model_path`` on the ``test`` split: auc, average precision, recall at 1% FPR."""
    if ctx.model_path is None:
        raise ValueError("evaluate needs ctx.model_path")
    model = model_from_state(_load_state(ctx.model_path))
    x, y = load_features(ctx.inputs.get("eval", ctx.input("train")), "test")
    p = predict(model, x, ctx.device)
    metrics = {
        "auc": auc(y, p),
        "average_precision": average_precision(y, p),
        "recall_at_1pct_fpr": recall_at_fpr(y, p, 0.01),
        "fraud_rate": float(y.mean()),
        "rows": float(len(y)),
    }
    for name, value in metrics.items():
        ctx.log_metric(name, value)
    return metrics


def load_predictor(model_path: Path, params: dict[str, Any]) -> Callable[[list[dict[str, Any]]], list[float]]:
    """Serving: rows of feature columns (as in ``datasets.features``) -> fraud probabilities."""
    model = model_from_state(_load_state(model_path))

    def predictor(rows: list[dict[str, Any]]) -> list[float]:
        if not rows:
            return []
        x = np.array([[float(row[name]) for name in FEATURE_NAMES] for row in rows], dtype=np.float32)
        return [float(p) for p in predict(model, x)]

    return predictor
