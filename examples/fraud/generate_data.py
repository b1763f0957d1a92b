"""Generate the fraud example's data: ``transactions.csv`` (labelled history) and ``incoming.csv``
(new, unlabelled transactions that the nightly batch deployment scores).

Deterministic: the same ``--seed`` gives the same bytes on every platform (stdlib ``random`` only,
values rounded before they are written). Usage::

    python examples/fraud/generate_data.py [--out DIR] [--rows N] [--incoming-rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "data"
START = datetime(2024, 5, 1)
MERCHANTS = (("grocery", 0.28), ("restaurants", 0.18), ("fuel", 0.12), ("online_retail", 0.17),
             ("electronics", 0.09), ("travel", 0.07), ("jewelry", 0.04), ("online_gaming", 0.05))
MERCHANT_RISK = {"grocery": -0.9, "restaurants": -0.6, "fuel": -0.3, "online_retail": 0.3,
                 "electronics": 0.8, "travel": 0.4, "jewelry": 1.0, "online_gaming": 1.2}
COUNTRIES = (("DE", 0.3), ("FR", 0.22), ("ES", 0.15), ("IT", 0.15), ("NL", 0.1), ("BE", 0.08))
COLUMNS = ("transaction_id", "card_id", "timestamp", "amount", "merchant_category", "merchant_country",
           "card_country", "card_present", "distance_km", "transactions_1h", "account_age_days")
LABEL = "is_fraud"


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


def transaction(rng: random.Random, prefix: str, index: int) -> dict[str, object]:
    """One card payment; ``is_fraud`` follows a logistic model of the other columns plus noise."""
    merchant = _choice(rng, MERCHANTS)
    card_country = _choice(rng, COUNTRIES)
    foreign = rng.random() < 0.12
    merchant_country = _choice(rng, COUNTRIES) if foreign else card_country
    online = merchant.startswith("online")
    card_present = not online and rng.random() < 0.85
    when = START + timedelta(seconds=int(rng.random() * 30 * 86400))
    amount = math.exp(3.2 + 1.1 * _normal(rng))
    distance = 0.0 if not card_present else -15.0 * math.log(1.0 - rng.random()) + (600.0 if foreign else 0.0)
    velocity = _poisson(rng, 0.4)
    age_days = 1 + int(-900.0 * math.log(1.0 - rng.random()))
    night = when.hour < 6
    logit = (-4.0 + 1.2 * MERCHANT_RISK[merchant] + (0.0 if card_present else 1.5) + (1.3 if night else 0.0)
             + 0.8 * (math.log(amount) - 3.2) + 0.5 * math.log1p(distance / 50.0) + 0.8 * velocity
             - 0.5 * math.log1p(age_days / 30.0) + 1.2 * (merchant_country != card_country)
             + 0.3 * _normal(rng))
    fraud = 1 if rng.random() < 1.0 / (1.0 + math.exp(-logit)) else 0
    return {
        "transaction_id": f"{prefix}{index:06d}",
        "card_id": f"card-{rng.getrandbits(32):08x}",
        "timestamp": when.isoformat(),
        "amount": f"{amount:.2f}",
        "merchant_category": merchant,
        "merchant_country": merchant_country,
        "card_country": card_country,
        "card_present": "true" if card_present else "false",
        "distance_km": f"{distance:.1f}",
        "transactions_1h": velocity,
        "account_age_days": age_days,
        LABEL: fraud,
    }


def _write(out: Path, rows: list[dict[str, object]], columns: tuple[str, ...]) -> None:
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def generate(out_dir: Path, rows: int = 5000, incoming_rows: int = 500, seed: int = 20240501) -> list[Path]:
    """Write ``transactions.csv`` and ``incoming.csv`` into ``out_dir`` and return their paths."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = [transaction(rng, "T", i) for i in range(1, rows + 1)]
    incoming = [transaction(rng, "N", i) for i in range(1, incoming_rows + 1)]
    paths = [out_dir / "transactions.csv", out_dir / "incoming.csv"]
    _write(paths[0], history, (*COLUMNS, LABEL))
    _write(paths[1], incoming, COLUMNS)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory to write both files into (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--incoming-rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args(argv)
    for path in generate(args.out, args.rows, args.incoming_rows, args.seed):
        print(path)


if __name__ == "__main__":
    main()
