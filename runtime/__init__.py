"""The mlops runtime: plan and apply the compiled graph on Ray, and the CLI over both halves.

The library verbs the CLI calls, named here (imported on first use, so ``mlops validate`` loads no Ray):

* :func:`plan_project` — the desired graph against the recorded state and Serve (``mlops plan``);
* :func:`apply_project`, :func:`approve`, :func:`rollback`, :func:`reset_state` — the verbs that change
  what runs; each takes the state lock itself;
* :func:`run_monitors` — evaluate monitors and act on breaches (``mlops monitor run``);
* :func:`project_status` — sync and health per resource (``mlops status``);
* :class:`Reconciler` and :class:`Source` — the GitOps loop (``mlops reconcile``);
* :func:`opened` — the project's workspace and state store, for the read-only views.

The data path, one package per arrow: ``plan/`` → ``apply/`` → ``compute/`` (the only importer of Ray),
recording into ``state/`` and ``artifacts/``; ``monitor/`` watches what ``compute/`` serves through
``endpoint/``; ``views/`` and ``export/`` read what was recorded; ``reconcile/`` drives it from git.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.apply.operations import apply_project, approve, opened, reset_state, rollback
    from runtime.monitor.run import run_monitors
    from runtime.plan.project import plan_project
    from runtime.reconcile.loop import Reconciler, Source
    from runtime.views.status import project_status

_HOMES = {
    "plan_project": "runtime.plan.project",
    "apply_project": "runtime.apply.operations",
    "approve": "runtime.apply.operations",
    "rollback": "runtime.apply.operations",
    "reset_state": "runtime.apply.operations",
    "opened": "runtime.apply.operations",
    "run_monitors": "runtime.monitor.run",
    "project_status": "runtime.views.status",
    "Reconciler": "runtime.reconcile.loop",
    "Source": "runtime.reconcile.loop",
}
__all__ = ["Reconciler", "Source", "apply_project", "approve", "opened", "plan_project", "project_status",
           "reset_state", "rollback", "run_monitors"]


def __getattr__(name: str) -> Any:
    """A verb of :data:`__all__`, imported from its home module the first time it is asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
