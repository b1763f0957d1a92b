"""The project's code travels with the work to every node of a cluster the spec names.

With ``cluster.address`` set, the nodes may be other machines that cannot see this repository: its work
tree is packaged once per apply as a Ray ``runtime_env`` working directory (content-addressed: Ray
uploads a package only when the cluster does not hold one of that hash, so an apply whose code did not
change uploads nothing) and every task, Serve replica and batch scoring runs in it. The source data is
not shipped (snapshots reach the tasks through the artifact store), nor is ``.mlops/`` or ``.git/``.

On the embedded default and the local cluster the nodes share this machine's files: nothing is shipped
and the tasks import from the repository in place.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a worker imports this module for code_root alone, without the compiler's spec models
    from compiler.resolve import Project

SHIPPED_EXCLUDES = [".mlops", ".git", "__pycache__", "*.pyc", ".venv"]
"""Never part of the package, besides the spec's source data and what ``.gitignore`` ignores."""


def ships_code(project: Project) -> bool:
    """Whether the project's work runs on a cluster the spec names (its nodes may not see this machine)."""
    return bool(project.spec.cluster.address)


def excludes(project: Project) -> list[str]:
    """What the package leaves out: :data:`SHIPPED_EXCLUDES` and every source dataset inside the repository."""
    root = project.root.resolve()
    data = []
    for name, dataset in project.spec.datasets.items():
        if dataset.path is None:
            continue
        path = project.dataset_path(name).resolve()
        if path.is_relative_to(root):
            data.append("/" + path.relative_to(root).as_posix())
    return SHIPPED_EXCLUDES + data


def code_package(project: Project) -> str:
    """Upload the work tree to the connected cluster unless it holds it already; its ``gcs://`` URI."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    with tempfile.TemporaryDirectory(prefix="mlops-ship-") as scratch:
        env = upload_working_dir_if_needed({"working_dir": str(project.root), "excludes": excludes(project)},
                                           include_gitignore=True, scratch_dir=scratch,
                                           logger=logging.getLogger("mlops.ship"))
    return str(env["working_dir"])


def package_for(project: Project) -> str:
    """:func:`code_package` when the project ships its code (:func:`ships_code`), else ``""`` (run in place).
    Call it joined to the cluster."""
    return code_package(project) if ships_code(project) else ""


def runtime_env(code_uri: str) -> dict[str, str] | None:
    """The Ray ``runtime_env`` that runs a task in the shipped code (``None``: run in place)."""
    return {"working_dir": code_uri} if code_uri else None


def code_root(repo_root: str) -> str:
    """Where a task imports the project's modules from: the repository in place, else (shipped) the
    working directory Ray unpacked the package into."""
    return repo_root or str(Path.cwd())
