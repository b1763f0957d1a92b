"""Generate ``data/transactions.csv`` for the churn example: one row per customer, with a churn label.

Deterministic: the same ``--seed`` gives the same bytes on every platform (stdlib ``random`` only,
values rounded before they are written). Usage::

    python examples/churn/generate_data.py [--out PATH] [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from datetime import date, timedelta
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "transactions.csv"
SNAPSHOT_DATE = date(2024, 6, 30)
COUNTRIES = (("DE", 0.30), ("FR", 0.22), ("ES", 0.14), ("IT", 0.13), ("NL", 0.09), ("PL", 0.07), ("SE", 0.05))
PLANS = (("basic", 0.5), ("plus", 0.35), ("premium", 0.15))
PLAN_PRICE = {"basic": 9.99, "plus": 19.99, "premium": 39.99}
COUNTRY_EFFECT = {"DE": -0.1, "FR": 0.1, "ES": 0.25, "IT": 0.2, "NL": -0.2, "PL": 0.3, "SE": -0.3}
COLUMNS = ("customer_id", "email", "country", "plan", "signup_date", "tenure_months", "amount",
           "transactions_30d", "support_tickets_90d", "days_since_last_login", "churned")


def _choice(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    point = rng.random()
    for value, weight in weighted:
        point -= weight
        if point < 0:
            return value
    return weighted[-1][0]


def _normal(rng: random.Random) -> float:
    """A standard normal draw by Box-Muller over ``random()`` (stable across Python versions)."""
    u1 = 1.0 - rng.random()
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * rng.random())


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's Poisson sampler (means here are small)."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def customer(rng: random.Random, index: int) -> dict[str, object]:
    """One customer row; ``churned`` follows a logistic model of the other columns plus noise."""
    country = _choice(rng, COUNTRIES)
    plan = _choice(rng, PLANS)
    tenure = 1 + min(71, int(-18.0 * math.log(1.0 - rng.random())))
    amount = PLAN_PRICE[plan] * math.exp(0.35 * _normal(rng)) + 2.0 * rng.random()
    engagement = math.exp(0.6 * _normal(rng))
    transactions = _poisson(rng, 6.0 * engagement)
    tickets = _poisson(rng, 0.6 + 0.8 * rng.random())
    last_login = min(90, int(-12.0 / engagement * math.log(1.0 - rng.random())))
    logit = (-1.5 - 0.045 * tenure + 0.09 * last_login - 0.12 * transactions + 0.55 * tickets
             + 0.015 * (amount - PLAN_PRICE[plan]) * 10 / PLAN_PRICE[plan]
             + {"basic": 0.3, "plus": 0.0, "premium": -0.4}[plan] + COUNTRY_EFFECT[country]
             + 0.5 * _normal(rng))
    churned = 1 if rng.random() < 1.0 / (1.0 + math.exp(-logit)) else 0
    signup = SNAPSHOT_DATE - timedelta(days=int(tenure * 30.4))
    return {
        "customer_id": f"C{index:05d}",
        "email": f"customer{index:05d}@example.com",
        "country": country,
        "plan": plan,
        "signup_date": signup.isoformat(),
        "tenure_months": tenure,
        "amount": f"{amount:.2f}",
        "transactions_30d": transactions,
        "support_tickets_90d": tickets,
        "days_since_last_login": last_login,
        "churned": churned,
    }


def generate(out: Path, rows: int = 2000, seed: int = 20240630) -> Path:
    """Write ``rows`` customers to ``out`` (parents created) and return it."""
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for index in range(1, rows + 1):
            writer.writerow(customer(rng, index))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20240630)
    args = parser.parse_args(argv)
    print(generate(args.out, args.rows, args.seed))


if __name__ == "__main__":
    main()
