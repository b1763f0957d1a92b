"""One line for a fault of the machine (a read-only folder, a full disk, a damaged database), naming the file.

The state store translates its SQLite errors with :func:`sqlite_line` where it knows the database's path;
the CLI's one exit point (:func:`runtime.cli.main.main`) turns any ``OSError`` or SQLite error that still
reaches it into one line with :func:`os_line` / :func:`sqlite_line`, never a traceback.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY = (errno.EROFS,)
DENIED = (errno.EACCES, errno.EPERM)


def shown(path: str | os.PathLike[str] | None) -> str:
    """``path`` as the user would write it: relative to the working directory when inside it."""
    if path is None:
        return ""
    text = os.fsdecode(path)
    try:
        relative = Path(text).resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return text
    return str(relative) if str(relative) != "." else text


def _full(path: Path) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) has no space left."""
    for candidate in (path, *path.parents):
        try:
            info = os.statvfs(candidate)
        except OSError:
            continue
        return info.f_bavail == 0 or (info.f_favail == 0 and info.f_files > 0)
    return False


def _writable(path: Path) -> bool:
    """Whether ``path``'s folder can be written (``access`` says no for a read-only mount even to root)."""
    folder = path if path.is_dir() else path.parent
    return os.access(folder, os.W_OK)


def os_line(error: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``FILE: what happened (the system's words); what to do`` for an ``OSError``."""
    name = shown(path if path is not None else error.filename)
    reason = error.strerror or str(error)
    code = error.errno
    if code in FULL:
        what = f"the disk is full ({reason}); free space and run again"
    elif code in READ_ONLY:
        what = f"the folder is read-only ({reason}); make it writable and run again"
    elif code in DENIED:
        what = f"permission denied ({reason}); make it writable by this user and run again"
    elif code == errno.ENOTDIR:
        what = f"a file is where a folder is expected ({reason}); move it away and run again"
    elif code == errno.EIO:
        what = f"the disk failed to read or write ({reason}); check the disk and run again"
    else:
        what = reason
    if error.filename2 is not None:
        name = f"{name} -> {shown(error.filename2)}" if name else shown(error.filename2)
    return f"{name}: {what}" if name else what


def sqlite_line(path: str | os.PathLike[str], error: sqlite3.Error, default: str = "{reason}") -> str:
    """``DATABASE: what happened (SQLite's words); what to do`` for a SQLite error on the database ``path``.

    An error that is not a fault of the disk or the file is said as ``default`` (``{reason}``: SQLite's words).
    """
    where = Path(os.fsdecode(path))
    reason = str(error) or type(error).__name__
    lowered = reason.lower()
    if "disk is full" in lowered or _full(where):
        what = f"the disk is full ({reason}); free space and run again"
    elif "readonly" in lowered or "read-only" in lowered or not _writable(where):
        what = f"the folder is read-only ({reason}); make it writable and run again"
    elif "malformed" in lowered or "not a database" in lowered:
        what = f"the database is damaged ({reason}); restore it from a backup"
    elif "unable to open" in lowered:
        what = f"cannot open the database ({reason}); check that its folder exists and can be written"
    elif "disk i/o" in lowered:
        what = f"the disk failed to read or write ({reason}); check the disk and free space, and run again"
    else:
        what = default.format(reason=reason)
    return f"{shown(where)}: {what}"
