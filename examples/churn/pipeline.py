"""The churn example's callables: a feature transform, a trainer (a small torch MLP) and an evaluator.

``mlops.yaml`` names them as ``examples.churn.pipeline:build_features`` and so on; each receives a
:class:`runtime.context.RunContext`. Rows are split once, in the transform, by a hash of the
customer id (train / valid / test): the trainer fits on ``train`` and reports ``auc`` on ``valid``;
the evaluator reports the gate's metrics on ``test``, never on data the model was fitted to.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.context import RunContext, TrainResult

FEATURES_FILE = "features.csv"
LABEL = "churned"
COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "PL", "SE")
PLANS = ("basic", "plus", "premium")
NUMERIC = ("tenure_months", "amount", "transactions_30d", "support_tickets_90d", "days_since_last_login")
FEATURE_NAMES = (*NUMERIC, *(f"country_{c}" for c in COUNTRIES), *(f"plan_{p}" for p in PLANS))
SPLITS = ("train", "valid", "test")


# --- features ----------------------------------------------------------------------------------


def encode(row: dict[str, str]) -> list[float]:
    """One raw customer row -> its feature vector (fixed scaling, so serving needs no fitted state)."""
    numeric = [
        float(row["tenure_months"]) / 72.0,
        math.log1p(float(row["amount"])) / 4.0,
        math.log1p(float(row["transactions_30d"])) / 3.0,
        float(row["support_tickets_90d"]) / 3.0,
        float(row["days_since_last_login"]) / 90.0,
    ]
    countries = [1.0 if row["country"] == c else 0.0 for c in COUNTRIES]
    plans = [1.0 if row["plan"] == p else 0.0 for p in PLANS]
    return numeric + countries + plans


def split_of(key: str, valid_percent: int, test_percent: int) -> str:
    """A stable split for one row from a hash of its key: a customer always lands in the same split."""
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
    """Transform: raw customers (the one input) -> ``features.csv`` in ``ctx.output_dir``."""
    if len(ctx.inputs) != 1:
        raise ValueError(f"build_features takes one input, got {sorted(ctx.inputs)}")
    source = _csv_file(next(iter(ctx.inputs.values())))
    valid_percent = int(ctx.params.get("valid_percent", 15))
    test_percent = int(ctx.params.get("test_percent", 15))
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SPLITS, 0)
    with source.open(newline="", encoding="utf-8") as src, \
            (ctx.output_dir / FEATURES_FILE).open("w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(["customer_id", "split", *FEATURE_NAMES, LABEL])
        for row in csv.DictReader(src):
            split = split_of(row["customer_id"], valid_percent, test_percent)
            counts[split] += 1
            writer.writerow([row["customer_id"], split, *(f"{v:.6f}" for v in encode(row)), row[LABEL]])
    for split, count in counts.items():
        ctx.log_metric(f"rows_{split}", count)


def load_features(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix and labels of one split of a ``build_features`` output (a dir or the file)."""
    file = path / FEATURES_FILE if path.is_dir() else path
    with file.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    x = np.array([[float(r[name]) for name in FEATURE_NAMES] for r in rows], dtype=np.float32)
    y = np.array([float(r[LABEL]) for r in rows], dtype=np.float32)
    return x.reshape(len(rows), len(FEATURE_NAMES)), y


# --- model -------------------------------------------------------------------------------------


def make_model(inputs: int, hidden: int) -> nn.Sequential:
    """A one-hidden-layer MLP producing a logit."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def model_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Rebuild the MLP from its ``state_dict`` (sizes are read from the weights)."""
    hidden, inputs = state["0.weight"].shape
    model = make_model(int(inputs), int(hidden))
    model.load_state_dict(state)
    return model.eval()


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties given their average rank."""
    labels = np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


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
    """Churn probabilities for a feature matrix."""
    with torch.no_grad():
        logits = model.to(device)(torch.from_numpy(x).to(device)).squeeze(1)
    return np.asarray(torch.sigmoid(logits).cpu().numpy(), dtype=np.float64)


def _fit(ctx: RunContext, model: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
         x_valid: np.ndarray, y_valid: np.ndarray) -> float:
    """Mini-batch Adam on the training rows; logs ``loss`` and ``valid_auc`` per epoch; the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(ctx.params.get("lr", 0.01)),
                                 weight_decay=float(ctx.params.get("weight_decay", 1e-4)))
    loss_fn = nn.BCEWithLogitsLoss()
    features = torch.from_numpy(x_train).to(ctx.device)
    labels = torch.from_numpy(y_train).to(ctx.device)
    batch_size = int(ctx.params.get("batch_size", 64))
    shuffle = torch.Generator().manual_seed(ctx.seed)
    loss_value = float("nan")
    for epoch in range(int(ctx.params.get("epochs", 20))):
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
    """Fit the MLP on the ``train`` split; report the ``valid`` split's AUC as ``auc``.

    Params: ``lr``, ``epochs``, ``hidden``, ``batch_size``, ``weight_decay``.
    """
    ctx.seed_everything()
    x_train, y_train = load_features(ctx.input("train"), "train")
    x_valid, y_valid = load_features(ctx.inputs.get("eval", ctx.input("train")), "valid")
    model = make_model(x_train.shape[1], int(ctx.params.get("hidden", 32))).to(ctx.device)
    with _cpu_threads(ctx.device):
        loss = _fit(ctx, model, x_train, y_train, x_valid, y_valid)
        metrics = {"auc": auc(y_valid, predict(model, x_valid, ctx.device)),
                   "train_auc": auc(y_train, predict(model, x_train, ctx.device)),
                   "loss": loss}
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    # the input signature: the scaled feature columns (the endpoint refuses other rows with a 422)
    return TrainResult(model=state, metrics=metrics, signature={name: "float" for name in FEATURE_NAMES})


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
    """Metrics of ``ctx.model_path`` on the ``test`` split: auc, accuracy, log loss, churn rates."""
    if ctx.model_path is None:
        raise ValueError("evaluate needs ctx.model_path")
    model = model_from_state(_load_state(ctx.model_path))
    x, y = load_features(ctx.inputs.get("eval", ctx.input("train")), "test")
    p = predict(model, x, ctx.device)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    metrics = {
        "auc": auc(y, p),
        "accuracy": float(((p >= 0.5) == (y > 0.5)).mean()),
        "logloss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()),
        "churn_rate": float(y.mean()),
        "predicted_churn_rate": float((p >= 0.5).mean()),
        "rows": float(len(y)),
    }
    for name, value in metrics.items():
        ctx.log_metric(name, value)
    return metrics


def load_predictor(model_path: Path, params: dict[str, Any]) -> Callable[[list[dict[str, Any]]], list[float]]:
    """Serving: rows of feature columns (as in ``datasets.features``) -> churn probabilities."""
    model = model_from_state(_load_state(model_path))

    def predictor(rows: list[dict[str, Any]]) -> list[float]:
        if not rows:
            return []
        x = np.array([[float(row[name]) for name in FEATURE_NAMES] for row in rows], dtype=np.float32)
        return [float(p) for p in predict(model, x)]

    return predictor
