"""Generate a synthetic, valid, policy-compliant spec with N of each resource kind (for benchmarks).

    python bench/gen_spec.py OUT_DIR --per-section 1000    # 5,000 resources

Half the datasets are source files (small CSVs), half are derived; every model trains on one
derived dataset and has a gate, a realtime deployment and a drift monitor.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

PIPELINE = '''"""Synthetic pipeline for benchmarks."""


def transform(ctx):
    (ctx.output_dir / "out.txt").write_text("x")


def train(ctx):
    return {"auc": 0.9}


def evaluate(ctx):
    return {"auc": 0.9}
'''


def spec_text(per_section: int, frameworks: list[str]) -> str:
    lines = [
        "apiVersion: mlops/v1",
        "project: synthetic",
        "owners: [team:ml-platform]",
        f"compliance: {{frameworks: [{', '.join(frameworks)}], risk: limited}}",
        "cluster:",
        "  provider: kuberay",
        "  namespace: ml-synthetic",
        "  head: {cpus: 2, memory: 8Gi}",
        "  workers:",
        "    cpu: {cpus: 8, memory: 32Gi, min: 1, max: 10}",
        "    gpu: {gpus: 1, gpu_type: nvidia-h100, cpus: 8, memory: 64Gi, min: 0, max: 4}",
        "storage:",
        "  artifacts: s3://synthetic-artifacts/mlops",
        "  state: .mlops/state.db",
        "  encryption: kms",
        "datasets:",
    ]
    sources = max(1, per_section // 2)
    for i in range(per_section):
        if i < sources:
            lines += [
                f"  src-{i}:",
                f"    path: data/src-{i % 50}.csv",
                "    schema: {amount: float, country: string, label: int}",
                "    pii: false",
                # S3 allows 1,000 lifecycle rules a bucket: half the sources expire, the rest are kept
                *(["    retention_days: 365"] if i % 2 == 0 else []),
                "    region: eu-west-1",
                "    access: [team:ml-platform]",
                f"    description: Source table {i}",
            ]
        else:
            lines += [
                f"  feat-{i}:",
                f"    from: [src-{i - sources}]",
                "    transform: pipeline:transform",
                f"    params: {{window_days: {i % 30 + 1}}}",
                "    schema: {amount: float, country: string, label: int}",
                "    region: eu-west-1",
                "    access: [team:ml-platform]",
                f"    description: Features {i}",
            ]
    derived = [f"feat-{i}" for i in range(sources, per_section)] or ["src-0"]
    lines.append("models:")
    for i in range(per_section):
        data = derived[i % len(derived)]
        lines += [
            f"  model-{i}:",
            "    train: pipeline:train",
            "    evaluate: pipeline:evaluate",
            f"    data: {{train: {data}, eval: {data}}}",
            f"    params: {{lr: 0.0{i % 9 + 1}, epochs: {i % 20 + 1}}}",
            "    seed: 7",
            "    retries: 1",
            f"    description: Model {i}",
            "    intended_use: Benchmarking",
            "    limitations: Synthetic",
        ]
    lines.append("gates:")
    for i in range(per_section):
        lines += [
            f"  gate-{i}:",
            f"    model: model-{i}",
            "    checks:",
            '      - {metric: auc, op: ">=", value: 0.8}',
            "      - {metric: auc, no_regression: 0.01}",
            "    approvals: {required: 1, from: [team:risk]}",
        ]
    lines.append("deployments:")
    for i in range(per_section):
        lines += [
            f"  deploy-{i}:",
            f"    model: model-{i}",
            f"    gates: [gate-{i}]",
            "    replicas: 2",
            f"    route: /m{i}",
        ]
    lines.append("monitors:")
    for i in range(per_section):
        ref = derived[i % len(derived)]
        lines += [
            f"  monitor-{i}:",
            f"    deployment: deploy-{i}",
            f"    reference: {ref}",
            "    schedule: 1h",
            "    checks:",
            "      - {type: data_drift, method: psi, threshold: 0.2, columns: [amount]}",
            "      - {type: accuracy, metric: auc, min: 0.75, window: 1000}",
            "    on_breach: [alert, retrain]",
        ]
    return "\n".join(lines) + "\n"


def generate(out: Path, per_section: int, frameworks: list[str] | None = None) -> Path:
    """Write the spec, its data files and pipeline module into ``out``; return the spec path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    for i in range(min(50, per_section)):
        (out / "data" / f"src-{i}.csv").write_text("amount,country,label\n" + f"{i}.5,DE,{i % 2}\n" * 20)
    (out / "pipeline.py").write_text(PIPELINE)
    spec = out / "mlops.yaml"
    spec.write_text(spec_text(per_section, frameworks if frameworks is not None else ["gdpr", "security"]))
    if not (out / ".git").exists():
        subprocess.run(["git", "init", "-q", str(out)], check=True)
    return spec


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-section", type=int, default=1000)
    args = parser.parse_args()
    print(generate(args.out, args.per_section))
