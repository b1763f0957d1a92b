"""The CLI's exit codes, named once (Terraform's ``-detailed-exitcode`` convention for 2)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How ``mlops`` exits."""

    OK = 0
    """Done; with ``--detailed-exitcode``: nothing to change, nothing breached."""
    FAILED = 1
    """A user error (one line naming the file, line, column or resource), a failed apply or check."""
    CHANGES = 2
    """``--detailed-exitcode`` only: the plan or diff has changes, or a monitor breached."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT)."""
