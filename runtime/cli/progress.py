"""A live progress display for apply: nodes running, done and failed (rich)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text


class NodeProgress:
    """Counts node events into one progress bar; prints failures and retries as they happen."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.verbose = enabled
        self.enabled = enabled and console.is_terminal
        self.running: set[str] = set()
        self.waiting: dict[str, str] = {}
        """Node id -> what it waits for (submitted, not started)."""
        self.done = 0
        self.failed = 0
        self._progress = Progress(TextColumn("[bold]apply"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                                  console=console, transient=True)
        self._task = self._progress.add_task("apply", total=None, status="")

    def __enter__(self) -> NodeProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, node_id: str, event: str, detail: str) -> None:
        if event == "started":
            self.running.add(node_id)
        elif event == "waiting":
            self.waiting[node_id] = detail
            if self.verbose:  # also without a terminal (CI logs): a wait is never silent
                self.console.print(Text.assemble(("waiting", "yellow"), f" {node_id}: {detail}"))
        elif event == "running":
            self.waiting.pop(node_id, None)
        elif event in ("succeeded", "failed", "skipped", "blocked"):
            self.running.discard(node_id)
            self.waiting.pop(node_id, None)
            self.done += 1
            self.failed += event == "failed"
        if event in ("failed", "retry") and self.enabled:
            self.console.print(Text.assemble((event, "red"), f" {node_id}: {detail}"))
        starting = len(self.running & set(self.waiting))
        status = f"{len(self.running) - starting} running, {self.done} done, {self.failed} failed"
        if self.waiting:
            first, what = next(iter(self.waiting.items()))
            status += f", {len(self.waiting)} waiting for resources ({first} {what})"
        self._progress.update(self._task, completed=self.done, status=status)
