"""``mlops init``: write a small, working starter project (spec and its JSON Schema, data, pipeline, README, CI
workflow)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from compiler.errors import MlopsError, Position
from compiler.repository import find_root
from compiler.schema_export import render as render_schema

TEMPLATES = Path(__file__).resolve().parent / "starter_files"
ROWS = 600
WORKFLOW_TEMPLATE = "github-workflow.yml.tmpl"
README_TEMPLATE = "README.md.tmpl"
SCHEMA_FILE = "mlops.schema.json"
"""The spec's JSON Schema (``mlops schema``), written beside it: its editor modeline names it."""
WORKFLOW_SPEC_LINE = "  MLOPS_SPEC: mlops.yaml\n"


def _project_name(directory: Path, name: str | None) -> str:
    raw = (name or directory.resolve().name).lower()
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", raw).strip("-_") or "project"
    return cleaned if cleaned[0].isalpha() else f"p-{cleaned}"[:63]


def _customers_csv(seed: int = 7) -> str:
    """A deterministic synthetic churn table: short tenure, high spend and many support calls churn."""
    rng = random.Random(seed)
    lines = ["tenure_months,monthly_spend,support_calls,churned"]
    for _ in range(ROWS):
        tenure = rng.randint(1, 72)
        spend = round(rng.uniform(10, 120), 2)
        calls = rng.randint(0, 8)
        score = -1.5 - 0.05 * tenure + 0.02 * spend + 0.45 * calls + rng.gauss(0, 0.8)
        lines.append(f"{tenure},{spend},{calls},{int(score > 0)}")
    return "\n".join(lines) + "\n"


def _module_prefix(directory: Path) -> str:
    """The dotted module path of ``directory`` inside its repository ('' when it is the root)."""
    root = find_root(directory / "mlops.yaml")
    relative = directory.resolve().relative_to(root)
    parts = relative.parts
    for part in parts:
        if not part.isidentifier():
            raise MlopsError.one(f"'{part}' in {relative} is not a Python identifier, so the starter's "
                                 "pipeline could not be imported; choose another folder name",
                                 Position(str(directory), 1, 1))
    return ".".join(parts)


def github_workflow(spec: str = "mlops.yaml") -> str:
    """The GitHub Actions workflow for a spec at ``spec`` (relative to the repository root).

    The template is ``examples/ci/github/mlops.yml`` verbatim (a test keeps the two identical); only
    its ``MLOPS_SPEC`` line names another spec.
    """
    text = (TEMPLATES / WORKFLOW_TEMPLATE).read_text()
    if text.count(WORKFLOW_SPEC_LINE) != 1:
        raise RuntimeError(f"{WORKFLOW_TEMPLATE} must contain the line {WORKFLOW_SPEC_LINE.strip()!r} once")
    return text.replace(WORKFLOW_SPEC_LINE, WORKFLOW_SPEC_LINE.replace("mlops.yaml", spec))


def create_starter(directory: Path, name: str | None = None) -> list[Path]:
    """Write the starter into ``directory``; refuse to overwrite an existing ``mlops.yaml``.

    Other files that exist already (a README.md, a .gitignore, the data) are kept as they are.
    """
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "mlops.yaml"
    if spec_path.exists():
        raise MlopsError.one("mlops.yaml already exists; not overwriting it", Position(str(spec_path), 1, 1))
    if find_root(spec_path) == directory.resolve() and not (directory / ".git").exists():
        import pygit2

        pygit2.init_repository(str(directory), initial_head="main")
    prefix = _module_prefix(directory)
    module = f"{prefix}.pipeline" if prefix else "pipeline"
    spec_in_repository = (directory.resolve().relative_to(find_root(spec_path)) / "mlops.yaml").as_posix()
    project = _project_name(directory, name)
    files = {
        spec_path: (TEMPLATES / "mlops.yaml.tmpl").read_text().format(project=project, module=module),
        directory / SCHEMA_FILE: render_schema(SCHEMA_FILE),
        directory / "pipeline.py": (TEMPLATES / "pipeline.py.tmpl").read_text(),
        # only the name is filled in (the README's JSON examples keep their braces)
        directory / "README.md": (TEMPLATES / README_TEMPLATE).read_text().replace("{project}", project),
        directory / "data" / "customers.csv": _customers_csv(),
        directory / ".github" / "workflows" / "mlops.yml": github_workflow(spec_in_repository),
        directory / ".gitignore": ".mlops/\nout/\n__pycache__/\n",
    }
    if prefix:
        files[directory / "__init__.py"] = ""
    written = []
    for path, text in files.items():
        if path.exists() and path.name != "__init__.py":
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
