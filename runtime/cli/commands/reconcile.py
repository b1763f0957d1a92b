"""``mlops reconcile [--watch] [--interval D] [--repo URL --branch B] [--metrics-port P]``: the GitOps loop."""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from compiler.errors import MlopsError
from compiler.spec import duration_seconds
from runtime.cli.app import Application, pass_app
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options

if TYPE_CHECKING:
    from runtime.reconcile.loop import TickResult


@click.command("reconcile")
@click.option("--watch", is_flag=True, help="Keep reconciling until SIGTERM or SIGINT (else one tick).")
@click.option("--interval", default="60s", show_default=True, help="Time between ticks with --watch (30s, 5m).")
@click.option("--repo", default=None, help="Git repository (URL or path) to follow; -f is then relative to its root.")
@click.option("--branch", default=None, help="The branch of --repo to follow [default: main].")
@click.option("--checkout", type=click.Path(file_okay=False), default=None,
              help="Where --repo is cloned [default: .mlops/checkouts/...].")
@click.option("--fetch-timeout", default="60s", show_default=True,
              help="Fail a tick whose clone or fetch of --repo takes longer (it backs off like any failed tick).")
@click.option("--max-repo-size", default="1GiB", show_default=True,
              help="Refuse a --repo larger than this (its objects, or its files at the tip).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="The address --metrics-port listens on (0.0.0.0: every interface, as in a pod).")
@click.option("--parallelism", default=4, show_default=True, type=click.IntRange(1), help="Nodes run at once.")
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock (30s, 5m).")
@global_options
@pass_app
def reconcile_command(app: Application, watch: bool, interval: str, repo: str | None, branch: str | None,
                      checkout: str | None, fetch_timeout: str, max_repo_size: str, metrics_port: int | None,
                      metrics_host: str, parallelism: int, lock_timeout: str) -> None:
    """Make the live state match the spec: fetch, compile, plan, apply, run due monitors, repeat.

    Exit code without --watch: 0 when the tick succeeded, 1 when it failed (as apply). With --watch the
    loop never ends on an error (it backs off and retries) and exits 0 on SIGTERM or SIGINT, after the
    step in progress (an apply finishes first).
    """
    from runtime import Reconciler, Source
    from runtime.reconcile.gitsync import parse_size
    from runtime.reconcile.metrics import Metrics

    if branch is not None and repo is None:
        app.fail(MlopsError.one("--branch needs --repo"))
    if repo is not None and Path(app.spec_file).is_absolute():
        app.fail(MlopsError.one(f"-f {app.spec_file}: with --repo, -f is a path inside the repository"))
    try:
        seconds = float(duration_seconds(interval))
        lock_seconds = float(duration_seconds(lock_timeout))
    except ValueError as error:
        app.fail(MlopsError.one(f"--interval/--lock-timeout: {error}"))
    try:
        fetch_seconds = float(duration_seconds(fetch_timeout))
    except ValueError as error:
        app.fail(MlopsError.one(f"--fetch-timeout: {error}"))
    try:
        max_repo_bytes = parse_size(max_repo_size)
    except ValueError as error:
        app.fail(MlopsError.one(f"--max-repo-size: {error}"))
    _log_to_stderr()
    source = Source(Path(app.spec_file), repo, branch or "main", Path(checkout) if checkout else None,
                    fetch_timeout=fetch_seconds, max_repo_bytes=max_repo_bytes)
    metrics = Metrics()
    server = None
    if metrics_port is not None:
        try:
            server = metrics.serve(metrics_port, metrics_host)
        except OSError as error:
            app.fail(MlopsError.one(f"--metrics-port {metrics_port} on {metrics_host}: {error.strerror or error}"))
    reconciler = Reconciler(source, metrics=metrics, parallelism=parallelism, lock_timeout=lock_seconds)

    def report(result: TickResult) -> None:
        if app.json_output:
            app.write(json.dumps(result.to_json(), default=str) + "\n")
        else:
            app.print(_summary(result))

    try:
        if watch:
            gc.enable()  # a long-lived process: the CLI's one-shot GC pause does not fit it
            reconciler.run(seconds, on_tick=report, handle_signals=True)
            app.exit(ExitCode.OK)
        reconciler.handle_signals()
        result = reconciler.tick()
        report(result)
        app.exit(ExitCode.OK if result.ok else ExitCode.FAILED)
    finally:
        if server is not None:
            server.shutdown()


def _summary(result: TickResult) -> str:
    commit = f"commit {result.commit[:12]}" if result.commit else "work tree"
    if result.notes:
        commit += f" ({'; '.join(result.notes)})"
    if result.error:
        return f"{commit}: error: {result.error}"
    if result.stopped:
        return f"{commit}: stopped"
    parts = []
    if result.applied is not None:
        r = result.applied.result
        parts.append(f"applied in {result.applied.seconds:.1f}s ({r.count('succeeded')} succeeded, "
                     f"{r.count('blocked')} blocked)")
    else:
        parts.append("in sync, nothing to apply")
    breached = [m.monitor for m in result.monitors if m.breached]
    if result.monitors:
        parts.append(f"{len(result.monitors)} monitor(s) run" + (f", breached: {', '.join(breached)}"
                                                                  if breached else ""))
    return f"{commit}: {'; '.join(parts)} ({result.seconds:.2f}s)"


def _log_to_stderr() -> None:
    """The loop's progress (``mlops.*`` loggers) as timestamped lines on stderr."""
    root = logging.getLogger("mlops")
    if not any(getattr(h, "_mlops_reconcile", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._mlops_reconcile = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
