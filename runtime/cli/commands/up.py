"""``mlops up`` / ``mlops down``: start and stop the project's long-lived local Ray cluster.

On the embedded default (``cluster.provider: local`` without ``cluster.address``) realtime deployments
must outlive ``mlops apply``: they run on a local Ray head that ``mlops up`` starts in the background.
Apply and the reconciler join it; ``mlops down`` stops it and every process it started.
"""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("up")
@click.option("--num-cpus", type=click.IntRange(1), default=None,
              help="Logical CPUs the local cluster offers (default: this machine's plus what the spec's "
                   "deployments hold and one rollout's extra replica).")
@click.option("--serve-port", type=click.IntRange(1, 65535), default=None,
              help="Ray Serve's HTTP port (default 8000, or a free one when 8000 is taken).")
@global_options
@pass_app
def up_command(app: Application, num_cpus: int | None, serve_port: int | None) -> None:
    """Start the project's local Ray cluster in the background (idempotent)."""
    from runtime.compute import cluster
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    try:
        state_path = Workspace.of(project).state_path
        existing = cluster.running(state_path)
        from runtime.compute.sizing import local_cluster_cpus

        cpus = num_cpus if num_cpus is not None else local_cluster_cpus(project)
        local = existing or cluster.up(state_path, num_cpus=cpus, serve_port=serve_port)
        from runtime.daemon import client

        driver = client.ensure(project, app.environ) if client.eligible(project) else None
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "started": existing is None, "address": local.address,
                       "serve_url": local.serve_url, "pgid": local.pgid,
                       "warm_driver": {"pid": driver.pid, "idle_stop_s": driver.idle_s} if driver else None})
    else:
        verb = "is already running" if existing else "started"
        app.print(f"Local Ray cluster {verb} at {local.address}; deployments answer at {local.serve_url}.")
        if driver is not None:
            app.print(f"Warm driver (pid {driver.pid}) runs `mlops apply`; it stops after {driver.idle_s:.0f}s "
                      "without one (MLOPS_IDLE_STOP), with the cluster unless a deployment serves.")
        app.print("`mlops apply` and `mlops reconcile` join it; `mlops down` stops it.")
    app.exit(ExitCode.OK)


@click.command("down")
@global_options
@pass_app
def down_command(app: Application) -> None:
    """Stop the project's local Ray cluster, its warm driver and everything running there (deployments too)."""
    from runtime.compute import cluster
    from runtime.daemon import client
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    try:
        state_path = Workspace.of(project).state_path
        client.stop(state_path)  # the warm driver first: it would otherwise see the cluster go and leave by itself
        stopped = cluster.down(state_path)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "stopped": stopped})
    else:
        app.print("Local Ray cluster stopped." if stopped else "No local Ray cluster was running.")
    app.exit(ExitCode.OK)
