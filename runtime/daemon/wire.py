"""The warm driver's protocol: one JSON object per line over a Unix socket.

The client sends ``{"command": "run", "argv": [...], "cwd": ..., "env": {...}, "tty": [out, err]}`` (or
``{"command": "stop"}``); the driver answers with ``{"out": text}`` / ``{"err": text}`` frames as the command
writes, then ``{"exit": code}``. A client that is interrupted sends ``{"command": "cancel"}`` (or closes the
socket): the command is interrupted as Ctrl-C interrupts it.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any


def send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


class Reader:
    """Messages from a socket, one per line (``None`` at the end of the stream)."""

    def __init__(self, connection: socket.socket) -> None:
        self._file = connection.makefile("rb")

    def next(self) -> dict[str, Any] | None:
        line = self._file.readline()
        if not line:
            return None
        message: dict[str, Any] = json.loads(line)
        return message


class Stream:
    """A text stream that sends what is written as ``{channel: text}`` frames (what ``sys.stdout`` becomes
    while the driver runs a command)."""

    def __init__(self, connection: socket.socket, channel: str, tty: bool, lock: threading.Lock) -> None:
        self._connection, self._channel, self._tty, self._lock = connection, channel, tty, lock
        self.closed = False
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if text and not self.closed:
            with self._lock:
                try:
                    send(self._connection, {self._channel: text})
                except OSError:  # the client went away: the command is being cancelled
                    self.closed = True
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return self._tty

    def fileno(self) -> int:
        raise OSError("the warm driver's output stream has no file descriptor")

    def writable(self) -> bool:
        return True
