"""The embedded head's dashboard agent: ``python -m runtime.compute.agent AGENT_SCRIPT ARGS...``.

It runs Ray's own agent (``AGENT_SCRIPT`` is ``ray/dashboard/agent.py``; ``ARGS`` its arguments, ``--minimal`` among
them) as Ray's *minimal* agent in full. Ray decides that an agent is minimal in two places. The head passes
``--minimal``, so the agent starts no metrics or HTTP server. The agent then checks again which *modules* to load,
finds the dashboard's dependencies installed, and loads every agent module: the reporter, event, job, log,
healthz and aggregator agents. To find them it first imports every package of ``ray.dashboard.modules``, about
1 s of a cold start on two CPUs, and the raylet waits for that before it registers. Those modules serve the
dashboard's API server, which the embedded head does not start. The event agent also posts to it and logs a
traceback about once a second because it is not there.

Ray's minimal agent loads only the modules marked minimal, and Ray 2.60 marks none
(``tests/test_embedded_agent.py`` checks this against the installed Ray). Here the agent loads none, without
importing them all to find that out. Everything else is Ray's agent as it is: its ports, its check that the
raylet lives (it exits with its raylet), its logs.
"""

from __future__ import annotations

import runpy
import sys

import ray.dashboard.utils


def no_agent_modules(module_type: type) -> list[type]:
    """In place of Ray's ``get_all_modules`` in the agent: the minimal agent's modules, of which there are none."""
    return []


def main(argv: list[str]) -> None:
    """Run Ray's agent script with ``argv`` after it, as the minimal agent (see the module's docstring)."""
    script, *arguments = argv
    ray.dashboard.utils.get_all_modules = no_agent_modules
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
