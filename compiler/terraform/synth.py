"""The pass: :func:`blueprint` (a project -> plain data) and :func:`synthesize` (-> files on disk)."""

from __future__ import annotations

import json
from pathlib import Path

from compiler.resolve import Project
from compiler.terraform.gcs import add_gcs_bucket
from compiler.terraform.kuberay import MANIFESTS_CHART, MANIFESTS_CHART_FILES, MANIFESTS_CHART_PATH, add_cluster
from compiler.terraform.model import Blueprint
from compiler.terraform.s3 import add_s3_bucket
from compiler.terraform.stack import TERRAFORM_FILE, render
from compiler.terraform.storage import storage_location


def blueprint(project: Project) -> Blueprint:
    """The Terraform a project needs, as plain data (no cdktf, no Node)."""
    plan = Blueprint()
    location = storage_location(project)
    if project.spec.cluster.provider == "kuberay":
        add_cluster(project, plan, gke=location is not None and location[0] == "gs")
    if location is not None:
        (add_s3_bucket if location[0] == "s3" else add_gcs_bucket)(project, plan, location[1])
    return plan


def synthesize(project: Project, out_dir: Path) -> list[Path]:
    """Write ``out_dir/cdk.tf.json`` and, for KubeRay, the chart :data:`MANIFESTS_CHART` in
    ``out_dir/charts/``; returns the files written, ``cdk.tf.json`` first (none for a local-only project).
    Each file is replaced atomically; files of an earlier compile that this one does not write are removed."""
    plan = blueprint(project)
    target = out_dir / TERRAFORM_FILE
    chart = out_dir / "charts" / MANIFESTS_CHART
    uses_chart = any(block.body.get("chart") == MANIFESTS_CHART_PATH for block in plan.blocks)
    if not plan.blocks:
        target.unlink(missing_ok=True)
        _remove_chart(chart)
        return []
    text = json.dumps(render(plan), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    written = [target]
    if uses_chart:
        for name, content in MANIFESTS_CHART_FILES.items():
            _write_file(chart / name, content)
            written.append(chart / name)
    else:
        _remove_chart(chart)
    _write_file(target, text)
    return written


def _write_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (mode from the umask, as any new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _remove_chart(chart: Path) -> None:
    """Remove the files of :data:`MANIFESTS_CHART` and then the folders they leave empty (nothing else)."""
    for name in MANIFESTS_CHART_FILES:
        (chart / name).unlink(missing_ok=True)
    for folder in (chart / "templates", chart, chart.parent):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: someone else's files
            break
