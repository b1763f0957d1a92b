"""``client.stop`` returns only once the warm driver's process is gone, not when its record is.

The real driver removes its record, then leaves Ray (seconds); ``mlops down`` stops the local cluster right after
``client.stop`` returns. Here a stand-in driver speaks the real wire protocol and record format and takes
:data:`LEAVING_S` to exit after removing its record, so the race is not left to chance (the real driver's own
life cycle is tests/test_warm_driver.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from runtime import processes
from runtime.daemon import client, record

ROOT = Path(__file__).resolve().parents[1]
LEAVING_S = 2.0

STAND_IN = '''
import os, socket, sys, time
from pathlib import Path
from runtime.daemon import record, wire

state_path, leaving_s = Path(sys.argv[1]), float(sys.argv[2])
path = record.socket_path(state_path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(str(path))
listener.listen(1)
record.write(state_path, record.DaemonRecord(os.getpid(), str(path), time.time(), 60.0, "stand-in", ""))
print("ready", flush=True)
connection, _ = listener.accept()
assert wire.Reader(connection).next() == {"command": "stop"}
wire.send(connection, {"exit": 0})
connection.close()
record.remove(state_path, os.getpid())  # as the real driver: its record first, then it leaves Ray
time.sleep(leaving_s)
'''


def test_stop_returns_once_the_driver_has_exited_not_when_its_record_is_gone(tmp_path: Path) -> None:
    state_path = tmp_path / ".mlops" / "state.db"
    state_path.parent.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", STAND_IN, str(state_path), str(LEAVING_S)], cwd=ROOT,
                              env=processes.importing_mlops(dict(os.environ)), stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "ready\n"
        assert record.read(state_path) is not None
        began = time.monotonic()
        assert client.stop(state_path)
        waited = time.monotonic() - began
        assert not processes.alive(driver.pid), f"client.stop returned after {waited:.1f}s with the driver running"
        assert record.read(state_path) is None
        assert driver.wait(timeout=5) == 0, "the stand-in was killed rather than left to exit"
        assert waited >= LEAVING_S * 0.9
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        if driver.stdout is not None:
            driver.stdout.close()

