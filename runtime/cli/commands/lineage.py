"""``mlops lineage ADDR[@N]``: where a model version or a dataset snapshot came from, as a tree."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.text import Text
from rich.tree import Tree

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.commands.runs import print_wide
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options

if TYPE_CHECKING:
    from runtime.views.lineage import DataLineage, DatasetLineage, ModelLineage


@click.command("lineage")
@click.argument("target", metavar="ADDR[@N]")
@global_options
@pass_app
def lineage_command(app: Application, target: str) -> None:
    """Where a model version or a dataset came from.

    ADDR is models.NAME[@VERSION] (the newest version without @) or datasets.NAME[@SNAPSHOT].
    """
    from runtime import opened
    from runtime.views.lineage import ModelLineage, lineage

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            found = lineage(project, store, target)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(found.to_json())
    else:
        tree = _model_tree(found) if isinstance(found, ModelLineage) else _dataset_tree(found)
        print_wide(app, tree)
    app.exit(ExitCode.OK)


def _model_tree(found: ModelLineage) -> Tree:
    from runtime.views.format import key_metrics, number

    v = found.version
    tree = Tree(Text.assemble((f"{found.address}@{v.version}", "bold"), f"  {v.status}",
                              f": {v.reason}" if v.reason else ""))
    run = found.run
    tree.add(Text(f"run {run.run_id}  {run.node_id}  {run.status}" if run else
                  f"run {v.run_id or '-'} (not recorded)"))
    params = tree.add("params")
    for key, value in sorted(v.params.items()):
        params.add(Text(f"{key} = {number(value)}"))
    tree.add(Text(f"metrics  {key_metrics(v.metrics, most=8)}"))
    tree.add(Text(f"code hash  {v.code_hash or '-'}"))
    tree.add(Text(f"git commit  {v.git_commit or '-'}"))
    tree.add(Text(f"artifact  {v.artifact_uri}"))
    data = tree.add("data")
    for item in found.data:
        _data_node(data, item)
    tree.add(Text(f"upstream datasets (spec)  {', '.join(found.upstream_datasets) or 'none'}"))
    return tree


def _data_node(parent: Tree, item: DataLineage) -> None:
    from runtime.views.format import when

    made = f"  (transform run {item.run_id})" if item.run_id else ""
    branch = parent.add(Text.assemble((item.address, "bold"), f"  {item.content_hash or 'unknown content'}",
                                      (f"  {when(item.created_at)}" if item.created_at else "", "dim"),
                                      (made, "dim"), (removed_mark(item), "red")))
    for upstream in item.upstream:
        _data_node(branch, upstream)


def _dataset_tree(found: DatasetLineage) -> Tree:
    from runtime.views.format import when

    kind = f"source: {found.source}" if found.source else f"derived: {found.transform}" if found.transform else ""
    tree = Tree(Text.assemble((found.address, "bold"), f"  {kind}" if kind else ""))
    tree.add(Text(f"upstream  {', '.join(found.upstream) or 'none'}"))
    tree.add(Text(f"consumers  {', '.join(found.consumers) or 'none'}"))
    snapshots = tree.add("snapshots" if found.snapshots else "snapshots: none yet")
    for snapshot in found.snapshots:
        item = snapshot.lineage
        used = f"  used by {', '.join(snapshot.used_by)}" if snapshot.used_by else ""
        branch = snapshots.add(Text.assemble((f"#{snapshot.number}", "bold"), f"  {item.content_hash or '-'}",
                                             (f"  {when(item.created_at)}", "dim"), used,
                                             (removed_mark(item), "red")))
        if item.run_id:
            branch.add(Text(f"transform run {item.run_id}"))
        for upstream in item.upstream:
            _data_node(branch, upstream)
    return tree


def removed_mark(item: DataLineage) -> str:
    """``  [erased 2025-01-02 10:00:00, erasure 3]`` / ``  [expired ...]`` for content mlops no longer holds."""
    from runtime.views.format import when

    removal = item.removal
    if removal is None:
        return ""
    request = f", erasure {removal.request_id}" if removal.request_id is not None else ""
    cause = f", by {removal.origin}" if removal.origin != item.address else ""
    return f"  [{removal.removal} {when(removal.removed_at)}{request}{cause}]"
