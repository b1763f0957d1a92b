"""The runtime's errors: one class per stage of the data path, all under the compiler's one root.

Each carries positioned diagnostics (:class:`~compiler.errors.MlopsError`), so the CLI renders any of them
as one line naming the file, line, column or resource, and exits with ``ExitCode.FAILED``. The state's,
the lock's and the artifact store's own errors live beside their code (``StateError``, ``LockError``,
``ArtifactError``).
"""

from __future__ import annotations

from compiler.errors import MlopsError


class PlanError(MlopsError):
    """No plan can be made: an infeasible request, an unknown target, a stale or unreadable saved plan."""


class ApplyError(MlopsError):
    """Apply refused to start or a driver-side step could not run (a dirty work tree, a dataset not built)."""


class DeployError(ApplyError):
    """A deployment could not be made to serve a version (its rollout failed: the previous version keeps
    serving), or a rollback has no version to go to."""


class ApprovalError(MlopsError):
    """An approval was refused: an unknown gate or version, a principal not allowed, a gate that counts
    signed tags only."""


class MonitorError(MlopsError):
    """A monitor could not run or act (its deployment, reference or feedback cannot be read)."""


class ViewError(MlopsError):
    """A read-only view was asked about something the state does not have (a run, a model version)."""


class ReconcileError(MlopsError):
    """The reconcile loop cannot follow its source (the branch cannot be fetched or checked out)."""


class ClusterError(MlopsError):
    """The Ray cluster could not be started, joined or read."""


class TaskError(Exception):
    """A Ray task or Serve replica found its user code breaking the contract (a transform that wrote
    nothing, a distributed run without a result). A plain exception: it crosses Ray's boundary as its text."""


class StorageError(MlopsError):
    """The spec's ``storage`` names a state or artifact store this runtime cannot use."""
