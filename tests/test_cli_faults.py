"""Every fault of the machine gives one line naming the file, exits 1, and loses nothing recorded before.

Run for real, through the ``mlops`` console script as a subprocess:

* a read-only ``.mlops`` folder: a tmpfs mounted on it, then remounted read-only (the tests run as root,
  which ignores file permissions but not a read-only mount);
* a full disk under the state: a 1 MiB tmpfs on ``.mlops``, filled up but for one page (the lock file gets
  it, SQLite's next write does not), and a full disk under the artifact store (a 64 KiB tmpfs, full);
* corrupted rows: garbage written into a JSON column with ``sqlite3``.

The mounts need root (``mount``); without it those tests skip. Diagnostics print exactly ``file:line:col:``
whatever the message holds (rich's emoji codes and markup are off).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

MLOPS = str(Path(sys.executable).with_name("mlops"))
SPEC = """apiVersion: mlops/v1
project: faults
owners: [team:x]
datasets:
  rows:
    path: data/rows.csv
    description: rows
"""


def _mlops(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run([MLOPS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path("/tmp") / f"mlops-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and mount (tmpfs)")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A committed one-dataset project with one apply recorded (one snapshot, one audit record)."""
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    (root / "data" / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    (root / "mlops.yaml").write_text(SPEC)
    (root / ".gitignore").write_text(".mlops/\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    done = _mlops(root, "apply")
    assert done.returncode == 0, done.stderr
    root_mounts.clear()
    yield root
    for mount in reversed(root_mounts):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


root_mounts: list[Path] = []


def _mount_tmpfs(where: Path, size: str, keep: Path | None = None) -> None:
    """A tmpfs of ``size`` on ``where``, holding a copy of what ``keep`` held."""
    saved = None
    if keep is not None:
        saved = where.parent / f".saved-{where.name}"
        shutil.copytree(keep, saved)
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    root_mounts.append(where)
    if saved is not None:
        shutil.copytree(saved, where, dirs_exist_ok=True)
        shutil.rmtree(saved)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the filesystem of ``folder``, then give back ``leave`` bytes."""
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))


def _one_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _recorded(root: Path) -> tuple[int, int]:
    """(snapshots, audit records) in the project's state, read straight from the file."""
    with sqlite3.connect(root / ".mlops" / "state.db") as conn:
        return (conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])


def _change_data(root: Path) -> None:
    with (root / "data" / "rows.csv").open("a") as handle:
        handle.write("5,6\n")
    _git(root, "commit", "-qam", "more rows")


@needs_mount
def test_a_read_only_state_folder_gives_one_line_naming_the_file(project: Path) -> None:
    before = _recorded(project)
    _mount_tmpfs(project / ".mlops", "4m", keep=project / ".mlops")
    subprocess.run(["mount", "-o", "remount,ro", str(project / ".mlops")], check=True)
    _change_data(project)
    for command in (["apply"], ["monitor", "run"], ["down"]):  # they write: refused, in one line
        line = _one_line(_mlops(project, *command), ".mlops/")
        assert line.startswith("error: .mlops/") and "read-only" in line, line
    for command in (["plan"], ["status"], ["runs", "list"]):  # they read: an answer, or one line
        done = _mlops(project, *command)
        assert "Traceback" not in done.stdout + done.stderr
        if done.returncode:
            assert "read-only" in _one_line(done, ".mlops/state.db")
    subprocess.run(["mount", "-o", "remount,rw", str(project / ".mlops")], check=True)
    assert _recorded(project) == before
    assert _mlops(project, "audit", "verify").returncode == 0


@needs_mount
def test_a_full_disk_under_the_state_gives_one_line_and_keeps_what_was_recorded(project: Path) -> None:
    before = _recorded(project)
    _mount_tmpfs(project / ".mlops", "1m", keep=project / ".mlops")
    _fill(project / ".mlops", leave=4096)  # the lock file gets the last page, SQLite's write does not
    _change_data(project)
    line = _one_line(_mlops(project, "apply"), ".mlops/state.db")
    assert line.startswith("error: .mlops/state.db") and "the disk is full" in line, line
    _fill(project / ".mlops")  # not even a page: the lock file itself is refused, and named
    line = _one_line(_mlops(project, "apply"), ".mlops/state.db.lock")
    assert "the disk is full" in line, line
    (project / ".mlops" / "filler").unlink()
    assert _recorded(project) == before
    assert _mlops(project, "audit", "verify").returncode == 0
    done = _mlops(project, "apply")  # with space again it converges
    assert done.returncode == 0, done.stderr
    assert _recorded(project) == (before[0] + 1, before[1] + 1)


@needs_mount
def test_a_full_disk_under_the_artifacts_fails_the_node_in_one_line_naming_the_store(project: Path,
                                                                                      tmp_path: Path) -> None:
    store = tmp_path / "store-disk"
    _mount_tmpfs(store, "64k")
    (project / "mlops.yaml").write_text(SPEC + f"storage:\n  artifacts: {store}/store\n")
    _git(project, "commit", "-qam", "artifacts on a small disk")
    _fill(store)
    before = _recorded(project)
    done = _mlops(project, "apply")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "failed datasets.rows/snapshot" in line]
    assert len(failed) == 1 and "No space left on device" in failed[0] and f"{store}/store" in failed[0], done.stdout
    assert _recorded(project) == (before[0], before[1] + 1)  # no snapshot recorded; the apply is audited
    assert not [p for p in (store / "store").rglob("*") if p.is_file()]  # no half-written object
    (store / "filler").unlink()
    assert _mlops(project, "apply").returncode == 0
    assert _recorded(project)[0] == before[0] + 1


@pytest.mark.parametrize("command", [["plan"], ["status"], ["apply"], ["lineage", "datasets.rows"]])
def test_a_corrupted_row_gives_one_line_naming_the_state(project: Path, command: list[str]) -> None:
    state = project / ".mlops" / "state.db"
    with sqlite3.connect(state) as conn:
        conn.execute("""UPDATE node_results SET outputs = '{"artif'""")
    line = _one_line(_mlops(project, *command), ".mlops/state.db")
    assert line.startswith("error: .mlops/state.db: ") and "not valid JSON" in line and "corrupted" in line, line
    assert _recorded(project) == (1, 1)


def test_a_diagnostic_at_line_100_prints_exactly_file_line_col_whatever_its_text(tmp_path: Path) -> None:
    padding = "".join(f"# line {n}\n" for n in range(1, 94))
    spec = padding + SPEC.replace("    description: rows\n", '    "[red]odd:smile:": 1\n')
    (tmp_path / "mlops.yaml").write_text(spec)
    for flags in ([], ["--no-color"]):
        done = _mlops(tmp_path, *flags, "validate")
        line = _one_line(done)
        assert line == "mlops.yaml:100:5: error: datasets.rows: unknown key '[red]odd:smile:'", line
