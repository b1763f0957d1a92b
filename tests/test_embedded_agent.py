"""The embedded head's dashboard agent (runtime.compute.agent) loads no agent module without importing them all;
Ray's minimal agent loads those marked minimal, and the installed Ray marks none."""

from __future__ import annotations

import importlib
import pkgutil

import ray.dashboard.modules
import ray.dashboard.utils

from runtime.compute import agent


def test_no_agent_module_of_the_installed_ray_is_minimal() -> None:
    for module in pkgutil.walk_packages(ray.dashboard.modules.__path__, ray.dashboard.modules.__name__ + "."):
        importlib.import_module(module.name)
    modules = ray.dashboard.utils.DashboardAgentModule.__subclasses__()
    assert len(modules) >= 5, modules  # the reporter, event, job, log and healthz agents at least: all found
    minimal = [module for module in modules if module.is_minimal_module()]
    assert minimal == agent.no_agent_modules(ray.dashboard.utils.DashboardAgentModule), minimal
