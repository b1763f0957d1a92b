"""State locations: a SQLite file path or a ``postgresql://`` URL, and how a URL is shown (never its password).

Light on purpose (no driver import): the workspace, the lock and the store ask it which backend a state uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: str | os.PathLike[str]) -> bool:
    """Whether the state at ``location`` is a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def shown(url: str) -> str:
    """``url`` without a password (in its user part or its ``password=`` parameter), for messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}@{host}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url.split("://", 1)[0] + "://..."


def password_of(url: str) -> str | None:
    """The password a URL carries (to scrub it from a driver's message), if any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    given = dict(parse_qsl(parts.query)).get("password")
    return parts.password or given or os.environ.get("PGPASSWORD") or None


def location_of(state: str | os.PathLike[str]) -> str:
    """A state's location as one string: the URL as given, or the file path."""
    return state if isinstance(state, str) and is_postgresql(state) else os.fspath(Path(state))
